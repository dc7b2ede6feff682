"""The per-micro-batch RL objective, assembled from the registered pieces by name.

L = Agg[ℓ_clip(ρ̃, Â)] + β_KL·Agg[k(π_θ, π_ref)] − α_H·Agg[H] − γ·Agg[k(π_θ(·|I), π_θ(·|I_masked))]
    + η·(Agg[H] + Agg[H_masked])

with ρ̃ from `ratio_level`, ℓ_clip from `policy_loss`, Agg from `aggregation` (global normalisers), the KL term
only when the KL is placed in the loss (`kl_placement: loss`), and the masked-image terms only when a masked
pass was run (`masked_kl_coef` > 0; PAPO). Every name is looked up in a registry; nothing here branches on a
method's name. Shapes: [N, T] per-token tensors of one micro-batch, advantages [N] (or [N, T] with per-turn credit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.algorithms.divergences import KL_ESTIMATORS
from mmrl.algorithms.losses import AGGREGATIONS, POLICY_LOSSES, RATIO_LEVELS, token_advantages
from mmrl.registry import Registry
from mmrl.runtime import HOST

COV_MODES: Registry = Registry("covariance mode")


@dataclass
class TokenTerms:
    """Per-token inputs of one micro-batch (all [N, T] except `advantages`: [N], or [N, T] with per-turn credit)."""

    logp: torch.Tensor  # π_θ, with gradient
    old_logp: torch.Tensor  # π_old (behaviour or recomputed), no gradient
    mask: torch.Tensor
    advantages: torch.Tensor
    entropy: torch.Tensor | None = None  # H(π_θ(·|h_t)), with gradient
    ref_logp: torch.Tensor | None = None  # π_ref, no gradient
    masked_logp: torch.Tensor | None = None  # π_θ on the masked image, with gradient
    masked_entropy: torch.Tensor | None = None
    generator: torch.Generator | None = None  # for random token selection (cov_mode: clip_cov)
    kl_weight: torch.Tensor | None = None  # [N] per-completion weight of the KL term (kl_weighting)
    proxy_log_mass: torch.Tensor | None = None  # [N, T] log of the min-p-kept mass (lp_reg_coef > 0), no gradient
    proxy_kept: torch.Tensor | None = None  # [N, T] the sampled token survives the min-p filter
    is_weight: torch.Tensor | None = None  # [N, T] truncated importance weights on the policy term (`tis_weights`)


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
    tok_loss, stats["cov_selected"] = COV_MODES.get(algo.cov_mode)(tok_loss, log_ratio, clipped, t, algo)
    if t.is_weight is not None:  # sampler ≠ trainer correction: the policy-gradient term only
        tok_loss = tok_loss * t.is_weight
    if t.ref_logp is not None and algo.kl_coef > 0 and algo.kl_placement == "loss":
        kl = KL_ESTIMATORS.get(algo.kl_estimator)(t.logp, t.ref_logp)  # [N, T]
        if t.kl_weight is not None:
            kl = kl * t.kl_weight.unsqueeze(1)
        tok_loss = tok_loss + algo.kl_coef * kl
        stats["kl"] = float((kl.detach() * t.mask).sum())
    if t.proxy_log_mass is not None and algo.lp_reg_coef > 0:
        reg, selected = low_probability_regulariser(t, algo)
        tok_loss = tok_loss + algo.lp_reg_coef * reg
        stats["lp_reg_tokens"] = selected
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


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """C_t = (log π_t − mean log π)(Â_t − mean Â) per token [N, T], means over the valid tokens (0 elsewhere)."""
    valid = mask.bool()
    adv = token_advantages(advantages).expand_as(logp)
    n = valid.sum().clamp(min=1)
    lp_mean = (logp.detach() * mask).sum() / n
    adv_mean = (adv * mask).sum() / n
    return ((logp.detach() - lp_mean) * (adv - adv_mean)).masked_fill(~valid, 0.0)


@COV_MODES.register("none")
def no_cov(tok_loss, log_ratio, clipped, t: TokenTerms, algo) -> tuple[torch.Tensor, float]:
    """No covariance-based selection."""
    return tok_loss, 0.0


@COV_MODES.register("clip_cov")
def clip_cov(tok_loss, log_ratio, clipped, t: TokenTerms, algo) -> tuple[torch.Tensor, float]:
    """Clip-Cov ("The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", Cui et al.,
    arXiv:2505.22617): among valid, not already clipped tokens with covariance in (ω_lo, ω_hi), a random
    ⌊r·n⌋ (n = valid tokens) lose their gradient — the updates that collapse entropy fastest."""
    cov = token_covariance(t.logp, t.advantages, t.mask)
    lo, hi = algo.cov_low, algo.cov_high
    candidates = (t.mask.bool() & (clipped == 0) & (cov > lo) & (cov < hi)).reshape(-1).nonzero().squeeze(1)
    k = int(algo.cov_ratio * int(t.mask.sum()))
    if k == 0 or candidates.numel() == 0:
        return tok_loss, 0.0
    order = torch.randperm(candidates.numel(), generator=t.generator, device=HOST)[:k]  # seeded on the host
    pick = candidates[order.to(candidates.device)]
    keep = torch.ones(tok_loss.numel(), dtype=torch.bool, device=tok_loss.device)
    keep[pick] = False
    keep = keep.view_as(tok_loss)
    return torch.where(keep, tok_loss, tok_loss.detach()), float(pick.numel())


@COV_MODES.register("kl_cov")
def kl_cov(tok_loss, log_ratio, clipped, t: TokenTerms, algo) -> tuple[torch.Tensor, float]:
    """KL-Cov (same paper): the top ⌊k·n⌋ valid tokens by covariance get + β·|log ρ_t| (a KL-like pull to π_old)."""
    cov = token_covariance(t.logp, t.advantages, t.mask).masked_fill(~t.mask.bool(), float("-inf"))
    k = int(algo.cov_ratio * int(t.mask.sum()))
    if k == 0:
        return tok_loss, 0.0
    top = torch.topk(cov.reshape(-1), k).indices
    chosen = torch.zeros(tok_loss.numel(), dtype=tok_loss.dtype, device=tok_loss.device)
    chosen[top] = 1.0
    return tok_loss + algo.cov_kl_coef * chosen.view_as(tok_loss) * log_ratio.abs(), float(k)


def low_probability_regulariser(t: TokenTerms, algo) -> tuple[torch.Tensor, float]:
    """Lp-Reg ("Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward",
    arXiv:2510.03222): on the tokens of negative-advantage completions whose
    log-prob is among the lowest `lp_reg_share` of such tokens (this micro-batch) and that a min-p filter at κ keeps,
    k3(π_θ, π_proxy) with the proxy π_proxy(o_t) = sg[π_θ(o_t)] / Z_κ — it stops negative updates from driving
    plausible low-probability tokens to zero. Returns (per-token term [N, T], number of tokens selected)."""
    negative = (token_advantages(t.advantages) < 0) & t.mask.bool()  # [N, T]
    n_neg = int(negative.sum())
    k = int(algo.lp_reg_share * n_neg + 0.5)
    if k == 0:
        return torch.zeros_like(t.logp), 0.0
    threshold = torch.kthvalue(t.logp.detach()[negative], k).values
    selected = negative & (t.logp.detach() <= threshold) & t.proxy_kept & (t.proxy_log_mass < 0)
    proxy = t.logp.detach() - t.proxy_log_mass  # log π_proxy(o_t) ≥ log π_θ(o_t)
    reg = KL_ESTIMATORS.get("k3")(t.logp, proxy)
    return torch.where(selected, reg, torch.zeros_like(reg)), float(selected.sum())


def tis_weights(old_logprobs: torch.Tensor, sampling_logprobs: torch.Tensor, mask: torch.Tensor,
                cap: float) -> torch.Tensor:
    """Truncated importance sampling weights [N, C]: w_t = min(exp(log π_old − log π_sampler), cap) on real tokens,
    0 elsewhere; no gradient. Multiplies the per-token policy-gradient loss (`rollout.tis_cap`). Tokens the
    sampler did not choose (a forced prefix, recorded with sampling log-prob 0) get weight 1.

    "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", Yao et al. 2025, a blog post
    (fengyao.notion.site/off-policy-rl; no arXiv id). Differs from: PPO's ratio π_θ/π_old (that one is clipped
    and carries the gradient; this one corrects the sampler's distribution, which differs from the trainer's).
    """
    if not cap > 0:
        raise ValueError(f"tis cap must be > 0, got {cap}")
    log_w = (old_logprobs.detach().float() - sampling_logprobs.detach().float()) * mask  # [N, C]
    w = torch.exp(log_w).clamp(max=cap)
    w = torch.where(sampling_logprobs == 0, torch.ones_like(w), w)  # no sampler log-prob (forced tokens): 1
    return w * mask
