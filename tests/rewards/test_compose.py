"""Weighted composition: totals, None handling, validation and metrics."""

from __future__ import annotations

import doctest
import functools
import math

import pytest

import mmrl.rewards.compose as compose
from mmrl.rewards import get
from mmrl.rewards.compose import RewardTerm, score, summarize


def const(values):
    return lambda completions, **kwargs: list(values)


def test_weighted_sum_skips_none():
    terms = [
        RewardTerm("a", const([1.0, None, 0.5])),
        RewardTerm("b", const([0.0, 2.0, None]), weight=0.5),
        RewardTerm("c", const([None, None, None]), weight=10.0),
    ]
    totals, comps = score(terms, ["x", "y", "z"], {})
    assert totals == [1.0, 1.0, 0.5]
    assert comps == {"a": [1.0, None, 0.5], "b": [0.0, 2.0, None], "c": [None, None, None]}


def test_builtins_end_to_end_with_kwargs_and_columns():
    completions = ["<think>t</think><answer>[0, 0, 10, 10]</answer>", "<answer>[0, 0, 5, 10]</answer>", "junk"]
    columns = {"answer": [{"boxes": [[0, 0, 10, 10]]}] * 3, "geometry": [None] * 3, "task": ["grounding"] * 3}
    terms = [
        RewardTerm("format", get("format"), weight=0.5, kwargs={"require_think": True}),
        RewardTerm("iou", get("iou")),
        RewardTerm("answer_match", get("answer_match")),
    ]
    totals, comps = score(terms, completions, columns)
    assert comps["format"] == [1.0, 0.0, 0.0]
    assert comps["iou"] == pytest.approx([1.0, 0.5, 0.0])
    assert comps["answer_match"] == [None, None, None]
    assert totals == pytest.approx([1.5, 0.5, 0.0])
    m = summarize(comps, totals)
    assert "reward/answer_match/mean" not in m
    assert m["reward/iou/mean"] == pytest.approx(0.5)
    assert m["reward/format/mean"] == pytest.approx(1 / 3)
    assert m["reward/total/mean"] == pytest.approx(2 / 3)
    mean = 2 / 3
    assert m["reward/total/std"] == pytest.approx(math.sqrt(((1.5 - mean) ** 2 + (0.5 - mean) ** 2 + mean**2) / 3))


def test_partial_and_numpy_values():
    np = pytest.importorskip("numpy")
    fn = functools.partial(lambda c, *, k, **kw: [np.float32(k)] * len(c), k=2)
    totals, _ = score([RewardTerm("np", fn, weight=3)], ["a"], {})
    assert totals == [6.0]
    totals, comps = score([RewardTerm("arr", lambda c, **k: np.array([0.5, 1.0]))], ["a", "b"], {})
    assert totals == [0.5, 1.0] and comps["arr"] == [0.5, 1.0]


@pytest.mark.parametrize(
    "values,match",
    [
        ([1.0], "returned 1 values for 2 completions"),
        ([1.0, 2.0, 3.0], "returned 3 values"),
        ([1.0, float("nan")], "completion 1"),
        ([float("inf"), 0.0], "completion 0"),
        ([1.0, "1"], "finite number"),
        ([True, 1.0], "finite number"),
    ],
)
def test_validation_names_the_reward(values, match):
    with pytest.raises(ValueError, match=match) as err:
        score([RewardTerm("ok", const([0.0, 0.0])), RewardTerm("bad", const(values))], ["a", "b"], {})
    assert "reward 'bad'" in str(err.value)


def test_not_a_list_and_kwarg_clash():
    with pytest.raises(ValueError, match="'bad' returned a str"):
        score([RewardTerm("bad", lambda c, **k: "10")], ["a", "b"], {})
    with pytest.raises(ValueError, match="'bad' returned a float"):
        score([RewardTerm("bad", lambda c, **k: 1.0)], ["a"], {})
    term = RewardTerm("fmt", get("format"), kwargs={"answer": 1})
    with pytest.raises(ValueError, match="'fmt'.*clash"):
        score([term], ["a"], {"answer": ["x"]})


def test_term_validation():
    with pytest.raises(TypeError, match="not callable"):
        RewardTerm("x", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        RewardTerm("x", const([]), weight=float("nan"))
    for bad in ["", "total", "a/b"]:
        with pytest.raises(ValueError, match="name"):
            RewardTerm(bad, const([]))
    with pytest.raises(ValueError, match="unique"):
        score([RewardTerm("a", const([1.0])), RewardTerm("a", const([1.0]))], ["x"], {})
    a, b = RewardTerm("a", const([])), RewardTerm("b", const([]))
    assert a.kwargs == {} and a.kwargs is not b.kwargs


def test_empty_batch():
    totals, comps = score([RewardTerm("a", const([]))], [], {})
    assert totals == [] and comps == {"a": []}
    assert summarize(comps, totals) == {}


def test_doctests():
    assert doctest.testmod(compose).failed == 0


def test_parse_caps_and_failures_become_metrics():
    from mmrl.rewards import get  # importing the package registers the library

    terms = [RewardTerm("det", get("det_f1")), RewardTerm("fmt", get("format"))]
    answer = {"boxes": [[0, 0, 10, 10]]}
    completions = ["<answer>[0, 0, 10, 10]</answer>", "no box at all", "<answer>" + "[1, 1, 2, 2] " * 500 + "</answer>"]
    stats: dict = {}
    totals, components = score(terms, completions, {"answer": [answer] * 3}, stats=stats)
    assert components["det"][0] == 1.0 and components["det"][1] == 0.0
    assert set(stats) == {"det"}  # `format` parses nothing, so it reports nothing
    metrics = summarize(components, totals, stats)
    assert metrics["reward/det/parse_fail"] == 1 / 3 and metrics["reward/det/truncated"] == 1 / 3


def test_gate_on_another_term():
    acc = RewardTerm("acc", const([1.0, 0.0, None]))
    bonus = RewardTerm("bonus", const([0.5, 0.5, 0.5]), gate="acc")  # "only if correct"
    stats = {}
    totals, parts = score([acc, bonus], ["a", "b", "c"], {}, stats=stats)
    assert totals == [1.5, 0.0, 0.0]
    assert parts["bonus"] == [0.5, 0.5, 0.5]  # components keep what the reward said
    assert stats["bonus"]["gated"] == pytest.approx(2 / 3)


def test_gate_mode_and_threshold():
    fmt = RewardTerm("fmt", const([1.0, 0.0, 0.6]), mode="gate", gate_min=0.5, gate_penalty=-1.0)
    acc = RewardTerm("acc", const([1.0, 1.0, 0.0]), weight=2.0)
    totals, parts = score([fmt, acc], ["a", "b", "c"], {})
    assert totals == [2.0, -1.0, 0.0]  # the gate adds nothing itself; where it fails the total is the penalty
    assert parts["fmt"] == [1.0, 0.0, 0.6]


def test_gate_validation():
    with pytest.raises(ValueError, match="not a reward of this run"):
        score([RewardTerm("a", const([1.0]), gate="missing")], ["x"], {})
    with pytest.raises(ValueError, match="cannot gate itself"):
        RewardTerm("a", const([1.0]), gate="a")
    with pytest.raises(ValueError, match="mode"):
        RewardTerm("a", const([1.0]), mode="mul")
