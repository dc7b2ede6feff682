"""Format and shaping rewards (mmrl/rewards/shaping.py): hand-worked values, junk, caps, never-raise, controls."""

from __future__ import annotations

import doctest
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrl.rewards import get, shaping
from mmrl.rewards.shaping import (
    TEMPLATES,
    boxed_contents,
    cosine_length,
    format_template,
    overlong,
    repetition,
)

RANGES = {  # name -> (lo, hi, options)
    "format_template": (0.0, 1.0, {}),
    "overlong": (-1.0, 0.0, {"max_len": 10, "buffer": 4}),
    "cosine_length": (-10.0, 2.0, {"max_len": 10}),
    "repetition": (-1.0, 0.0, {}),
}


def test_registered_and_doctests():
    for name in RANGES:
        assert get(name) is getattr(shaping, name)
    assert doctest.testmod(shaping).failed == 0


# ---- format_template --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>because</think><answer>B</answer>", 1.0),
        ("  <think>\nmulti\nline</think>\n\n<answer>\n42\n</answer>\n", 1.0),
        ("<think></think><answer>42</answer>", 1.0),  # empty thought allowed (TON)
        ("<answer>42</answer>", 0.0),
        ("<think>x</think><answer> </answer>", 0.0),
        ("<think>x</think><answer>4</answer> trailing", 0.0),
        ("<think><think>x</think></think><answer>4</answer>", 0.0),  # nested tags
        ("<think>x</think><answer>4</answer><answer>5</answer>", 0.0),
        ("<think>x<answer>3</answer></think><answer>4</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_format_think_answer(text, expected):
    assert format_template([text]) == [expected]


def test_format_other_templates():
    assert format_template(["<answer>4</answer>", "<think>x</think><answer>4</answer>"], template="answer") == [1, 0]
    boxed = [r"so \boxed{42}", r"\boxed{\frac{1}{2}}", r"\boxed{}", r"\boxed{ {x}", "42", r"\boxed{{}}}"]
    assert format_template(boxed, template="boxed") == [1, 1, 0, 0, 0, 1]
    cba = [
        "<caption>a dog</caption><bbox>[[1, 2, 3, 4]]</bbox><answer>dog</answer>",
        "<caption>two</caption>\n<bbox>[1,2,3,4], [5.5, 6, 7, 8]</bbox>\n<answer>2</answer>",
        "<caption></caption><bbox>[[1, 2, 3, 4]]</bbox><answer>dog</answer>",
        "<caption>a dog</caption><bbox>[[1, 2, 3]]</bbox><answer>dog</answer>",
        "<caption>a dog</caption><bbox>none</bbox><answer>dog</answer>",
        "<caption>a dog</caption><answer>dog</answer>",
    ]
    assert format_template(cba, template="caption_bbox_answer") == [1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="think_answer"):
        format_template(["x"], template="xml")


def test_boxed_contents():
    assert boxed_contents(r"\boxed{a}\boxed{b{c}}") == ["a", "b{c}"]
    assert boxed_contents(r"\boxed{" * 10_000) == []


# ---- overlong ---------------------------------------------------------------------------------------------------
def test_overlong_hand_worked():
    # max_len 10, buffer 4: free up to 6 tokens, then -1/4 per token, -1 beyond 10
    ids = [[0] * n for n in (0, 6, 7, 8, 10, 11, 1000)]
    assert overlong(["x"] * 7, completion_ids=ids, max_len=10, buffer=4) == [0, 0, -0.25, -0.5, -1, -1, -1]
    assert overlong(["x"] * 3, completion_ids=[[0] * 10, [0] * 11, None], max_len=10, buffer=0) == [0, -1, None]
    assert overlong(["x", "y"]) == [None, None]  # no completion_ids column: not applicable
    for bad in ({"max_len": 0}, {"buffer": -1}, {"max_len": 4, "buffer": 5}):
        with pytest.raises(ValueError):
            overlong(["x"], completion_ids=[[1]], **bad)


# ---- cosine_length ----------------------------------------------------------------------------------------------
def test_cosine_length_hand_worked():
    comps = ["<answer>4</answer>", "<answer>4</answer>", "<answer>5</answer>", "<answer>5</answer>",
             "<answer>4</answer>", "<answer>4</answer>"]
    ids = [[0] * n for n in (0, 5, 0, 5, 10, 11)]
    # correct: 1 + ½(2 − 1)(1 + cos(πL/10)); wrong: 0 + ½(−10 − 0)(1 + cos(πL/10)); L > 10 → −10
    assert cosine_length(comps, answer=["4"] * 6, completion_ids=ids, max_len=10) == [
        2.0, pytest.approx(1.5), -10.0, pytest.approx(-5.0), pytest.approx(1.0), -10.0]
    assert cosine_length(["<answer>4</answer>"], answer=[{"boxes": []}], completion_ids=[[1]], max_len=10) == [None]
    assert cosine_length(["<answer>4</answer>"], answer=["4"], max_len=10) == [None]
    assert cosine_length(["<answer>B</answer>"], answer=[{"choice": "B"}], completion_ids=[[1] * 10], max_len=10,
                         correctness="mc", correct_start=1.0, correct_end=0.5) == [pytest.approx(0.5)]
    with pytest.raises(KeyError, match="answer_match"):
        cosine_length(["x"], answer=["x"], completion_ids=[[1]], correctness="answer_mtch")


# ---- repetition -------------------------------------------------------------------------------------------------
def test_repetition_hand_worked():
    assert repetition(["a b c d e"]) == [0.0]
    assert repetition(["a a a a a"]) == [pytest.approx(1 / 3 - 1)]  # trigrams: 3, unique 1
    assert repetition(["a b a b a b"], n=2) == [pytest.approx(2 / 5 - 1)]  # bigrams ab,ba,ab,ba,ab
    assert repetition(["", "one two", None]) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        repetition(["x"], n=0)


# ---- caps, junk, robustness -------------------------------------------------------------------------------------
JUNK = ["", "<think>", "<answer></answer>", "\\boxed{" * 20000, "🙂 " * 10000, "<think>" * 10000,
        "<think>x</think><answer>" + "y" * 70000 + "</answer>", "\x00\uffff", "a " * 40000]


def _call(name, comps, opts):
    n = len(comps)
    return get(name)(comps, answer=["4"] * n, completion_ids=[[0] * (i % 15) for i in range(n)], **opts)


@pytest.mark.parametrize("name", sorted(RANGES))
def test_junk_and_huge_inputs_in_range(name):
    lo, hi, opts = RANGES[name]
    big = "<think>" + "so x " * 200_000 + "</think><answer>4</answer>"  # 1 MB
    comps = JUNK + [big, None, 12]
    vals = _call(name, comps, opts)
    assert len(vals) == len(comps) and all(v is not None and math.isfinite(v) and lo <= v <= hi for v in vals)
    for template in TEMPLATES:
        assert all(v == 0.0 for v in format_template([big, None, 12], template=template))


_TAGGY = st.lists(st.sampled_from(["<answer>", "</answer>", "<think>", "</think>", "<caption>", "</caption>", "<bbox>",
                                   "</bbox>", "[1, 2, 3, 4]", "\\boxed{", "{", "}", "x", "4", " ", "\n", "é"]),
                  max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=200), _TAGGY), min_size=1, max_size=4), st.sampled_from(TEMPLATES))
