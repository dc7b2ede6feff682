"""Prompt weighting: which training prompts a step draws, from what earlier steps saw of them.

A weighting maps each prompt's last observed group accuracy p̂ (NaN = never seen) to a sampling weight; the
trainer draws a share `prompt_weight_mix` of each batch by weight (without replacement) and the rest from the
uniform per-epoch stream. Accuracies are updated after every scored group and saved in checkpoints.
"""

from __future__ import annotations

import math

import torch

from mmrl.registry import Registry

PROMPT_WEIGHTS: Registry = Registry("prompt weighting")


@PROMPT_WEIGHTS.register("uniform")
def uniform(acc: torch.Tensor, **_) -> torch.Tensor:
    """Every prompt alike (the default: the uniform stream only)."""
    return torch.ones_like(acc)


@PROMPT_WEIGHTS.register("variance")
def variance(acc: torch.Tensor, *, floor: float = 1e-3, **_) -> torch.Tensor:
    """Variance-aware sampling (MMR1, arXiv:2509.21268; its outcome-variance term): w = p̂(1 − p̂), the
    reward variance that lower-bounds the policy-gradient magnitude; unseen prompts get the maximum ¼. A small
    floor keeps solved and hopeless prompts reachable."""
    p = torch.where(acc.isnan(), torch.full_like(acc, 0.5), acc)
    return (p * (1 - p)).clamp(min=floor)


@PROMPT_WEIGHTS.register("difficulty_peak")
def difficulty_peak(acc: torch.Tensor, *, centre: float = 0.5, width: float = 0.2, floor: float = 1e-3,
                    **_) -> torch.Tensor:
    """A curriculum that favours medium difficulty (PC-GRPO's difficulty-aware sampling, arXiv:2512.14944;
    the Gaussian shape and width are ours): w = exp(−(p̂ − centre)² / (2·width²)); unseen prompts count as
    `centre`."""
    p = torch.where(acc.isnan(), torch.full_like(acc, centre), acc)
    return torch.exp(-((p - centre) ** 2) / (2 * width**2)).clamp(min=floor)


def weighted_draw(weights: torch.Tensor, k: int, generator: torch.Generator, exclude: set[int]) -> list[int]:
    """k distinct indices drawn ∝ weights, none of them in `exclude`."""
    w = weights.clone().double()
    if exclude:
        w[list(exclude)] = 0.0
    k = min(k, int((w > 0).sum()))
    if k <= 0:
        return []
    return torch.multinomial(w, k, replacement=False, generator=generator).tolist()


def group_accuracy(totals: torch.Tensor, group_size: int, threshold: float) -> list[float]:
    """Share of each group's completions whose total reward reaches `threshold`."""
    r = totals.view(-1, group_size)
    return [float(x) for x in (r >= threshold).float().mean(dim=1)]


def mix_count(size: int, mix: float) -> int:
    """How many of `size` prompts are drawn by weight."""
    return int(math.floor(size * mix + 0.5))
