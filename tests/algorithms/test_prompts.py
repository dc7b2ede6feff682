"""Prompt weightings (variance-aware, difficulty peak) and the weighted draw, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.algorithms import PROMPT_WEIGHTS
from mmrl.algorithms.prompts import group_accuracy, mix_count, weighted_draw

NAN = float("nan")


def test_registered():
    assert PROMPT_WEIGHTS.names() == ["difficulty_peak", "uniform", "variance"]


def test_variance_weights():
    acc = torch.tensor([0.0, 0.25, 0.5, 1.0, NAN], dtype=torch.float64)
    w = PROMPT_WEIGHTS.get("variance")(acc)
    torch.testing.assert_close(w, torch.tensor([1e-3, 0.1875, 0.25, 1e-3, 0.25], dtype=torch.float64))


def test_difficulty_peak_weights():
    acc = torch.tensor([0.5, 0.3, 1.0, NAN], dtype=torch.float64)
    w = PROMPT_WEIGHTS.get("difficulty_peak")(acc, width=0.2)
    expected = [1.0, math.exp(-0.04 / 0.08), max(math.exp(-0.25 / 0.08), 1e-3), 1.0]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))


def test_weighted_draw_is_distinct_excludes_and_follows_weights():
    w = torch.tensor([1.0, 0.0, 100.0, 1.0])
    picks = weighted_draw(w, 2, torch.Generator().manual_seed(0), exclude={3})
    assert len(picks) == 2 and 2 in picks and 1 not in picks and 3 not in picks
    assert weighted_draw(w, 5, torch.Generator(), exclude=set()) != []  # capped at the positive weights
    assert len(weighted_draw(w, 5, torch.Generator(), exclude=set())) == 3
    assert weighted_draw(w, 0, torch.Generator(), exclude=set()) == []


def test_group_accuracy_and_mix():
    assert group_accuracy(torch.tensor([1.1, 0.1, 1.0, 0.0, 0.0, 0.0]), 3, 1.0) == pytest.approx([2 / 3, 0.0])
    assert mix_count(32, 0.5) == 16 and mix_count(5, 0.5) == 3 and mix_count(4, 0.0) == 0
