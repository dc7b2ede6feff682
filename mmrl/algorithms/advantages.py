"""Advantage estimators: per-completion rewards [B*G] → per-completion advantages [B*G].

Completions arrive grouped: rows g*G … g*G+G-1 belong to prompt g.
"""

from __future__ import annotations

import torch

from mmrl.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


@ADVANTAGES.register("group_norm")
def group_norm(rewards: torch.Tensor, *, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: Â_i = (r_i − mean_G r) / (std_G r + ε).

    Paper: DeepSeekMath (arXiv:2402.03300). The std is the sample standard deviation (Bessel-corrected), as
    in the paper's and TRL's implementation. A group of equal rewards gets Â = 0 exactly.
    Differs from: `group_center` (no std division, Dr. GRPO).
    """
    r = rewards.view(-1, group_size)  # [B, G]
    std = r.std(dim=1, keepdim=True)  # [B, 1]
    return (_centered(r) / (std + eps)).reshape(-1)  # [B*G]


@ADVANTAGES.register("group_center")
def group_center(rewards: torch.Tensor, *, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO: Â_i = r_i − mean_G r (no std scaling, which biases towards easy/hard prompts).

    Paper: Understanding R1-Zero-Like Training: A Critical Perspective (arXiv:2503.20783).
    Differs from: `group_norm` (divides by the group std).
    """
    r = rewards.view(-1, group_size)  # [B, G]
    return _centered(r).reshape(-1)  # [B*G]


def _centered(r: torch.Tensor) -> torch.Tensor:
    """r − mean_G r, set to exactly 0 in groups whose rewards are all equal: the float mean of equal values
    can differ from them by one rounding step (e.g. 7 × 0.9 in fp32), and dividing that residue by the
    near-zero std would give every completion of the group a spurious advantage of the same sign."""
    tied = (r == r[:, :1]).all(dim=1, keepdim=True)  # [B, 1]
    return (r - r.mean(dim=1, keepdim=True)).masked_fill(tied, 0.0)  # [B, G]
