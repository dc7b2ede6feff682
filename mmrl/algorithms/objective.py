"""The per-micro-batch RL objective, assembled from the registered pieces by name.

L = Agg[ℓ_clip(ρ̃, Â)] + β_KL·Agg[k(π_θ, π_ref)] − α_H·Agg[H] − γ·Agg[k(π_θ(·|I), π_θ(·|I_masked))]
    + η·(Agg[H] + Agg[H_masked])

with ρ̃ from `ratio_level`, ℓ_clip from `policy_loss`, Agg from `aggregation` (global normalisers), the KL term
only when the KL is placed in the loss (`kl_placement: loss`), and the masked-image terms only when a masked
pass was run (`masked_kl_coef` > 0; PAPO). Every name is looked up in a registry; nothing here branches on a
method's name. Shapes: [N, T] per-token tensors of one micro-batch, advantages [N].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.algorithms.divergences import KL_ESTIMATORS
from mmrl.algorithms.losses import AGGREGATIONS, POLICY_LOSSES, RATIO_LEVELS


@dataclass
class TokenTerms:
    """Per-token inputs of one micro-batch (all [N, T] except `advantages` [N])."""

    logp: torch.Tensor  # π_θ, with gradient
    old_logp: torch.Tensor  # π_old (behaviour or recomputed), no gradient
    mask: torch.Tensor
    advantages: torch.Tensor
    entropy: torch.Tensor | None = None  # H(π_θ(·|h_t)), with gradient
    ref_logp: torch.Tensor | None = None  # π_ref, no gradient
    masked_logp: torch.Tensor | None = None  # π_θ on the masked image, with gradient
    masked_entropy: torch.Tensor | None = None


def objective(t: TokenTerms, algo, norms: dict[str, int]) -> tuple[torch.Tensor, dict[str, float]]:
    """(scalar loss of this micro-batch, summed statistics: clipped / kl / masked_kl token sums).

    `algo` is an `AlgorithmConfig` (or anything with the same attributes); `norms` are the aggregation's global
    normalisers (`global_tokens`, `global_seqs`, `max_tokens`).
    """
    agg = AGGREGATIONS.get(algo.aggregation)
    log_ratio = RATIO_LEVELS.get(algo.ratio_level)(t.logp, t.old_logp, t.mask)  # [N, T]
    tok_loss, clipped = POLICY_LOSSES.get(algo.policy_loss)(
        log_ratio, t.logp, t.advantages, clip_low=algo.clip_low, clip_high=algo.clip_high, clip_c=algo.clip_c,
        tau_pos=algo.tau_pos, tau_neg=algo.tau_neg,
    )
    stats = {"clip": float((clipped.detach() * t.mask).sum())}
    if t.ref_logp is not None and algo.kl_coef > 0 and algo.kl_placement == "loss":
        kl = KL_ESTIMATORS.get(algo.kl_estimator)(t.logp, t.ref_logp)  # [N, T]
        tok_loss = tok_loss + algo.kl_coef * kl
        stats["kl"] = float((kl.detach() * t.mask).sum())
    if t.entropy is not None and algo.entropy_coef:
        tok_loss = tok_loss - algo.entropy_coef * t.entropy
    if t.masked_logp is not None:
        masked_kl = KL_ESTIMATORS.get(algo.masked_kl_estimator)(t.logp, t.masked_logp)  # [N, T]
        tok_loss = tok_loss - algo.masked_kl_coef * masked_kl  # maximised: the image must matter
        if algo.masked_entropy_coef and t.entropy is not None and t.masked_entropy is not None:
            tok_loss = tok_loss + algo.masked_entropy_coef * (t.entropy + t.masked_entropy)
        stats["masked_kl"] = float((masked_kl.detach() * t.mask).sum())
    return agg(tok_loss, t.mask, **norms), stats


def kl_penalty_per_sequence(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                            estimator: str = "k1") -> torch.Tensor:
    """Σ_t k(π_old, π_ref) per completion [N], for the KL placed in the reward: r_i ← r_i − β·Σ_t k1 (the
    PPO / InstructGPT form, whose return carries the sequence-level reverse-KL gradient)."""
    return (KL_ESTIMATORS.get(estimator)(old_logp, ref_logp) * mask).sum(dim=1)
