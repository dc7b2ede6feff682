"""Built-in rewards: hand-worked values, malformed text, geometry, and a never-raise property."""

from __future__ import annotations

import doctest
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmrl.rewards.builtin as builtin
from mmrl.perception.geometry import Geometry
from mmrl.rewards import get
from mmrl.rewards.builtin import answer_match, box_iou, format_reward, iou


# ---- box_iou --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),  # half overlap along x
        ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),  # contained
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([0.5, 0.5, 1.5, 2.5], [1, 1, 2, 2], 0.5 / 2.5),
    ],
)
def test_box_iou_hand_worked(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


@pytest.mark.parametrize(
    "bad",
    [[10, 0, 0, 10], [0, 10, 10, 0], [5, 5, 5, 10], [0, 0, 10, 0], [0, 0, float("nan"), 10], [0, 0, float("inf"), 10],
     [1, 2, 3], "abcd", None, [0, 0, "x", 1]],
)
def test_box_iou_degenerate_inverted_or_bad(bad):
    assert box_iou(bad, [0, 0, 10, 10]) == 0.0
    assert box_iou([0, 0, 10, 10], bad) == 0.0


def test_box_iou_huge_values_are_invalid_boxes():
    """A box whose area overflows a float is invalid (IoU 0), not inf / inf = NaN; a large finite one is fine."""
    assert box_iou([-1e308, -1e308, 1e308, 1e308], [0, 0, 1, 1]) == 0.0
    assert box_iou([0, 0, 1e300, 1e300], [0, 0, 1e300, 1e300]) == 0.0
    assert box_iou([0, 0, 1e150, 1e150], [0, 0, 1e150, 5e149]) == pytest.approx(0.5)


# ---- format ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,plain,think",
    [
        ("<think>because</think><answer>B</answer>", 1.0, 1.0),
        ("  <think>\nmulti\nline</think>\n\n<answer>\n42\n</answer>\n", 1.0, 1.0),
        ("<answer>42</answer>", 1.0, 0.0),
        ("<think></think><answer>42</answer>", 1.0, 0.0),
        ("<answer>  </answer>", 0.0, 0.0),
        ("<answer></answer>", 0.0, 0.0),
        ("prefix <answer>42</answer>", 0.0, 0.0),
        ("<answer>42</answer> suffix", 0.0, 0.0),
        ("<answer>1</answer><answer>2</answer>", 0.0, 0.0),
        ("<think>a</think><think>b</think><answer>2</answer>", 0.0, 0.0),
        ("<answer>x<think>y</think></answer>", 0.0, 0.0),
        ("<think>unclosed <answer>2</answer>", 0.0, 0.0),
        ("<answer>x < y and y > z</answer>", 1.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_format(text, plain, think):
    assert format_reward([text]) == [plain]
    assert format_reward([text], require_think=True) == [think]


# ---- answer_match ---------------------------------------------------------------------------------------------
def test_answer_match():
    completions = [
        "<answer>  The   Eiffel\nTOWER </answer>",
        "<answer>B</answer>",
        "<answer>b</answer>",
        "<answer>a</answer><answer>C</answer>",
        "<answer></answer>",
        "no answer block",
        "<answer>3</answer>",
        "<answer>3</answer>",
        "<answer>B</answer>",
    ]
    answers = ["the eiffel tower", "b", {"choice": "B"}, "c", "", "x", 3, {"boxes": [[0, 0, 1, 1]]}, None]
    assert answer_match(completions, answer=answers) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, None, None]


def test_answer_match_without_answer_column_is_not_applicable():
    assert answer_match(["<answer>a</answer>"]) == [None]
    assert answer_match(["<answer>a</answer>"], task=["x"], samples=[None]) == [None]


def test_wrong_column_length_is_a_caller_error():
    with pytest.raises(ValueError, match="answer"):
        answer_match(["a", "b"], answer=["a"])


# ---- iou ------------------------------------------------------------------------------------------------------
GT = {"boxes": [[0, 0, 10, 10], [20, 20, 40, 40]]}


def test_iou_hand_worked_and_first_box_only():
    completions = [
        "<answer>[0, 0, 10, 10]</answer>",  # 1.0 with the first gt
        "<answer>[20, 20, 30, 40]</answer>",  # 200 / 400 with the second gt
        "<answer>[5, 0, 15, 10] [20, 20, 40, 40]</answer>",  # only the first predicted box counts: 50/150
        '<think>[0,0,10,10]</think><answer>{"bbox_2d": [0, 0, 5, 10]}</answer>',  # answer block wins: 0.5
        "the box is [0, 0, 10, 10]",  # no <answer> block: fall back to the whole text
        "<think>[0,0,10,10]</think><answer>none</answer>",  # answer block without a box: 0
        "<answer>[10, 10, 0, 0]</answer>",  # inverted
        "<answer>[3, 3, 3, 9]</answer>",  # degenerate
        "<answer>[nan, 0, 10, 10]</answer>",
        "<answer>[1e400, 0, 10, 10]</answer>",
        "",
    ]
    got = iou(completions, answer=[GT] * len(completions))
    assert got == pytest.approx([1.0, 0.5, 1 / 3, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_iou_not_applicable():
    completions = ["<answer>[0,0,1,1]</answer>"] * 4
    assert iou(completions, answer=["B", None, {"choice": "A"}, {"boxes": []}]) == [None, None, None, 0.0]
    assert iou(completions[:1]) == [None]


@pytest.mark.parametrize("convention", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "pixel", "norm"])
def test_iou_uses_geometry(convention):
    # 97x61 original, 84x56 after Qwen2-VL's resize (max_pixels=224*224)
    geo = Geometry(97, 61, 84, 56, convention)
    gt_box = [10, 6, 60, 50]
    model_box = geo.from_original([gt_box])[0]
    text = f"<answer>{model_box}</answer>"
    [with_geo] = iou([text], answer=[{"boxes": [gt_box]}], geometry=[geo])
    assert with_geo > 0.95  # only quantisation error remains
    if convention != "pixel":  # without geometry the model's numbers are taken as original pixels
        [without] = iou([text], answer=[{"boxes": [gt_box]}], geometry=[None])
        assert without < 0.9


def test_builtins_registered():
    assert get("format") is format_reward and get("answer_match") is answer_match and get("iou") is iou


def test_kwargs_through_partial():
    import functools

    fn = functools.partial(get("format"), require_think=True)
    assert fn(["<answer>1</answer>"], answer=["1"], task=["math"], geometry=[None], samples=[None]) == [0.0]


# ---- never raise, stay in range -------------------------------------------------------------------------------
TAGS = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "[", "]", ",", " ", "1", "-2.5", "1e999",
                        "nan", '{"bbox_2d": ', "}", "(3,4)", "\n", "B"])
TEXT = st.lists(TAGS | st.text(max_size=8), max_size=25).map("".join) | st.text(max_size=200)
ANSWER = st.one_of(
    st.none(), st.text(max_size=10), st.integers(), st.floats(),
    st.fixed_dictionaries({"boxes": st.lists(st.lists(st.floats() | st.integers(), max_size=5), max_size=3)}),
)
GEOM = st.none() | st.builds(
    Geometry, st.integers(1, 4000), st.integers(1, 4000), st.integers(1, 4000), st.integers(1, 4000),
    st.sampled_from(["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "pixel", "norm"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TEXT, ANSWER, GEOM), min_size=1, max_size=3), st.booleans())
def test_builtins_never_raise_and_stay_in_range(rows, require_think):
    texts, answers, geoms = (list(c) for c in zip(*rows))
    cols = dict(answer=answers, geometry=geoms, task=["t"] * len(texts), samples=[None] * len(texts))
    for values in (
        format_reward(texts, require_think=require_think, **cols),
        answer_match(texts, **cols),
        iou(texts, **cols),
    ):
        assert len(values) == len(texts)
        assert all(v is None or (math.isfinite(v) and 0.0 <= v <= 1.0) for v in values)


def test_doctests():
    assert doctest.testmod(builtin).failed == 0
