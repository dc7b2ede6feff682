"""Token log-probs (and entropy) from hidden states and the lm_head weight.

Shapes: hidden [N, H], weight [V, H], targets [N] (−100 = ignored: log-prob 0, entropy 0, no gradient).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def naive_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: full logits → log_softmax → gather (materialises [N, V]; tests and benchmarks only)."""
    logits = hidden @ weight.T  # [N, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # ≥ fp32; fp64 stays fp64
    logp_all = torch.log_softmax(logits, dim=-1)  # [N, V]
    valid = targets != IGNORE  # [N]
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    logp = logp_all.gather(1, safe.unsqueeze(1)).squeeze(1) * valid  # [N]
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1) * valid  # [N]
    return logp, entropy


def _chunk(hidden, weight, targets, temperature: float, with_entropy: bool):
    logp, ent = naive_token_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=with_entropy)
    return (logp, ent) if with_entropy else (logp,)


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    chunk_size: int = 1024, with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked log-probs: each chunk's [chunk, V] logits live only inside that chunk's forward and are
    recomputed in backward (activation checkpointing), so peak memory is O(chunk·V) instead of O(N·V).

    Returns (logprobs [N] fp32, entropy [N] fp32 or None; fp64 for fp64 inputs). Equal to
    `naive_token_logprobs` up to float rounding; differentiable w.r.t. hidden and weight.
    """
    if hidden.shape[0] <= chunk_size:
        return naive_token_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=with_entropy)
    outs_lp, outs_ent = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        res = checkpoint(_chunk, hidden[sl], weight, targets[sl], temperature, with_entropy, use_reentrant=False)
        outs_lp.append(res[0])
        if with_entropy:
            outs_ent.append(res[1])
    return torch.cat(outs_lp), (torch.cat(outs_ent) if with_entropy else None)
