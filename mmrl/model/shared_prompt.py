"""The prompt once per group (`model.share_prompt`): the rows of a micro-batch that continue one prompt (a group's
completions) become one sequence `prompt + completion_1 + … + completion_k`, so the language model computes each
prompt once per micro-batch instead of k times — and its images and videos once. Every completion token sees
exactly what it sees in the per-row computation, so log-probs and gradients are those of the per-row pass.

- `prompt_groups` (per pass): each row's leader, the first row with the same prompt — equal tokens and attention
  mask, and bit-identical media (a pass that changes pixels per row, PAPO's masking, keeps its own rows). Media
  rows need the batch's `vision_once.VISION_ROWS` table (collated with `share_vision`) to be shared.
- `share`: the shared batch [B', T']: the leader's padded prompt row (P columns, its left padding kept), then each
  member's completion up to its last unmasked token. A 4-D mask [B', 1, T', T'] (transformers hands a prepared 4-D
  mask to the attention as-is: sdpa or eager; flash-attention's varlen kernel takes none) lets the prompt attend
  causally among itself and each completion attend to the prompt and causally to its own tokens, never to
  another's; every key the per-row mask hides stays hidden. Positions are the per-row layout's, gathered: Qwen-VL's
  3-D rope positions from the model's `get_rope_index` on the per-row batch (`packing.rope_positions`), other
  models' the per-row column (what their forward uses without positions). The leaders' media go to the model
  once (their own sharing through `vision_once`), so Qwen3-VL's deepstack features land on the single copy.
- `Shared.index`: the hidden state predicting completion token t of row r — the prompt's last column for t = 0
  (shared: autograd sums the rows' gradients into it), else column t − 1 of its segment.

Shapes: N rows, P prompt columns, C completion columns, B' groups, T' shared columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.model.packing import rope_positions
from mmrl.model.vision_once import MODALITIES
from mmrl.runtime import HOST

TOKEN_KEYS = ("input_ids", "mm_token_type_ids", "token_type_ids")
PER_ITEM = {"image": ("image_grid_thw", "image_sizes"), "video": ("video_grid_thw", "second_per_grid_ts")}
KNOWN = (set(TOKEN_KEYS) | {"attention_mask"} | {m.pixels for m in MODALITIES}
         | {k for v in PER_ITEM.values() for k in v})  # batch keys a shared batch can be built from


@dataclass
class Shared:
    inputs: dict[str, torch.Tensor]  # model inputs of the B' shared rows (4-D attention mask, positions, media)
    index: torch.Tensor  # [N, C] column in the flattened [B'·T'] output of the hidden predicting each token
    rows: torch.Tensor | None  # [B', 6] the leaders' `VISION_ROWS` table (sources renumbered), or None


def _spans(rows_table: torch.Tensor, k: int) -> list[tuple[int, int, int, int]]:
    """Per row, for modality k: (first pixel row, pixel rows, first item, items) in the batch's media tensors."""
    items, pix = rows_table[:, 3 * k + 1].tolist(), rows_table[:, 3 * k + 2].tolist()
    return [(sum(pix[:r]), pix[r], sum(items[:r]), items[r]) for r in range(len(pix))]


def _same_media(inputs: dict, spans: dict, r: int, s: int) -> bool:
    """Whether rows r and s hold bit-identical pixels and per-item entries in every modality."""
    for mod, sp in spans.items():
        (pr, np_, mr, nm), (ps, ns, ms, nms) = sp[r], sp[s]
        if (np_, nm) != (ns, nms):
            return False
        keys = [(mod.pixels, pr, ps, np_)] + [(k, mr, ms, nm) for k in PER_ITEM[mod.name] if k in inputs]
        if not all(torch.equal(inputs[k][a : a + n], inputs[k][b : b + n]) for k, a, b, n in keys):
            return False
    return True


def prompt_groups(inputs: dict, prompt_len: int, rows_table: torch.Tensor | None) -> list[int]:
    """[N] each row's leader: the first row with the same prompt (itself when none; see the module docstring)."""
    n = inputs["input_ids"].shape[0]
    present = {mod: k for k, mod in enumerate(MODALITIES) if inputs.get(mod.pixels) is not None}
    if set(inputs) - KNOWN or (present and rows_table is None):  # a key we cannot split per prompt: every row alone
        return list(range(n))
    same = torch.ones(n, n, dtype=torch.bool, device=inputs["input_ids"].device)  # [N, N]
    for key in TOKEN_KEYS + ("attention_mask",):
        if key in inputs:
            v = inputs[key][:, :prompt_len]  # [N, P]
            same &= (v.unsqueeze(1) == v.unsqueeze(0)).all(-1)
    same_rows = same.tolist()
    spans = {mod: _spans(rows_table, k) for mod, k in present.items()}
    leader: list[int] = []
    for r in range(n):
        s = same_rows[r].index(True)  # the first row with these tokens (≤ r); it leads itself
        leader.append(s if s != r and _same_media(inputs, spans, r, s) else r)
    return leader


