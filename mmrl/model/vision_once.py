"""Vision once per prompt: a micro-batch of completion rows holds G copies of each prompt, and the vision tower
would encode each image and video G times. Here it encodes the distinct media once and each row takes the
features of its media, gradients flowing back into the shared features (autograd sums them).

- `vision_rows` (at collation, `PromptEncoder.collate(..., share_vision=True)`) records per row and modality
  which row first showed the same media (the same processor tensor: a prompt repeated, or one with a forced
  prefix) and how many media items and pixel rows it has: a [n, 6] host tensor under the batch key `VISION_ROWS`.
- `shared_vision` (in `mmrl.model.logprobs.completion_hidden`) checks that the rows it would share hold
  bit-identical pixels and grids (a pass that changes pixels per row — PAPO's masking — keeps its own rows),
  calls the model's own `get_image_features` / `get_video_features` on the distinct media, expands their
  per-item outputs (`pooler_output`, Qwen3-VL's per-layer `deepstack_features`) to the rows' order, and hands
  them to the model as transformers' `mm_encoder_outputs`; grids stay in the batch for the rope positions.
  Nothing is replaced or kept across calls, so an FSDP-wrapped vision tower is called like any module. A model
  whose forward takes no `mm_encoder_outputs` gets the batch unchanged (the per-row path).

Shapes: n rows, P pixel rows (patches for Qwen-VL, images for LLaVA), M media items (images or videos).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from mmrl.runtime import HOST

VISION_ROWS = "mmrl_vision_rows"  # batch key: [n, 6] long, host — per modality (source row, items, pixel rows)


@dataclass(frozen=True)
class Modality:
    name: str  # the key of `mm_encoder_outputs`
    pixels: str  # [P, …] pixel rows of every item, row after row
    per_item: tuple[str, ...]  # [M, …] one entry per item (grids, sizes), handed to the encoder
    encoder: str  # the model's method: pixels (+ per-item keys) → per-item outputs


MODALITIES = (Modality("image", "pixel_values", ("image_grid_thw", "image_sizes"), "get_image_features"),
              Modality("video", "pixel_values_videos", ("video_grid_thw",), "get_video_features"))


def vision_rows(prompts) -> torch.Tensor:
    """[n, 6] for the `prompts` of n rows: per modality, the first row whose prompt holds the same pixel tensor
    (itself when none), its number of media items and of pixel rows."""
    table = []
    for r, p in enumerate(prompts):
        row: list[int] = []
        for k, mod in enumerate(MODALITIES):
            pix = p.tensors.get(mod.pixels)
            if pix is None:
                row += [r, 0, 0]
                continue
            src = next((s for s in range(r) if prompts[s].tensors.get(mod.pixels) is pix), r)
            grid = p.tensors.get(mod.per_item[0])
            row += [src, int(grid.shape[0] if grid is not None else pix.shape[0]), int(pix.shape[0])]
        table.append(row)
    return torch.tensor(table, dtype=torch.long, device=HOST).view(len(prompts), 3 * len(MODALITIES))


@dataclass
class Plan:
    pixels: torch.Tensor  # [P_u] pixel rows of the distinct items
    items: torch.Tensor  # [M_u] the distinct items
    expand: list[int]  # [M] per row's item: its distinct item
    dup: tuple[torch.Tensor, torch.Tensor]  # pixel rows of shared copies, their sources' rows
    dup_items: tuple[torch.Tensor, torch.Tensor]  # the same for items

    @property
    def shares(self) -> bool:
        return len(self.expand) > len(self.items)


def plan(cols: torch.Tensor) -> Plan:
    """Which pixel rows and items to encode, and each row's items among them, from one modality's columns
    [n, 3] of `vision_rows`; a row whose source shows another number of items or pixel rows keeps its own."""
    src, items, pix = (c.tolist() for c in cols.unbind(1))
    p0 = [sum(pix[:r]) for r in range(len(src))]  # first pixel row of each row
    m0 = [sum(items[:r]) for r in range(len(src))]  # first item of each row
    src = [s if (items[s], pix[s]) == (items[r], pix[r]) else r for r, s in enumerate(src)]
    keep_px, keep_it, dup_px, src_px, dup_it, src_it, first, expand = [], [], [], [], [], [], {}, []
    for r, s in enumerate(src):
        if s == r:
            first[r] = len(keep_it)
            keep_px += range(p0[r], p0[r] + pix[r])
            keep_it += range(m0[r], m0[r] + items[r])
        else:
            dup_px += range(p0[r], p0[r] + pix[r])
            src_px += range(p0[s], p0[s] + pix[s])
            dup_it += range(m0[r], m0[r] + items[r])
            src_it += range(m0[s], m0[s] + items[s])
        expand += range(first[s], first[s] + items[r])
    t = lambda v: torch.tensor(v, dtype=torch.long, device=HOST)  # noqa: E731
    return Plan(t(keep_px), t(keep_it), expand, (t(dup_px), t(src_px)), (t(dup_it), t(src_it)))


def _copies_equal(inputs: dict, mod: Modality, p: Plan) -> bool:
    """Whether every shared row's pixels and per-item entries equal its source's, bit for bit."""
    for key, (a, b) in [(mod.pixels, p.dup)] + [(k, p.dup_items) for k in mod.per_item if k in inputs]:
        v = inputs[key]
        if not torch.equal(v[a.to(v.device)], v[b.to(v.device)]):
            return False
    return True


def _expand(out, expand: list[int], m: int):
    """The encoder's output with each per-item field (a list of m tensors, or a list of such lists — Qwen3-VL's
    deepstack layers) in the rows' order; fields that are not per item are dropped (the forward reads none)."""
    def per_item(v):
        return isinstance(v, (list, tuple)) and len(v) == m and all(isinstance(x, torch.Tensor) for x in v)

    fields = {}
    for key, value in out.items():
        if per_item(value):
            fields[key] = tuple(value[j] for j in expand)
        elif isinstance(value, (list, tuple)) and value and all(per_item(v) for v in value):
            fields[key] = [tuple(v[j] for j in expand) for v in value]
    return type(out)(**fields)


