"""The `hf` engine's own token loop: each prompt prefilled once for its G rows.

transformers' `generate` prefills every row, so a prompt sampled G times runs its tokens (and, without vision
once, its images) G times before the first completion token. Here the B distinct prompts are prefilled once,
the KV cache is repeated to the N = B·G rows (`Cache.batch_repeat_interleave`, the method transformers' own
beam search uses), and the rows decode together:

    prefill  B rows × P prompt tokens  → logits of the last prompt token [B, V], KV cache [B, P]
    expand   cache, logits, last positions and the attention mask, each row G times → [N, …]
    decode   per step: draw one token per row (mmrl's sampler), then one forward of [N, 1] tokens

Positions come from the model's own `_prepare_position_ids_for_generation`, the method `generate` calls (Qwen-VL
overrides it with its M-RoPE positions, [4, B, P]: text row + 3 rope axes); each decode step takes the last
position + 1 on every axis, as `generate` does. Rows that ended (EOS) are fed padding, as in `generate`, and the
loop stops when every row ended — across processes, when every rank's rows ended (FSDP's collectives run in
lock-step, `synced`).

The arithmetic is `generate`'s except for the prefill's batch shape (B rows instead of N): on the CPU the logits
are those of the per-row path to the last bits, and tests compare completions and sampling log-probs against
`generate` per model family (`tests/rollout/test_hf_decode.py`). A model this loop cannot drive (no cache with
`batch_repeat_interleave`, no generation positions) is sampled by `generate` (`reason_unsupported`).
"""

from __future__ import annotations

import inspect

import torch

from mmrl.model.vision_once import VISION_ROWS, shared_vision


def reason_unsupported(hf) -> str | None:
    """Why this loop cannot drive the transformers model `hf` (None: it can)."""
    params = inspect.signature(hf.forward).parameters
    if "past_key_values" not in params:
        return "its forward takes no past_key_values"
    if "position_ids" in params and not hasattr(hf, "_prepare_position_ids_for_generation"):
        return "it has no _prepare_position_ids_for_generation (transformers < 5)"
    return None


def generation_positions(hf, batch: dict) -> torch.Tensor | None:
    """The prompt positions `generate` would use: [B, P], or [A, B, P] for multi-axis rope (Qwen-VL's M-RoPE)."""
    if "position_ids" not in inspect.signature(hf.forward).parameters:
        return None
    kwargs = {k: v for k, v in batch.items() if k != "input_ids"}
    return hf._prepare_position_ids_for_generation(batch["input_ids"], kwargs)


def _rows_dim(positions: torch.Tensor) -> int:
    return 1 if positions.ndim == 3 else 0


def _all_ended(ended: bool, synced: bool, device: torch.device) -> bool:
    """Whether every row ended: this process's (`ended`), or every process's when `synced`."""
    if not synced:
        return ended
    flag = torch.tensor([0.0 if ended else 1.0], device=device)
    torch.distributed.all_reduce(flag)
    return float(flag) == 0.0


@torch.no_grad()
def decode(hf, batch: dict, repeats: int, draw, max_new_tokens: int, eos_ids: list[int], pad_id: int,
           synced: bool = False) -> torch.Tensor:
    """Completion ids [N, C] (C ≤ max_new_tokens; after a row's EOS, `pad_id`) for the B prompts of `batch`
    (collated once each, `share_vision=True`), `repeats` = G rows per prompt, adjacent. `draw(logits [N, V], t)`
    returns the ids [N] at completion position t (mmrl's sampler, which records their log-probs)."""
    rows = batch.pop(VISION_ROWS, None)
    inputs = batch if rows is None else shared_vision(hf.model, batch, rows)  # each distinct media once
    positions = generation_positions(hf, inputs)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(hf.forward).parameters else {}
    extra = keep if positions is None else {**keep, "position_ids": positions}
    out = hf(**inputs, **extra, use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(repeats)  # [B, …, P, …] → [N, …, P, …]
    logits = out.logits[:, -1].repeat_interleave(repeats, dim=0)  # [N, V]
    # No left padding: every row attends to its whole cache, which no mask says (transformers would read an all-ones
    # mask at every step — on a GPU a host sync per token — to find out it can drop it).
    padded = not bool(batch["attention_mask"].all())
    mask = batch["attention_mask"].repeat_interleave(repeats, dim=0) if padded else None  # [N, P]
    last = None if positions is None else positions[..., -1:].repeat_interleave(repeats, dim=_rows_dim(positions))
    eos = torch.tensor(eos_ids, dtype=torch.long, device=logits.device)
    running = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)  # [N] no EOS yet
    ids = []
    for t in range(max_new_tokens):
        pick = draw(logits, t)  # [N]
        pick = torch.where(running, pick, torch.full_like(pick, pad_id))
        ids.append(pick)
        running &= ~torch.isin(pick, eos)
        if t == max_new_tokens - 1 or _all_ended(not bool(running.any()), synced, logits.device):
            break
        if padded:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # [N, P + t + 1]
        step = {} if last is None else {"position_ids": (last := last + 1)}
        out = hf(input_ids=pick[:, None], attention_mask=mask, past_key_values=cache, use_cache=True, **keep, **step)
        logits = out.logits[:, -1]
    return torch.stack(ids, dim=1)
