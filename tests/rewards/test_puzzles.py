"""Puzzle, video and consistency rewards (mmrl/rewards/puzzles.py): hand-worked values, junk, caps, controls."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrl.rewards import consistency, get, puzzles
from mmrl.rewards.consistency import conclusion, group_agreement, reasoning_consistency
from mmrl.rewards.puzzles import (
    frame_order,
    jigsaw,
    kendall_tau_partial,
    parse_span,
    patch_fit,
    relations,
    relative_position,
    rotation_exact,
    temporal_iou,
)

RANGES = {  # name -> (lo, hi, a ground truth that applies)
    "rotation_exact": (0.0, 1.0, 90),
    "jigsaw": (0.0, 1.0, {"order": [2, 0, 3, 1]}),
    "relative_position": (0.0, 1.0, {"relation": "top-left"}),
    "patch_fit": (0.0, 1.0, {"choice": "B"}),
    "temporal_iou": (0.0, 1.0, {"span": [10.0, 20.0]}),
    "frame_order": (0.0, 1.0, {"order": ["a", "b", "c", "d"]}),
    "reasoning_consistency": (0.0, 1.0, None),
    "group_agreement": (0.0, 1.0, None),
}
PREFIXES = ["", "  ", "Sure! ", "<think>angles 0, 90, 180? order 3 1 2? left or right 🤔</think>\n",
            "<think><answer>decoy</answer> nested</think>", "ÄÖÜ 中文\u200b ", "<answer>decoy</answer> wait: ",
            "<|im_start|>assistant\n"]
SUFFIXES = ["", "\n", " 🙂", "<|im_end|>", " junk 5 7 left", "</think>"]
NOISE = list(itertools.product(PREFIXES, SUFFIXES))


def wrap(core: str, k: int) -> str:
    pre, suf = NOISE[(k * 5) % len(NOISE)]
    return f"{pre}<answer>{core}</answer>{suf}"


def call(name: str, comps: list, gt):
    kwargs = {"group_size": len(comps)} if name == "group_agreement" else {}
    return get(name)(comps, answer=[gt] * len(comps), **kwargs)


def test_registered_and_doctests():
    for name in RANGES:
        assert get(name) is (getattr(puzzles, name, None) or getattr(consistency, name))
    assert doctest.testmod(puzzles).failed == 0
    assert doctest.testmod(consistency).failed == 0


# ---- rotation ---------------------------------------------------------------------------------------------------
def test_rotation_hand_worked():
    comps = ["<answer>90</answer>", "<answer>90°</answer>", "<answer>90 degrees</answer>", "<answer>450</answer>",
             "<answer>-270</answer>", "<answer>180</answer>", "<answer>0 or 90</answer>", "<answer>90, 90</answer>",
             "<answer>ninety</answer>", "<answer></answer>", "<answer>90.0000001</answer>"]
    assert rotation_exact(comps, answer=[90] * 11) == [1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1]
    assert rotation_exact(["<answer>0</answer>", "<answer>360</answer>"], answer=[{"angle": "0"}] * 2) == [1.0, 1.0]
    assert rotation_exact(["<answer>270</answer>"], answer=["270°"]) == [1.0]
    assert rotation_exact(["x"] * 4, answer=[None, float("nan"), "abc", {"order": []}]) == [None] * 4


# ---- jigsaw / frame order ---------------------------------------------------------------------------------------
def test_jigsaw_hand_worked():
    gt = {"order": [2, 0, 3, 1]}
    comps = ["<answer>2, 0, 3, 1</answer>", "<answer>[2,0,1,3]</answer>", "<answer>2 0</answer>",
             "<answer>2, 0, 3, 1, 9, 9</answer>", "<answer>none</answer>", "<answer></answer>", "2 0 3 1"]
    assert jigsaw(comps, answer=[gt] * 7) == [1.0, 0.5, 0.5, 1.0, 0.0, 0.0, 1.0]
    words = {"order": ["top", "Left", "b"]}
    assert jigsaw(["<answer>top, left, x</answer>"], answer=[words]) == [pytest.approx(2 / 3)]
    assert jigsaw(["x"] * 4, answer=[None, {"order": []}, {"order": [1.5]}, {"order": [True]}]) == [None] * 4


def test_kendall_tau_hand_worked():
    gt = ["a", "b", "c", "d"]
    assert kendall_tau_partial(gt, gt) == 1.0
    assert kendall_tau_partial(gt[::-1], gt) == -1.0
    assert kendall_tau_partial(["b", "a", "c", "d"], gt) == pytest.approx((5 - 1) / 6)
    assert kendall_tau_partial(["a", "b", "c"], gt) == pytest.approx((3 - 3) / 6)  # d missing: 3 pairs discordant
    assert kendall_tau_partial([], gt) == -1.0
    assert kendall_tau_partial(["a", "a", "b", "c", "d"], gt) == 1.0  # first occurrence counts


def test_frame_order_hand_worked():
    gt = {"order": [3, 1, 2]}
    comps = ["<answer>3, 1, 2</answer>", "<answer>1, 3, 2</answer>", "<answer>2 1 3</answer>", "<answer>x</answer>"]
    assert frame_order(comps, answer=[gt] * 4) == [1.0, pytest.approx(2 / 3), 0.0, 0.0]
    assert frame_order(["<answer>1</answer>", "<answer>2</answer>"], answer=[{"order": [1]}] * 2) == [1.0, 0.0]
    assert frame_order(["x"] * 2, answer=[{"order": [1, 1]}, "1,2"]) == [None, None]


# ---- relative position ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,rels",
    [("top-left", {"top-left"}), ("Upper Left corner", {"top-left"}), ("lower_right", {"bottom-right"}),
     ("to the left of", {"left"}), ("beneath the table", {"below"}), ("on top", {"above"}), ("bright", set()),
     ("left or right", {"left", "right"}), ("", set()), ("in front", {"front"}), ("middle", {"center"})],
)
def test_relations(text, rels):
    assert relations(text) == rels


def test_relative_position_hand_worked():
    comps = ["<answer>upper left</answer>", "<answer>Top-Left.</answer>", "<answer>top right</answer>",
             "<answer>left</answer>", "<answer>top-left or bottom-right</answer>", "<answer></answer>"]
    assert relative_position(comps, answer=[{"relation": "top_left"}] * 6) == [1, 1, 0, 0, 0, 0]
    assert relative_position(["<answer>under it</answer>"], answer=["below"]) == [1.0]
    assert relative_position(["x"] * 3, answer=[None, "left or right", "nowhere"]) == [None] * 3


# ---- patch fit --------------------------------------------------------------------------------------------------
def test_patch_fit_hand_worked():
    comps = ["<answer>B</answer>", "<answer>(b)</answer>", "<answer>2</answer>", "<answer>patch 2</answer>",
             "<answer>A</answer>", "<answer>1 or 2</answer>", "<answer></answer>", "<answer>two</answer>"]
    assert patch_fit(comps, answer=[{"choice": "B"}] * 8) == [1, 1, 1, 1, 0, 0, 0, 0]
    assert patch_fit(["<answer>1</answer>", "<answer>B</answer>"], answer=[{"choice": "B"}] * 2, index_base=0) == [1, 1]
    assert patch_fit(["<answer>3</answer>", "<answer>C</answer>"], answer=[3, 3]) == [1.0, 1.0]
    assert patch_fit(["x"] * 3, answer=[None, {"choice": "??"}, {"index": True}]) == [None] * 3


# ---- temporal IoU -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "s,span",
    [("[12.5, 20]", (12.5, 20.0)), ("12.5-20 s", (12.5, 20.0)), ("from 3 to 4 seconds", (3.0, 4.0)),
     ("0:10 - 1:05", (10.0, 65.0)), ("00:01:00 to 00:01:30", (60.0, 90.0)), ("7", None), ("", None)],
)
def test_parse_span(s, span):
    assert parse_span(s) == span


def test_temporal_iou_hand_worked():
    gt = {"span": [10, 20]}
    comps = ["<answer>[10, 20]</answer>", "<answer>15 - 25 s</answer>", "<answer>[12, 14]</answer>",
             "<answer>[30, 40]</answer>", "<answer>[20, 10]</answer>", "<answer>15</answer>", "<answer>[15, 15]</answer>"]
    assert temporal_iou(comps, answer=[gt] * 7) == [1.0, pytest.approx(5 / 15), 0.2, 0.0, 0.0, 0.0, 0.0]
    assert temporal_iou(["<answer>[5, 5]</answer>"], answer=[{"span": [5, 5]}]) == [1.0]
    bad = [None, {"span": [1]}, {"span": [2, 1]}, {"span": [0, float("nan")]}, {"span": ["a", 1]}]
    assert temporal_iou(["x"] * 5, answer=bad) == [None] * 5


# ---- consistency ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "think,c",
    [("so the answer is B.", "B"), ("The answer is 3.5. Check: fine.", "3.5"), ("Answer: (C)", "(C)"),
     ("thus, 42", "42"), ("no conclusion here", None), ("So the answer is B. Hmm, actually the answer is C.", "C")],
)
def test_conclusion(think, c):
    assert conclusion(think) == c


def test_reasoning_consistency_hand_worked():
    comps = [
        "<think>Option B fits, so the answer is B.</think><answer>B</answer>",
        "<think>so the answer is (B)</think> <answer>B. dog</answer>",
        "<think>Thus 0.50</think><answer>1/2</answer>",
        "<think>so it is the red car</think><answer>red car</answer>",
        "<think>so the answer is B</think><answer>C</answer>",
        "<think>therefore 12</think><answer>13</answer>",
        "<think>I am unsure</think><answer>B</answer>",  # no conclusion
        "<answer>B</answer>",  # no think
        "<think>so B</think>",  # no answer
        "<think>so B</think><answer></answer>",
    ]
    assert reasoning_consistency(comps) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, None, None, None, None]


def test_group_agreement_hand_worked():
    comps = ["<answer>4</answer>", "<answer>4.0</answer>", "<answer>5</answer>", "no answer",
             "<answer>B</answer>", "<answer>(B)</answer>", "<answer>C</answer>", "<answer>C</answer>"]
    assert group_agreement(comps, group_size=4) == [1, 1, 0, 0, 1, 1, 1, 1]  # second group: a tie, both modes count
    # p: {4, 4.0} agree; q: B twice beats 5 and C; r: a lone answer is its own majority
    assert group_agreement(comps, prompt_index=list("ppqqqqqr")) == [1, 1, 0, 0, 1, 1, 0, 1]
    assert group_agreement(["x", "y"], group_size=2) == [0.0, 0.0]
    with pytest.raises(ValueError, match="group_size"):
        group_agreement(comps)


# ---- caps, junk, robustness -------------------------------------------------------------------------------------
JUNK = ["", "<answer>", "</answer><answer>", "<think><think><think>", "\x00\uffff", "🙂" * 100,
        "<answer>" + "9" * 70000 + "</answer>", "<answer>" + "1:" * 30000 + "</answer>",
        "<think>" + "so " * 30000 + "</think><answer>x</answer>", "<answer>" + "left " * 20000 + "</answer>",
        "<answer>" + " " * 60000 + "5</answer>", "<answer>nan, inf, -1e999</answer>", "<answer>[1e308, 1e309]</answer>"]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_junk_and_huge_inputs_in_range(name):
    lo, hi, gt = RANGES[name]
    big = "<think>" + "so x " * 100_000 + "</think><answer>" + "1 2 " * 130_000 + "</answer>"  # ~1.5 MB
    comps = JUNK + [big, None, 7]
    vals = call(name, comps, gt)
    assert len(vals) == len(comps)
    for v in vals:
        assert v is None or (math.isfinite(v) and lo <= v <= hi)
    if name not in ("reasoning_consistency",):
        assert all(v is not None for v in vals)


_TAGGY = st.lists(st.sampled_from(["<answer>", "</answer>", "<think>", "</think>", "so ", "the answer is ", "B",
                                   "(C)", "90", "°", "1, 2", "3", "-", ":", "12.5", "left", "upper", " ", "\n", "é"]),
                  max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=200), _TAGGY), min_size=1, max_size=4))
def test_never_raises_and_stays_in_range(texts):
    for name, (lo, hi, gt) in RANGES.items():
        for v in call(name, texts, gt):
            assert v is None or (math.isfinite(v) and lo <= v <= hi), (name, texts, v)


# ---- positive controls ------------------------------------------------------------------------------------------
def _controls():
    rot = [(f"{a}{unit}", a % 360) for a in (0, 90, 180, 270, -90) for unit in ("", "°", " degrees", " deg")]
    jig = [(", ".join(map(str, p)), {"order": list(p)}) for p in itertools.islice(itertools.permutations(range(4)), 20)]
    jig += [(str(list(p)), {"order": list(p)}) for p in itertools.islice(itertools.permutations(range(9)), 5)]
    rel_forms = {"top-left": ["top-left", "upper left", "Top Left"], "bottom-right": ["bottom_right", "lower right"],
                 "left": ["left", "to the left"], "above": ["above", "on top"], "below": ["below", "beneath", "under"],
                 "right": ["right", "to the right of it"], "top-right": ["upper-right", "top right"],
                 "bottom-left": ["lower left", "bottom-left corner"], "behind": ["behind"], "front": ["in front"],
                 "center": ["center", "in the middle"]}
    rel = [(f, {"relation": k}) for k, fs in rel_forms.items() for f in fs]
    pf = [(f.format(c), {"choice": c}) for c in "ABCD" for f in ("{}", "({})", "{}.", "Answer: {}")]
    pf += [(f"patch {i}", {"index": i}) for i in range(1, 6)]
    tiou = [(f.format(a, b), {"span": [a, b]}) for a, b in [(0, 1), (2.5, 7), (10, 20), (0.1, 0.2), (30, 95)]
            for f in ("[{}, {}]", "{}-{} s", "from {} to {} seconds", "{} - {}")]
    fo = [(" ".join(map(str, p)), {"order": list(p)}) for p in itertools.islice(itertools.permutations(range(1, 6)), 20)]
    fo += [(", ".join(p), {"order": list(p)}) for p in itertools.islice(itertools.permutations("abcd"), 5)]
    return {"rotation_exact": rot, "jigsaw": jig, "relative_position": rel, "patch_fit": pf, "temporal_iou": tiou,
            "frame_order": fo}


@pytest.mark.parametrize("name", ["rotation_exact", "jigsaw", "relative_position", "patch_fit", "temporal_iou",
                                  "frame_order"])
def test_positive_controls_score_the_maximum(name):
    cases = _controls()[name]
    assert len(cases) >= 20
    comps = [wrap(core, k) for k, (core, _) in enumerate(cases)]
    vals = get(name)(comps, answer=[gt for _, gt in cases])
    assert [(c, v) for c, v in zip(comps, vals) if v != 1.0] == []


def test_positive_controls_consistency_and_agreement():
    pairs = [("B", "B"), ("(C)", "C"), ("42", "42"), ("3.5", "3.50"), ("1/2", "0.5"), ("the red car", "red car"),
             ("left", "Left"), ("Paris", "paris"), ("D", "D. fish"), ("7 apples", "7")] * 2
    comps = [f"{pre}<think>Work… {i} steps. So the answer is {c}.</think>\n<answer>{a}</answer>{suf}"
             for i, ((c, a), (pre, suf)) in enumerate(zip(pairs, NOISE))]
    assert reasoning_consistency(comps) == [1.0] * len(comps)
    groups = [wrap(a, k) for k, (_, a) in enumerate(pairs) for _ in range(3)] + ["junk"] * 0
    assert group_agreement(groups, group_size=3) == [1.0] * len(groups)
