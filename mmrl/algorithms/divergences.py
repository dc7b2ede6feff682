"""Per-token KL estimators between the policy and a target (e.g. the reference), from log-probs.

With log-ratio δ = log π_target − log π_θ (per sampled token):
  k1 = −δ,   k2 = δ² / 2,   k3 = exp(δ) − δ − 1   (Schulman, "Approximating KL Divergence", 2020).
All three are 0 when the two log-probs are equal.
"""

from __future__ import annotations

import torch

from mmrl.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def k1(logp: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π_θ − log π_target (unbiased, high variance, can be negative)."""
    return logp - target_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π_θ − log π_target)² (biased, low variance, ≥ 0)."""
    return 0.5 * (logp - target_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logp: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(δ) − δ − 1 with δ = log π_target − log π_θ (unbiased, ≥ 0); GRPO's KL term.

    Paper: DeepSeekMath (arXiv:2402.03300), eq. for D_KL. The log-ratio is clamped to ±20 so exp stays finite.
    Written as expm1(δ) − δ: `exp(δ) − δ − 1` cancels catastrophically near δ = 0 and goes negative in fp32/bf16,
    whereas fl(expm1(δ)) ≥ δ, so the result is ≥ 0 in every dtype.
    """
    delta = (target_logp - logp).clamp(-20.0, 20.0)
    return torch.expm1(delta) - delta
