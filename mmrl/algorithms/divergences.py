"""Per-token KL estimators between the policy and a target (e.g. the reference), from log-probs.

With log-ratio δ = log π_target − log π_θ (per sampled token):
  k1 = −δ,   k2 = δ² / 2,   k3 = exp(δ) − δ − 1   (Schulman, "Approximating KL Divergence", 2020).
All three are 0 when the two log-probs are equal.
"""

from __future__ import annotations

import math

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


# f-divergences on samples from a fixed policy π₀ (DPH-RL): with u = π_θ(y_t) / π₀(y_t) for y ~ π₀,
# E_{π₀}[f(u)] = D_f(π_θ ‖ π₀). Each function takes log u [N, T] and returns f(u) ≥ 0, 0 at u = 1.
F_DIVERGENCES: Registry = Registry("f-divergence")


@F_DIVERGENCES.register("forward_kl")
def forward_kl(log_u: torch.Tensor) -> torch.Tensor:
    """KL(π₀ ‖ π_θ) per sample: f(u) = u − log u − 1 (−log u plus the zero-mean control variate u − 1);
    mass-covering: it keeps π_θ from dropping what π₀ could already do. DPH-RL, "The Choice of Divergence"
    (arXiv:2509.07430). log u is clamped to ±20 so exp stays finite."""
    log_u = log_u.clamp(-20.0, 20.0)
    return torch.expm1(log_u) - log_u


@F_DIVERGENCES.register("js")
def js(log_u: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon generator f(u) = u log u − (u + 1) log((u + 1) / 2) (same paper); bounded growth."""
    log_u = log_u.clamp(-20.0, 20.0)
    u = torch.exp(log_u)
    return u * log_u - (u + 1.0) * (torch.log1p(u) - math.log(2.0))
