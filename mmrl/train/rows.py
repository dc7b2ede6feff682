"""Rows of a rollout batch as model inputs, and the no-gradient log-prob pass over them.

Used by the update (`mmrl.train.update`) and by its regularisers (`mmrl.train.regularisers`); living here, below
both, they need not import each other. Every tensor is on the runtime's device (`policy.runtime`); across
processes each rank computes its block of rows (`Runtime.rows`), padded with `None` rows. Shapes: N completions,
C tokens, n rows of one micro-batch, W ≤ C the micro-batch's longest completion.
"""

from __future__ import annotations

import torch

from mmrl.model.logprobs import PRESENT, TOKEN_TYPES
from mmrl.rollout.types import Rollouts
from mmrl.runtime import HOST


def chunks(rows: list, size: int) -> list[list]:
    """`rows` in consecutive pieces of `size` (the last may be shorter)."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def row_index(rows: list[int | None], device: torch.device) -> torch.Tensor:
    """Rows as an index tensor on `device`; a `None` (padding) row repeats the first real one (0 without any)."""
    fill = next((r for r in rows if r is not None), 0)
    return torch.tensor([fill if r is None else r for r in rows], dtype=torch.long, device=device)


def micro_inputs(policy, prompts, ro: Rollouts, rows: list[int | None]):
    """(collated prompts, completion ids [n, W], mask [n, W], W) of `rows`; a `None` row repeats a real one with an
    empty mask. The rows of one prompt share its vision features: each distinct image or video is encoded once
    per pass (`mmrl.model.vision_once`), exactly as if per row. Multi-turn rows (`ro.observed`) carry their
    observation tokens and tool images (`mmrl.model.logprobs.PRESENT`); their media are encoded per row."""
    idx = row_index(rows, ro.device)
    real = torch.tensor([[r is not None] for r in rows], dtype=ro.completion_mask.dtype, device=ro.device)
    mask = ro.completion_mask[idx] * real  # [n, C]
    host = row_index(rows, HOST).tolist()
    row_prompts = [prompts[int(ro.prompt_index[i])] for i in host]
    obs = ro.observed
    if obs is None:
        width = max(int(mask.sum(1).max()), 1)
        return policy.collate(row_prompts, share_vision=True), ro.completion_ids[idx, :width], mask[:, :width], width
    present = obs.present[idx] * real  # [n, C] observation tokens too (multi-turn rows)
    width = max(int(present.sum(1).max()), 1)
    batch = policy.collate(row_prompts, after=[obs.media[i] for i in host])
    batch[PRESENT], batch[TOKEN_TYPES] = present[:, :width], obs.token_types[idx, :width]
    return batch, ro.completion_ids[idx, :width], mask[:, :width], width


@torch.no_grad()
def logprob_pass(policy, prompts, ro: Rollouts, *, micro: int, temperature: float, model=None) -> torch.Tensor:
    """Log-probs [N, C] of every completion under `model` (default: the policy as it is now), no gradient; across
    processes each computes its block of rows and all receive the whole (`Runtime.gather_rows`)."""
    runtime = policy.runtime
    mine = runtime.rows(list(range(len(ro))))  # this rank's block, padding rows last
    local = torch.zeros((len(mine), ro.completion_ids.shape[1]), dtype=torch.float32, device=ro.device)  # [n, C]
    for start in range(0, len(mine), micro):
        rows = mine[start : start + micro]
        batch, ids, mask, width = micro_inputs(policy, prompts, ro, rows)
        logp, _ = policy.completion_logprobs(batch, ids, mask, temperature=temperature, model=model)
        local[start : start + len(rows), :width] = logp.float() * mask  # padding rows stay 0
    return runtime.gather_rows(local, len(ro))
