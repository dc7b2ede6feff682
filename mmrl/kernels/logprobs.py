"""Token log-probs (and entropy) from hidden states and the lm_head weight: the backend switch, the plain reference
and the min-p mass.

Shapes: hidden [N, H], weight [V, H], targets [N] (−100 = ignored: log-prob 0, entropy 0, no gradient).
"""

from __future__ import annotations

import difflib

import torch
from torch.utils.checkpoint import checkpoint

from mmrl.kernels.fused import IGNORE, fused_token_logprobs


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


def checkpoint_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    chunk_size: int = 1024, with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row chunks of the reference under activation checkpointing: each chunk's [chunk, V] logits are recomputed
    in backward, so peak memory is O(chunk·V) — but autograd still holds several [chunk, V] temporaries at once."""
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


def _naive(hidden, weight, targets, *, temperature, chunk_size, with_entropy):
    return naive_token_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=with_entropy)


def _triton(hidden, weight, targets, **kw):
    from mmrl.kernels.triton_logprobs import triton_token_logprobs

    return triton_token_logprobs(hidden, weight, targets, **kw)


BACKENDS = {"torch": fused_token_logprobs, "triton": _triton, "naive": _naive, "checkpoint": checkpoint_token_logprobs}


def resolve_backend(backend: str, hidden: torch.Tensor) -> str:
    """"auto" → "triton" for CUDA tensors when triton imports (fp64 excepted), else "torch"; others are checked."""
    if backend == "auto":
        from mmrl.kernels import triton_logprobs

        use_triton = hidden.is_cuda and hidden.dtype != torch.float64 and triton_logprobs.available()
        return "triton" if use_triton else "torch"
    if backend not in BACKENDS:
        close = difflib.get_close_matches(backend, list(BACKENDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown token_logprobs backend {backend!r}: valid are 'auto', {sorted(BACKENDS)}{hint}")
    return backend


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    chunk_size: int = 1024, with_entropy: bool = False, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `targets` under softmax(hidden · weightᵀ / T), optionally the entropy, never holding [N, V].

    Returns (logprobs [N] fp32, entropy [N] fp32 or None; fp64 for fp64 inputs), equal to `naive_token_logprobs`
    up to float rounding and differentiable w.r.t. hidden and weight through both outputs. `backend`:
    "auto" (triton for CUDA tensors when triton imports, else torch), "torch" (`fused.FusedTokenLogprobs`),
    "triton" (`triton_logprobs`), "naive" (the reference; materialises [N, V]), "checkpoint" (chunked reference
    under activation checkpointing). `chunk_size` = rows per tile.
    """
    name = resolve_backend(backend, hidden)
    return BACKENDS[name](
        hidden, weight, targets, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )


@torch.no_grad()
def minp_log_mass(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, kappa: float, temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position [N]: log Z_κ = log Σ_{a: p(a) ≥ κ·max p} p(a), the mass a min-p filter keeps, and
    whether the target survives the filter; positions with target −100 give (0, False). Chunked like
    `token_logprobs` (O(chunk·V) memory), no gradient. Lp-Reg's min-p proxy π_proxy(a) = p(a)/Z_κ for kept a."""
    if not 0.0 < kappa <= 1.0:
        raise ValueError(f"kappa must be in (0, 1], got {kappa}")
    dtype = torch.float32 if hidden.dtype != torch.float64 else torch.float64
    log_mass = torch.zeros(hidden.shape[0], dtype=dtype, device=hidden.device)
    kept = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    log_kappa = torch.log(torch.tensor(kappa, dtype=log_mass.dtype, device=hidden.device))
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        logits = (hidden[sl] @ weight.T).to(log_mass.dtype) / temperature  # [n, V]
        lse = torch.logsumexp(logits, dim=-1)  # [n]
        threshold = logits.max(dim=-1, keepdim=True).values + log_kappa  # [n, 1]
        inside = logits >= threshold
        mass = torch.logsumexp(logits.masked_fill(~inside, -float("inf")), dim=-1) - lse  # [n]
        valid = targets[sl] != IGNORE
        safe = torch.where(valid, targets[sl], torch.zeros_like(targets[sl]))
        hit = inside.gather(1, safe.unsqueeze(1)).squeeze(1) & valid
        log_mass[sl] = torch.where(valid, mass, torch.zeros_like(mass))
        kept[sl] = hit
    return log_mass, kept


def renormalize_without(
    logp: torch.Tensor, entropy: torch.Tensor | None, hidden: torch.Tensor, weight: torch.Tensor,
    targets: torch.Tensor, excluded: torch.Tensor, *, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token log-probs [N] (and entropies) of softmax(h Wᵀ / T) with the ids `excluded` [M] removed — the support a
    sampler that never samples them draws from — from the full-vocabulary `logp` / `entropy` of `token_logprobs`.

    With m = Σ_{e ∈ excluded} p_e (recovered from lse = z_t − logp_t and the M extra logits h W_eᵀ / T):
    logp'_t = logp_t − log(1 − m) and H' = (H + Σ_e p_e log p_e) / (1 − m) + log(1 − m); differentiable (the extra
    cost is an [N, M] product). Rows with target −100 stay 0. Differs from: masking the logits before the kernel
    only by float rounding (tests/kernels)."""
    valid = targets != IGNORE  # [N]
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    dt = torch.promote_types(hidden.dtype, torch.float32)  # fp32 (fp64 inputs stay fp64)
    h = hidden.to(dt)
    z_t = (h * weight[safe].to(dt)).sum(-1) / temperature  # [N] target logit
    lse = z_t - logp.to(dt)  # [N] log-sum-exp over the full vocabulary
    logp_e = (h @ weight[excluded].to(dt).T) / temperature - lse.unsqueeze(1)  # [N, M]
    mass = logp_e.exp().sum(-1).clamp(max=1.0 - 1e-7)  # [N]
    log_keep = torch.log1p(-mass)  # [N]
    out = torch.where(valid, logp.to(dt) - log_keep, torch.zeros_like(lse)).to(logp.dtype)
    if entropy is None:
        return out, None
    ent = (entropy.to(dt) + (logp_e.exp() * logp_e).sum(-1)) / (1.0 - mass) + log_keep
    return out, torch.where(valid, ent, torch.zeros_like(ent)).to(entropy.dtype)