def _layout(leader: list[int], lengths: list[int], p: int):
    """Per shared row: source row, source column and segment (−1 prompt, r row r's completion, −2 unused) of each
    column [B', T'], and each row's group and first segment column."""
    heads = sorted(set(leader))
    group = {h: b for b, h in enumerate(heads)}
    width = [p] * len(heads)
    start = []
    for r, h in enumerate(leader):
        start.append(width[group[h]])
        width[group[h]] += lengths[r]
    t = max(width)
    src_row = torch.tensor(heads, dtype=torch.long).unsqueeze(1).repeat(1, t)  # [B', T']
    src_col = torch.arange(t).unsqueeze(0).repeat(len(heads), 1)  # [B', T']
    seg = torch.full((len(heads), t), -2, dtype=torch.long)
    seg[:, :p] = -1
    for r, h in enumerate(leader):
        b, a, n = group[h], start[r], lengths[r]
        src_row[b, a : a + n], src_col[b, a : a + n], seg[b, a : a + n] = r, torch.arange(p, p + n), r
    for b in range(len(heads)):
        src_col[b, width[b] :] = 0
    return heads, group, start, src_row, src_col, seg


def _media(inputs: dict, heads: list[int], rows_table: torch.Tensor) -> dict:
    """The leaders' pixels and per-item entries, in their order."""
    out = {}
    for k, mod in enumerate(MODALITIES):
        if inputs.get(mod.pixels) is None:
            continue
        sp = _spans(rows_table, k)
        pix = [i for h in heads for i in range(sp[h][0], sp[h][0] + sp[h][1])]
        its = [i for h in heads for i in range(sp[h][2], sp[h][2] + sp[h][3])]
        v = inputs[mod.pixels]
        out[mod.pixels] = v[torch.tensor(pix, dtype=torch.long, device=v.device)]
        for key in PER_ITEM[mod.name]:
            if key in inputs:
                out[key] = inputs[key][torch.tensor(its, dtype=torch.long, device=inputs[key].device)]
    return out


def share(inputs: dict, prompt_len: int, completion_mask: torch.Tensor, leader: list[int], *, rope_index,
          rows_table: torch.Tensor | None, attn: str, dtype: torch.dtype) -> Shared:
    """The shared batch of the per-row `inputs` (prompts left-padded to `prompt_len`, completions appended:
    [N, P+C]) grouped by `leader`; `attn` the attention implementation (its mask format), `dtype` eager's."""
    if attn not in ("sdpa", "eager"):
        raise ValueError(f"model.share_prompt needs sdpa or eager attention (a 4-D mask), not {attn!r}")
    dev = inputs["input_ids"].device
    n, c = completion_mask.shape
    p = prompt_len
    valid_c = completion_mask.bool()
    lengths = torch.where(valid_c.any(1), c - valid_c.flip(1).long().argmax(1), 0).tolist()  # last valid + 1
    heads, group, start, src_row, src_col, seg = _layout(leader, lengths, p)
    t = src_row.shape[1]
    src_row, src_col, seg = src_row.to(dev), src_col.to(dev), seg.to(dev)
    out = {k: inputs[k][src_row, src_col] for k in TOKEN_KEYS if k in inputs}  # [B', T']
    if rope_index is not None:
        if "mm_token_type_ids" not in inputs:
            raise ValueError("sharing a multimodal-rope (Qwen-VL) prompt needs the processor's `mm_token_type_ids` "
                             "for its 3-D positions: set model.share_prompt: false")
        out["position_ids"] = rope_positions(rope_index, inputs)[:, src_row, src_col]  # [3, B', T']
    else:
        out["position_ids"] = src_col  # [B', T']: the per-row column, as the padded forward numbers it
    key_ok = inputs["attention_mask"][src_row, src_col].bool() & (seg != -2)  # [B', T']
    allowed = (key_ok.unsqueeze(1) & (src_col.unsqueeze(1) <= src_col.unsqueeze(2))
               & ((seg.unsqueeze(1) == -1) | (seg.unsqueeze(1) == seg.unsqueeze(2))))  # [B', T'q, T'k]
    alone = ~allowed.any(-1, keepdim=True)  # pad / unused queries: read by nothing; attend to themselves (no NaN)
    allowed = allowed | (torch.eye(t, dtype=torch.bool, device=dev) & alone)
    if attn == "eager":
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, torch.finfo(dtype).min)
    out["attention_mask"] = allowed.unsqueeze(1)  # [B', 1, T', T']
    rows = None
    if rows_table is not None:
        out.update(_media(inputs, heads, rows_table))
        rows = rows_table[torch.tensor(heads, dtype=torch.long, device=rows_table.device)].clone()  # [B', 6]
        for k in range(len(MODALITIES)):  # a media source's group leader holds the same media
            rows[:, 3 * k] = torch.tensor([group[leader[s]] for s in rows[:, 3 * k].tolist()], device=HOST)
    index = torch.empty(n, c, dtype=torch.long)
    for r in range(n):
        base = group[leader[r]] * t
        index[r] = base + p - 1  # t = 0 (and ignored cells): the prompt's last column
        if lengths[r] > 1:
            index[r, 1 : lengths[r]] = base + start[r] + torch.arange(lengths[r] - 1)
    return Shared(out, index.to(dev), rows)
