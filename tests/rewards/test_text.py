"""Accuracy rewards (mmrl/rewards/text.py): hand-worked values, junk, caps, never-raise, positive controls."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmrl.rewards.text as text_mod
import mmrl.rewards.text_parsing as text_parsing
from mmrl.rewards import get
from mmrl.rewards.text import (
    cls_label,
    exact,
    levenshtein,
    mc,
    multi_select,
    numeric,
    ocr,
    token_f1,
)
from mmrl.rewards.text_parsing import parse_letter, parse_numbers

RANGES = {  # name -> (lo, hi, a ground truth that applies)
    "mc": (0.0, 1.0, {"choice": "B", "options": ["cat", "dog", "bird"]}),
    "multi_select": (0.0, 1.0, {"choices": ["A", "C"]}),
    "numeric": (0.0, 1.0, 3.5),
    "exact": (0.0, 1.0, "Eiffel Tower"),
    "cls_label": (0.0, 1.0, {"label": "cat", "synonyms": ["kitty"]}),
    "ocr": (0.0, 1.0, "hello world"),
    "token_f1": (0.0, 1.0, "the red car"),
}
PREFIXES = [
    "", "   ", "Sure! ", "<think>Options A, B, C; maybe 42 or 3/4… 🤔</think>\n",
    "<think><answer>decoy</answer> nested <think>x</think></think>", "ÄÖÜ 中文\u200b ",
    "<answer>wrong decoy</answer> wait, reconsider: ", '```json\n{"x": 1}\n```', "\\boxed{7} ",
    "<|im_start|>assistant\n",
]
SUFFIXES = ["", "\n", " 🙂", "<|im_end|>", " trailing junk 123 (Z)", "</think>", "<answer>"]
NOISE = list(itertools.product(PREFIXES, SUFFIXES))


def wrap(core: str, k: int) -> str:
    pre, suf = NOISE[(k * 7) % len(NOISE)]
    return f"{pre}<answer>{core}</answer>{suf}"


def test_registered():
    for name in RANGES:
        assert get(name) is getattr(text_mod, name)


def test_doctests():
    assert doctest.testmod(text_mod).failed == 0


def test_text_parsing_doctests():  # the parsers text.py shares with puzzles and consistency
    assert doctest.testmod(text_parsing).failed == 0


# ---- parsers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "s,letter",
    [("B", "B"), ("(b)", "B"), ("B.", "B"), ("B) dog", "B"), ("Answer: C", "C"), ("The answer is (D)", "D"),
     ("**A**", "A"), ("\\boxed{C}", "C"), ("[E]", "E"), ("option B", "B"), ("b", "B"), ("", None),
     ("because", None), ("a cat", None), ("I think B", None), ("42", None), ("Answer is unclear", None)],
)
def test_parse_letter(s, letter):
    assert parse_letter(s) == letter


@pytest.mark.parametrize(
    "s,values",
    [("1,234.5", [(1234.5, False)]), ("-3/4", [(-0.75, False)]), ("\\frac{3}{4}", [(0.75, False)]),
     ("45%", [(45.0, True)]), ("1.5e-3", [(0.0015, False)]), ("2 × 10^3", [(2000.0, False)]),
     ("1/0", []), ("1e999", []), ("nan inf", []), ("", []), (".5", [(0.5, False)])],
)
def test_parse_numbers(s, values):
    got = parse_numbers(s)
    assert [(pytest.approx(v), p) for v, p in values] == got


def test_levenshtein_hand_worked():
    assert levenshtein("", "") == 0
    assert levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein(["a", "b"], ["b"]) == 1


# ---- mc ---------------------------------------------------------------------------------------------------------
def test_mc_hand_worked():
    gt = {"choice": "B", "options": ["cat", "dog", "bird"]}
    comps = ["<answer>B</answer>", "<answer>(B)</answer>", "<answer>B.</answer>", "<answer>Answer: B</answer>",
             "<answer>Dog</answer>", "<answer>C</answer>", "<answer>E</answer>", "<answer></answer>", "B", "junk"]
    assert mc(comps, answer=[gt] * len(comps)) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert mc(["<answer>B</answer>"], answer=["B"]) == [1.0]
    assert mc(["<answer>B</answer>"] * 3, answer=[None, {"boxes": []}, {"choice": "??"}]) == [None, None, None]


def test_mc_permutation_maps_shown_letters_to_original():
    # shown order: [bird, cat, dog] = original indices [2, 0, 1]; the right option (original B = dog) is shown as C
    gt = {"choice": "B", "options": ["cat", "dog", "bird"], "permutation": [2, 0, 1]}
    assert mc(["<answer>C</answer>", "<answer>B</answer>", "<answer>dog</answer>"], answer=[gt] * 3) == [1.0, 0.0, 1.0]
    bad = {"choice": "B", "permutation": [5, "x"]}
    assert mc(["<answer>B</answer>", "<answer>A</answer>"], answer=[bad] * 2) == [0.0, 0.0]


# ---- multi_select -----------------------------------------------------------------------------------------------
def test_multi_select_hand_worked():
    gt = {"choices": ["A", "C"]}
    comps = ["<answer>A, C</answer>", "<answer>C,A</answer>", "<answer>(A) and (C)</answer>", "<answer>AC</answer>",
             "<answer>A</answer>", "<answer>A, B, C</answer>", "<answer>A, cat</answer>", "<answer></answer>"]
    assert multi_select(comps, answer=[gt] * 8) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    part = multi_select(comps, answer=[gt] * 8, partial=True)
    assert part == [1.0, 1.0, 1.0, 1.0, 0.5, pytest.approx(2 / 3), 0.0, 0.0]
    assert multi_select(["<answer>A</answer>"] * 2, answer=[None, 3]) == [None, None]
    assert multi_select(["<answer>CA</answer>", "<answer>CAT</answer>"], answer=["A, C", "A, C, T"]) == [0.0, 0.0]


# ---- numeric ----------------------------------------------------------------------------------------------------
def test_numeric_hand_worked():
    comps = ["<answer>1,234.5</answer>", "<answer>3/4</answer>", "<answer>45%</answer>", "<answer>4.5e1</answer>",
             "<answer>x = 7 then 8</answer>", "<answer>abc</answer>", "<answer>nan</answer>", "<answer>1e999</answer>"]
    gts = [1234.5, 0.75, 45, "45%", 8, 1, 1, 1]
    assert numeric(comps, answer=gts) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert numeric(["<answer>100.5</answer>"], answer=[100], rel_tol=0.01) == [1.0]
    assert numeric(["<answer>100.5</answer>"], answer=[100]) == [0.0]
    assert numeric(["<answer>0.3</answer>"], answer=[0.1 + 0.2]) == [1.0]
    assert numeric(["<answer>1</answer>"] * 5, answer=[None, float("nan"), True, "abc", 10**400]) == [None] * 5


# ---- exact / cls_label / token_f1 ------------------------------------------------------------------------------
def test_exact_hand_worked():
    comps = ["<answer>The Eiffel Tower!</answer>", "<answer>eiffel  tower</answer>", "<answer>Tower</answer>",
             "<answer></answer>", "<answer>ÉCOLE</answer>"]
    assert exact(comps, answer=["Eiffel Tower"] * 4 + ["école"]) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert exact(["<answer>3</answer>", "<answer>x</answer>"], answer=[3, ["y", "X"]]) == [1.0, 1.0]
    assert exact(["<answer>the</answer>"] * 2, answer=["the", {"boxes": []}]) == [None, None]


def test_cls_label_hand_worked():
    gt = {"label": "golden_retriever", "synonyms": ["Golden Retriever dog", "goldie"]}
    comps = ["<answer>Golden retriever</answer>", "<answer>a goldie.</answer>", "<answer>labrador</answer>",
             "golden retriever dog", "<answer></answer>"]
    assert cls_label(comps, answer=[gt] * 5) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert cls_label(["x"] * 2, answer=[None, {"synonyms": ["x"]}]) == [None, None]


def test_token_f1_hand_worked():
    # pred {red, car} vs ref {red, sports, car}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1(["<answer>The red car</answer>"], answer=["red sports car"]) == [pytest.approx(0.8)]
    assert token_f1(["<answer>car car</answer>"], answer=["car"]) == [pytest.approx(2 / 3)]
    assert token_f1(["<answer></answer>", "<answer>x</answer>"], answer=["a b", ["nope", "x"]]) == [0.0, 1.0]
    assert token_f1(["x"], answer=[None]) == [None]


# ---- ocr --------------------------------------------------------------------------------------------------------
def test_ocr_hand_worked():
    assert ocr(["<answer>hello world</answer>"], answer=["hello world"]) == [1.0]
    assert ocr(["<answer>hallo world</answer>"], answer=["hello world"]) == [pytest.approx(1 - 1 / 11)]
    assert ocr(["<answer>hello  \n world</answer>"], answer=["hello world"]) == [1.0]  # whitespace collapsed
    assert ocr(["<answer>HELLO</answer>"], answer=["hello"]) == [0.0]
    assert ocr(["<answer>HELLO</answer>"], answer=["hello"], casefold=True) == [1.0]
    assert ocr(["<answer>a b x d</answer>"], answer=[{"text": "a b c d"}], unit="word") == [0.75]
    assert ocr(["<answer>completely different and much longer</answer>"], answer=["abc"]) == [0.0]  # clipped
    assert ocr(["<answer></answer>", "<answer>x</answer>"], answer=["", ""]) == [1.0, 0.0]
    assert ocr(["x"], answer=[None]) == [None]
    with pytest.raises(ValueError, match="unit"):
        ocr(["x"], answer=["x"], unit="line")


# ---- caps, junk, robustness -------------------------------------------------------------------------------------
JUNK = ["", " ", "<answer>", "</answer><answer>", "<answer><answer>B</answer>", "\x00\uffff\ud7ff", "🙂" * 100,
        "<answer>" + "(" * 5000 + "</answer>", "<answer>" + " " * 60000 + "x</answer>",
        "<answer>answer" + " " * 30000 + "is</answer>", "<answer>" + "1," * 30000 + "</answer>",
        "<answer>" + "9" * 70000 + "</answer>", "NaN", "<answer>inf</answer>", "<answer>-1e308*10</answer>"]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_junk_and_huge_inputs_in_range(name):
    lo, hi, gt = RANGES[name]
    fn = get(name)
    big = "<answer>" + "x y " * 250_000 + "</answer>"  # 1 MB
    comps = JUNK + [big, None, 123]  # non-str completions never raise either
    vals = fn(comps, answer=[gt] * len(comps))
    assert len(vals) == len(comps)
    for v in vals:
        assert v is not None and math.isfinite(v) and lo <= v <= hi


def test_column_length_mismatch_is_a_caller_bug():
    with pytest.raises(ValueError, match="answer"):
        mc(["a", "b"], answer=["A"])


_TAGGY = st.lists(st.sampled_from(["<answer>", "</answer>", "<think>", "</think>", "A", "(B)", "1,234", "3/4", "%",
                                   "\\boxed{", "}", " ", "\n", "e9", "-", "the", "dog", "é", "🙂"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), _TAGGY))
def test_never_raises_and_stays_in_range(s):
    for name, (lo, hi, gt) in RANGES.items():
        for v in get(name)([s], answer=[gt]):
            assert v is not None and math.isfinite(v) and lo <= v <= hi, (name, s, v)


# ---- positive controls: ≥ 20 correct answers each, wrapped in noise, score the maximum --------------------------
def _controls():
    opts = ["cat", "dog", "bird", "fish", "cow"]
    mc_cases = []
    for i, letter in enumerate("ABCDE"):
        for form in ["{}", "({})", "{}.", "Answer: {}", "**{}**", "{}) " + opts[i], "the answer is {}"]:
            mc_cases.append((form.format(letter), {"choice": letter, "options": opts}))
    mc_cases += [(opts[i], {"choice": "ABCDE"[i], "options": opts}) for i in range(5)]
    ms = [("A, C", ["A", "C"]), ("B", ["B"]), ("(A) and (D)", ["A", "D"]), ("ABD", ["A", "B", "D"]), ("C;E", "C,E")]
    ms = [(c, {"choices": g}) for c, g in ms] * 4
    num = [("1,234.5", 1234.5), ("3/4", 0.75), ("45%", 0.45), ("-2.5e3", -2500), ("\\frac{1}{3}", 1 / 3),
           ("x = 42", 42), ("0", 0), ("7 apples", "7"), ("1.0", 1), ("2 × 10^3", 2000)] * 2
    ex = [(w, w.lower()) for w in ["Paris", "The Nile", "New York", "Mount Everest", "blue", "École", "Tōkyō",
                                    "the Beatles", "H2O", "red-blue"]] * 2
    cls = [(lbl.replace("_", " ").title(), {"label": lbl, "synonyms": ["syn_" + lbl]})
           for lbl in ["cat", "dog", "golden_retriever", "tabby_cat", "airliner", "pizza", "daisy", "sun_flower",
                       "forest", "river"]] * 2
    ocr_cases = [(t, t) for t in ["hello world", "Invoice #123", "Straße 5", "日本語のテキスト", "a b c",
                                  "TOTAL: $4.50", "x", "line one line two", "ÉTÉ", "(x + y)^2"]] * 2
    f1 = [(t, [t, "other"]) for t in ["red car", "a small dog", "two apples", "under the table", "blue sky"]] * 4
    return {"mc": mc_cases, "multi_select": ms, "numeric": num, "exact": ex, "cls_label": cls, "ocr": ocr_cases,
            "token_f1": f1}


@pytest.mark.parametrize("name", sorted(RANGES))
def test_positive_controls_score_the_maximum(name):
    cases = _controls()[name]
    assert len(cases) >= 20
    comps = [wrap(core, k) for k, (core, _) in enumerate(cases)]
    vals = get(name)(comps, answer=[gt for _, gt in cases])
    bad = [(c, v) for c, v in zip(comps, vals) if v != RANGES[name][1]]
    assert not bad