def takes_encoder_outputs(inner: torch.nn.Module) -> bool:
    """Whether the model's forward accepts precomputed vision features (`mm_encoder_outputs`)."""
    return "mm_encoder_outputs" in inspect.signature(inner.forward).parameters


def shared_vision(inner: torch.nn.Module, inputs: dict, rows: torch.Tensor) -> dict:
    """`inputs` with the vision encoded once per distinct media item (`mm_encoder_outputs`) instead of pixels,
    or `inputs` unchanged when nothing is shared (see the module docstring). `inner`: the model under the LM
    head (`model.model`)."""
    present = [(k, mod) for k, mod in enumerate(MODALITIES) if inputs.get(mod.pixels) is not None]
    if not present or not takes_encoder_outputs(inner):
        return inputs
    plans = {}
    for k, mod in present:
        cols = rows[:, 3 * k : 3 * k + 3]  # [n, 3]
        p = plan(cols)
        if p.shares and not _copies_equal(inputs, mod, p):  # every row its own source
            p = plan(torch.cat([torch.arange(len(rows), device=HOST).unsqueeze(1), cols[:, 1:]], 1))
        plans[mod] = p
    if not any(p.shares for p in plans.values()):
        return inputs
    encoded = {}
    for mod, p in plans.items():
        pix = inputs[mod.pixels]
        kw = {k: inputs[k][p.items.to(inputs[k].device)] for k in mod.per_item if k in inputs}
        out = getattr(inner, mod.encoder)(pix[p.pixels.to(pix.device)], **kw, return_dict=True)
        encoded[mod.name] = _expand(out, p.expand, len(p.items))
    inputs = {k: v for k, v in inputs.items() if k not in {mod.pixels for mod in plans}}
    inputs["mm_encoder_outputs"] = encoded
    return inputs
