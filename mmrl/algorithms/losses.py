"""Policy losses (per-token surrogate) and aggregations (per-token losses → a scalar).

Shapes: logp, old_logp, mask are [N, T] (N = completions in the micro-batch); advantages are [N].
Aggregations receive the *global* batch's normalisers (`global_tokens`, `global_seqs`) so that summing the
micro-batch losses gives the same value and gradient however the batch is split.
"""

from __future__ import annotations

import torch

from mmrl.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")
AGGREGATIONS: Registry = Registry("loss aggregation")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate: ℓ = −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â), ρ = π_θ / π_old per token.

    Paper: Proximal Policy Optimization Algorithms (arXiv:1707.06347); GRPO (arXiv:2402.03300) uses it with
    group advantages; DAPO's clip-higher (arXiv:2503.14476) is ε_high > ε_low.
    Differs from: REINFORCE (no ratio) — at ρ = 1 both give the same gradient −Â ∇log π.
    Returns (per-token loss [N, T], per-token clipped indicator [N, T]).
    """
    ratio = torch.exp(logp - old_logp)  # [N, T]
    adv = advantages.unsqueeze(1)  # [N, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)  # [N, T]
    was_clipped = (clipped < unclipped).to(logp.dtype)  # the min picked the clipped branch
    return loss, was_clipped


@AGGREGATIONS.register("token_mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, *, global_tokens: int, global_seqs: int) -> torch.Tensor:
    """Σ_{i,t} m·ℓ / (number of completion tokens in the whole optimizer batch). DAPO's token-level mean."""
    return (loss * mask).sum() / max(global_tokens, 1)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, *, global_tokens: int, global_seqs: int
) -> torch.Tensor:
    """(1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}: the original GRPO aggregation (DeepSeekMath, arXiv:2402.03300)."""
    per_seq = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [N]
    return per_seq.sum() / max(global_seqs, 1)
