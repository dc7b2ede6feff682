"""The replay buffer: which groups it keeps, how it draws, how replayed groups join a batch."""

from __future__ import annotations

import pytest
import torch

from mmrl.rollout.replay import ReplayBuffer, merge
from mmrl.rollout.types import Rollouts


def _ro(advantages: list[float], group: int, width: int = 3, fill: float = -0.5) -> Rollouts:
    n = len(advantages)
    ro = Rollouts(prompt_index=torch.arange(n // group).repeat_interleave(group),
                  completion_ids=torch.arange(n * width).view(n, width), completion_mask=torch.ones(n, width, dtype=torch.long),
                  sampling_logprobs=torch.full((n, width), fill), texts=[f"t{i}" for i in range(n)],
                  finish_reasons=["eos"] * n, group_size=group)
    ro.rewards = {"r": [float(i) for i in range(n)]}
    ro.total = torch.arange(n, dtype=torch.float32)
    ro.advantages = torch.tensor(advantages)
    return ro


def test_keeps_only_groups_with_signal_fifo():
    buf = ReplayBuffer(capacity=2)
    assert buf.add(["p0", "p1", "p2"], _ro([1.0, -1.0, 0.0, 0.0, 0.5, -0.5], 2)) == 2  # the tied group is skipped
    assert [g.prompt for g in buf.groups] == ["p0", "p2"] and [g.weight for g in buf.groups] == [1.0, 0.5]
    buf.add(["q0"], _ro([2.0, -2.0], 2))
    assert [g.prompt for g in buf.groups] == ["p2", "q0"]  # capacity 2: the oldest left
    assert buf.groups[1].rollouts.texts == ["t0", "t1"] and buf.groups[1].rollouts.prompt_index.tolist() == [0, 0]


def test_sample_is_weighted_without_replacement_and_seeded():
    buf = ReplayBuffer(capacity=10, alpha=1.0)
    buf.add([f"p{i}" for i in range(3)], _ro([1e-6, -1e-6, 1.0, -1.0, 1e-6, -1e-6], 2))
    picks = [buf.sample(1, torch.Generator().manual_seed(s))[0].prompt for s in range(50)]
    assert picks.count("p1") >= 45  # weight 1 against two of 1e-6
    two = buf.sample(5, torch.Generator().manual_seed(0))
    assert len(two) == 3 and len({g.prompt for g in two}) == 3
    a = [g.prompt for g in buf.sample(2, torch.Generator().manual_seed(7))]
    assert a == [g.prompt for g in buf.sample(2, torch.Generator().manual_seed(7))]
    assert ReplayBuffer(0).sample(3, torch.Generator()) == []


def test_merge_appends_replayed_groups_with_their_advantages_and_logprobs():
    buf = ReplayBuffer(capacity=4)
    buf.add(["old"], _ro([0.7, -0.7], 2, width=5, fill=-2.0))
    fresh = _ro([1.0, -1.0, 0.3, -0.3], 2)
    prompts, ro, old = merge(["a", "b"], fresh, torch.full((4, 3), -0.1), buf.sample(1, torch.Generator()))
    assert prompts == ["a", "b", "old"] and ro.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert ro.advantages.tolist() == pytest.approx([1.0, -1.0, 0.3, -0.3, 0.7, -0.7])
    assert old.shape == (6, 5) and torch.all(old[:4, :3] == -0.1) and torch.all(old[4:] == -2.0)
    assert ro.completion_ids.shape == (6, 5) and ro.rewards["r"] == [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]
