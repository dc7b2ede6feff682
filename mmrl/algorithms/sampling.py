"""Group filters for dynamic sampling: which prompt groups enter the update, decided on the whole batch.

A filter maps the group rewards [B, G] to a keep mask [B]; the trainer refills dropped groups with fresh
prompts up to `algorithm.max_gen_batches` rollout batches per step (DAPO's dynamic sampling) and counts the rest.
"""

from __future__ import annotations

import torch

from mmrl.algorithms.advantages import tie_mask
from mmrl.registry import Registry

GROUP_FILTERS: Registry = Registry("group filter")


@GROUP_FILTERS.register("none")
def keep_all(r: torch.Tensor, **_) -> torch.Tensor:
    """Every group is kept."""
    return torch.ones(r.shape[0], dtype=torch.bool, device=r.device)


@GROUP_FILTERS.register("nonzero_std")
def nonzero_std(r: torch.Tensor, **_) -> torch.Tensor:
    """Keep a group iff its rewards are not all equal (it has a learning signal): DAPO's dynamic sampling
    (arXiv:2503.14476)."""
    return ~tie_mask(r).squeeze(1)


@GROUP_FILTERS.register("drop_all_correct")
def drop_all_correct(r: torch.Tensor, *, correct_threshold: float = 1.0, **_) -> torch.Tensor:
    """Drop only groups where every completion is correct (r ≥ threshold); all-wrong groups stay, since a
    virtual-max baseline gives them a signal (NGRPO)."""
    return ~(r >= correct_threshold).all(dim=1)


def keep_groups(rewards: torch.Tensor, group_size: int, name: str, **options) -> torch.Tensor:
    """The keep mask [B] of filter `name` for rewards [B·G]."""
    return GROUP_FILTERS.get(name)(rewards.view(-1, group_size), **options)