def test_never_raises_and_stays_in_range(texts, template):
    for name, (lo, hi, opts) in RANGES.items():
        opts = {**opts, "template": template} if name == "format_template" else opts
        for v in _call(name, texts, opts):
            assert v is not None and math.isfinite(v) and lo <= v <= hi, (name, texts, v)


# ---- positive controls ------------------------------------------------------------------------------------------
NOISE = ["Let me think 🤔 about 3/4, A, B…", "<b>bold</b> <i>x</i>", "中文 ÄÖÜ \u200b", "\\boxed{7} {}", "<tag>x</tag>",
         "line1\nline2\n\n", "", "a < b > c", "<answe r>", "<|im_start|>"]


def test_positive_controls_format_templates():
    ta = [f"{ws}<think>{n}</think>{ws}<answer>{a}</answer>{ws}" for n in NOISE for a, ws in [("B", ""), ("42", "\n ")]]
    assert format_template(ta) == [1.0] * len(ta)
    ans = [f" <answer>{n.replace('<', '(')} 4</answer>\n" for n in NOISE] * 2
    assert format_template(ans, template="answer") == [1.0] * len(ans)
    bx = [f"{n} so the result is \\boxed{{{v}}} {n}" for n in NOISE for v in ("42", "\\frac{1}{2}")]
    assert format_template(bx, template="boxed") == [1.0] * len(bx)
    cba = [f"<caption>{n or 'x'}</caption>\n<bbox>[[1, 2, 30, 40]{', [5, 6, 7, 8]' * k}]</bbox>\n<answer>{n or 'y'}</answer>"
           for n in NOISE for k in (0, 1)]
    assert format_template(cba, template="caption_bbox_answer") == [1.0] * len(cba)
    assert min(len(ta), len(ans), len(bx), len(cba)) >= 20


def test_positive_controls_length_and_repetition():
    n = 20
    comps = [f"{NOISE[i % 10]}<answer>4</answer>" for i in range(n)]
    assert overlong(comps, completion_ids=[[1] * i for i in range(n)], max_len=40, buffer=10) == [0.0] * n
    assert cosine_length(comps, answer=["4"] * n, completion_ids=[[]] * n, max_len=40) == [2.0] * n
    texts = [" ".join(f"w{i}_{j}" for j in range(50)) + " " + NOISE[i % 10] for i in range(n)]
    assert repetition(texts) == [0.0] * n
