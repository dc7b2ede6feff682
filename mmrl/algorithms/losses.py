"""Ratios, policy losses (per-token surrogates) and aggregations (per-token losses → a scalar).

Shapes: logp, old_logp, mask are [N, T] (N completions in the micro-batch, T tokens); advantages are [N], or [N, T]
when turns of a trajectory get their own (`algorithm.turn_rewards`; `token_advantages`).
A step is `RATIO_LEVELS[level](logp, old_logp, mask)` → log ρ̃ [N, T], then `POLICY_LOSSES[name](log ρ̃, logp, Â,
**clip knobs)` → (loss [N, T], clipped [N, T]), then `AGGREGATIONS[name](loss, mask, **normalisers)`.
Aggregations receive the *global* batch's normalisers (`global_tokens`, `global_seqs`, `max_tokens`) so that
summing the micro-batch losses gives the same value and gradient however the batch is split.
"""

from __future__ import annotations

import torch

from mmrl.registry import Registry

RATIO_LEVELS: Registry = Registry("ratio level")
POLICY_LOSSES: Registry = Registry("policy loss")
AGGREGATIONS: Registry = Registry("loss aggregation")


# --------------------------------------------------------------------------------------------------- ratios
@RATIO_LEVELS.register("token")
def token_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log ρ_{i,t} = log π_θ(o_{i,t}) − log π_old(o_{i,t}) (PPO / GRPO)."""
    return logp - old_logp


@RATIO_LEVELS.register("sequence")
def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO (Zheng et al., arXiv:2507.18071): log s_i = (1/|o_i|) Σ_t log ρ_{i,t}, used for every token in its
    token form log s_{i,t} = sg[log s_i] + log π_θ(o_{i,t}) − sg[log π_θ(o_{i,t})]: the value is the sequence
    ratio, the gradient of each token is s_i·∇log π_θ(o_{i,t}) (TRL's `importance_sampling_level="sequence"`)."""
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # [N, 1]
    seq = ((logp - old_logp) * mask).sum(dim=1, keepdim=True) / lengths  # [N, 1]
    return seq.detach() + logp - logp.detach()  # [N, T]


# ----------------------------------------------------------------------------------------------- surrogates
def token_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages that broadcast against [N, T]: [N] → [N, 1]; per-token [N, T] as they are."""
    return advantages.unsqueeze(1) if advantages.dim() == 1 else advantages


LOG_RATIO_BOUND = 20.0  # |log ρ| beyond this is clamped before exp (as verl does): e^20 ≈ 4.9e8 is finite in fp32


def _ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """ρ = exp(clamp(log ρ, ±LOG_RATIO_BOUND)): finite in float32 at any log-ratio (a replayed row's stored π_old can
    make it extreme), so no inf·0 or inf·σ′ = NaN reaches the step; beyond the bound the token has no gradient."""
    return torch.exp(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))


def _ppo_min(ratio, clipped_ratio, adv):
    unclipped, clipped = ratio * adv, clipped_ratio * adv
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).to(ratio.dtype)


def _dual_clip(loss: torch.Tensor, adv: torch.Tensor, clip_c: float | None) -> torch.Tensor:
    """Dual-clip PPO (Ye et al., arXiv:1912.09729): for Â < 0 the loss is capped at −c·Â (c > 1)."""
    if clip_c is None:
        return loss
    return torch.where(adv < 0, torch.minimum(loss, -clip_c * adv), loss)


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    log_ratio: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, *, clip_low: float, clip_high: float,
    clip_c: float | None = None, **_,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ = −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â), optionally dual-clipped at −c·Â for Â < 0.

    Paper: Proximal Policy Optimization Algorithms (arXiv:1707.06347); GRPO (arXiv:2402.03300) uses it with
    group advantages; DAPO's clip-higher (arXiv:2503.14476) is ε_high > ε_low. At ρ = 1 the gradient is
    −Â ∇log π (REINFORCE). Returns (per-token loss [N, T], per-token clipped indicator [N, T]).
    """
    ratio = _ratio(log_ratio)  # [N, T]
    adv = token_advantages(advantages)  # [N, 1] or [N, T]
    loss, clipped = _ppo_min(ratio, torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high), adv)
    return _dual_clip(loss, adv, clip_c), clipped


