"""The `math` reward: equivalence through math-verify in its worker process, hard timeouts, counted failures."""

from __future__ import annotations

import threading

import pytest

from mmrl.rewards import get, parse_stats
from mmrl.rewards.mathverify import close_worker, math_reward, prediction_text


@pytest.fixture(scope="module", autouse=True)
def _stop_worker():
    yield
    close_worker()


def test_equivalent_forms_score_one():
    completions = [
        r"<think>half of 1</think><answer>\frac{1}{2}</answer>",
        r"<answer>0.5</answer>",
        r"so the answer is \boxed{\frac12}",
        r"<answer>$x^2+1$</answer>",
        r"<think>maybe 7? no.</think> <answer>\boxed{3}</answer>",
        r"<answer>\sqrt{8}</answer>",
    ]
    gold = ["0.5", "1/2", "0.5", "1+x^2", "3", r"2\sqrt{2}"]
    assert math_reward(completions, answer=gold) == [1.0] * 6


def test_wrong_missing_and_unparseable():
    completions = ["<answer>4</answer>", "<answer></answer>", "no number here", "<answer>3</answer>", "x"]
    gold = ["3", "3", "3", None, {"count": 3}]
    out = math_reward(completions, answer=gold)
    assert out[:3] == [0.0, 0.0, 0.0]
    assert out[3] is None and out[4] is None  # no gold / a gold this reward does not understand


def test_numeric_gold_and_last_answer_block_wins():
    out = math_reward(["<answer>2</answer> then <answer>3</answer>"], answer=[3])
    assert out == [1.0]


def test_prediction_text_scopes_and_caps():
    assert prediction_text("a <answer> 12 </answer>") == "12"
    assert prediction_text("   ") is None and prediction_text(None) is None
    assert prediction_text("x" * 10, max_chars=4) == "xxxx"


def test_long_prediction_is_capped_from_the_end_and_counted():
    text = "noise " * 5000 + r"\boxed{42}"
    with parse_stats() as st:
        out = math_reward([text], answer=["42"], max_answer_chars=1024)
    assert out == [1.0]
    assert st.calls == 1 and st.truncated == 1


def test_hanging_comparison_is_killed_scored_zero_and_counted():
    # SymPy evaluates the power tower for ever; only killing the process stops it
    with parse_stats() as st:
        out = math_reward([r"\boxed{9^{9^{9^{9^{9}}}}}", r"<answer>2</answer>"], answer=["3", "2"], timeout_s=1.0)
    assert out == [0.0, 1.0]  # the worker restarted for the second completion
    assert st.timed_out == 1 and st.as_metrics()["timed_out"] == 0.5


def test_works_off_the_main_thread():
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", math_reward([r"\boxed{2/4}"], answer=["1/2"])))
    t.start()
    t.join(60)
    assert result["v"] == [1.0]


def test_registered():
    assert get("math") is math_reward


def test_model_text_is_never_evaluated_as_python(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    out = math_reward([f"<answer>{payload}</answer>", payload, f"\\boxed{{{payload}}}"], answer=["1"] * 3)
    assert out == [0.0, 0.0, 0.0] and not marker.exists()
