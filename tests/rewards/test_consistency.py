"""`acre`: the four-way option-shuffle consistency reward, by hand."""

from __future__ import annotations

import doctest

import pytest

import mmrl.rewards.consistency as consistency_module
from mmrl.rewards import get, value_range
from mmrl.rewards.consistency import acre

GT = {"choice": "B", "options": ["cat", "dog", "cow", "owl"]}
SHIFT = [3, 0, 1, 2]  # the option shown as A is original D, shown B is original A, …


def pair(text, perm=SHIFT):
    return {"completion": text, "permutation": perm}


def test_four_outcomes():
    completions = ["<answer>B</answer>", "<answer>B</answer>", "<answer>A</answer>", "<answer>A</answer>"]
    pairs = [pair("<answer>C</answer>"),  # shown C = original B: correct and consistent
             pair("<answer>B</answer>"),  # shown B = original A: correct, inconsistent
             pair("<answer>B</answer>"),  # original A twice: consistent but wrong
             pair("<answer>D</answer>")]  # wrong and inconsistent
    assert acre(completions, answer=[GT] * 4, pair=pairs) == [1.0, 0.5, 0.0, 0.0]
    custom = acre(completions, answer=[GT] * 4, pair=pairs, both=2.0, correct_only=1.0, consistent_only=0.25)
    assert custom == [2.0, 1.0, 0.25, 0.0]
    assert value_range("acre", both=2.0, consistent_only=-1.0) == (-1.0, 2.0)


def test_option_text_and_noise():
    completions = ["<think>It barks, so (B).</think> <answer>(B) dog</answer>", "<answer>The dog</answer>"]
    pairs = [pair("<think>hmm</think><answer>dog</answer>"), pair("<answer>\\boxed{C}</answer>")]
    assert acre(completions, answer=[GT] * 2, pair=pairs) == [1.0, 1.0]


def test_not_applicable_and_junk():
    completions = ["<answer>B</answer>"] * 5
    answers = [GT, GT, None, {"choice": "not a letter at all"}, GT]
    pairs = [None, {"permutation": SHIFT}, pair("B"), pair("B"), pair("<answer></answer>")]
    assert acre(completions, answer=answers, pair=pairs) == [None, None, None, None, 0.5]
    assert acre(["<answer>Z</answer>"], answer=[GT], pair=[pair("<answer>Z</answer>", [9, 9])]) == [0.0]
    assert acre(["x"], answer=[GT], pair=[pair("<answer>E</answer>", "junk")]) == [0.0]


def test_first_pass_permutation_and_registry():
    gt = dict(GT, permutation=[1, 0, 2, 3])  # the first pass was shuffled too: shown A = original B
    assert acre(["<answer>A</answer>"], answer=[gt], pair=[pair("<answer>C</answer>")]) == [1.0]
    assert get("acre") is acre
    assert doctest.testmod(consistency_module).failed == 0


def test_wrong_column_length_is_a_caller_bug():
    with pytest.raises(ValueError, match="pair"):
        acre(["a", "b"], answer=[GT, GT], pair=[None])