@POLICY_LOSSES.register("gppo")
def gppo(
    log_ratio: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, *, clip_low: float, clip_high: float,
    clip_c: float | None = None, **_,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-preserving clipping (GPPO, Klear-Reasoner; arXiv:2508.07629): the value is
    PPO's, but where PPO's min picks the clipped branch the bound is (1±ε)·ρ/sg[ρ], so the token keeps the
    gradient (1±ε)·Â·∇log π instead of none (β₁ = β₂ = 1)."""
    ratio = _ratio(log_ratio)
    adv = token_advantages(advantages)
    scale = torch.exp(log_ratio - log_ratio.detach())  # value 1, gradient ∇log ρ = ∇log π (finite at any ρ)
    bounded = torch.where(ratio < 1.0 - clip_low, (1.0 - clip_low) * scale,
                          torch.where(ratio > 1.0 + clip_high, (1.0 + clip_high) * scale, ratio))
    loss, clipped = _ppo_min(ratio, bounded, adv)
    return _dual_clip(loss, adv, clip_c), clipped


@POLICY_LOSSES.register("cispo")
def cispo(
    log_ratio: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, *, clip_low: float, clip_high: float, **_,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, arXiv:2506.13585): ℓ = −sg[clip(ρ, 1−ε_low, 1+ε_high)]·Â·log π_θ — every token keeps a
    gradient, only its importance weight is clipped. TRL's `cispo` clips at ε_max only: set `clip_low` ≥ 1."""
    ratio = _ratio(log_ratio)
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = -weight.detach() * token_advantages(advantages) * logp
    return loss, (weight != ratio).to(ratio.dtype)


@POLICY_LOSSES.register("sapo")
def sapo(
    log_ratio: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, *, tau_pos: float = 1.0,
    tau_neg: float = 1.05, **_,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft adaptive gate (SAPO, Qwen team; arXiv:2511.20347): ℓ = −(4/τ)·σ(τ(ρ−1))·Â with
    τ = τ_pos for Â > 0 and τ_neg otherwise; the gradient weight 4σ(1−σ) is 1 at ρ = 1 and decays smoothly.
    Nothing is hard-clipped: the reported clipped indicator is 0."""
    ratio = _ratio(log_ratio)
    adv = token_advantages(advantages)
    tau = torch.where(adv > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))  # [N, 1], in ratio's dtype
    loss = -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0)) * adv
    return loss, torch.zeros_like(ratio)


@POLICY_LOSSES.register("reinforce")
def reinforce(
    log_ratio: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, **_,
) -> tuple[torch.Tensor, torch.Tensor]:
    """No clipping: ℓ = −ρ·Â (importance-weighted REINFORCE; at ρ = 1 the gradient is −Â ∇log π, the objective of
    "GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning", arXiv:2504.02546)."""
    ratio = _ratio(log_ratio)
    return -ratio * token_advantages(advantages), torch.zeros_like(ratio)


# ------------------------------------------------------------------------------------------------ aggregations
@AGGREGATIONS.register("token_mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, *, global_tokens: int, global_seqs: int, **_) -> torch.Tensor:
    """Σ_{i,t} m·ℓ / (number of completion tokens in the whole optimizer batch). DAPO's token-level mean."""
    return (loss * mask).sum() / max(global_tokens, 1)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, *, global_tokens: int, global_seqs: int, **_
) -> torch.Tensor:
    """(1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}: the original GRPO aggregation (DeepSeekMath, arXiv:2402.03300)."""
    per_seq = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [N]
    return per_seq.sum() / max(global_seqs, 1)


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(
    loss: torch.Tensor, mask: torch.Tensor, *, global_tokens: int, global_seqs: int, **_
) -> torch.Tensor:
    """(1/N) Σ_i Σ_t ℓ_{i,t}: each sequence weighted by its length (LUSPO with the GSPO ratio, arXiv:2602.05261)."""
    return (loss * mask).sum() / max(global_seqs, 1)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, *, global_tokens: int, global_seqs: int, max_tokens: int, **_
) -> torch.Tensor:
    """Σ_{i,t} ℓ_{i,t} / (N · L_max), a constant normaliser (L_max = the generation budget): Dr. GRPO
    (arXiv:2503.20783), TRL's `loss_type="dr_grpo"`."""
    return (loss * mask).sum() / max(global_seqs * max_tokens, 1)
