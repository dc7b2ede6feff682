"""Which columns a reward scores against (`truth_columns`), and the per-step share of completions whose sample lacks
them (`missing_share` → `reward/<name>/missing`)."""

from __future__ import annotations

import pytest

from mmrl.datasets.sample import Sample
from mmrl.rewards import names  # importing the package registers the library
from mmrl.rewards.compose import RewardTerm, missing_share, score, summarize, truth_columns
from mmrl.rewards.isolation import make_term

NO_GROUND_TRUTH = {"format", "format_template", "overlong", "repetition", "group_agreement", "reasoning_consistency",
                   "temporal_bonus", "tool_call_penalty"}
# read a multi-turn rollout's `trajectory` column: a rollout output, not a sample's ground truth, so it is never
# among the truth columns (a run without tools is refused by the reward, not counted as a missing ground truth)
TRAJECTORY_REWARDS = {"tool_grounding", "tool_use_bonus", "tool_call_penalty"}


def test_built_ins_that_compare_with_a_ground_truth_score_against_answer_and_the_others_against_nothing():
    for name in names():
        expected = [] if name in NO_GROUND_TRUTH else ["answer"]
        assert truth_columns(make_term(name)) == expected, name


def test_plug_ins_through_their_wrappers(tmp_path):
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "def optional(completions, answer=None, **kw):\n    return [None] * len(completions)\n\n"
        "def needs(completions, solution, *, geometry, **kw):\n    return [None] * len(completions)\n\n"
        "def trl(prompts, completions, answer, **kw):\n    return [None] * len(completions)\n\n"
        "def easy(inputs):\n    return [{'overall': 0.0} for _ in inputs]\n")
    assert truth_columns(make_term(f"{plugin}:optional", isolate="never")) == ["answer"]
    assert truth_columns(make_term(f"{plugin}:needs", isolate="never")) == ["geometry", "solution"]
    assert truth_columns(make_term(f"{plugin}:trl", isolate="never", style="trl")) == ["answer"]
    assert truth_columns(make_term(f"{plugin}:needs", isolate="never", kwargs={"solution": 1})) == ["geometry"]
    in_process = make_term(f"{plugin}:easy", style="easyr1", isolate="never")
    assert truth_columns(in_process) == ["answer"]  # EasyR1 functions get it as `ground_truth`
    for workers in (1, 2):  # one worker process, or a pool
        isolated = make_term(f"{plugin}:easy", style="easyr1", workers=workers)
        try:
            assert truth_columns(isolated) == ["answer"]
        finally:
            isolated.fn.close()


def test_the_share_of_completions_without_a_ground_truth_is_a_metric():
    samples = [Sample(id="a", messages=[], answer="90", meta={"solution": "x"}), Sample(id="b", messages=[])]
    rows = [samples[0]] * 2 + [samples[1]] * 2  # two prompts × G 2
    columns = {"answer": [s.answer for s in rows], "samples": rows, "prompt_index": [0, 0, 1, 1],
               "solution": [s.meta.get("solution") for s in rows]}
    acc = RewardTerm("acc", lambda completions, answer=None, **kw: [1.0 if a == "90" else None for a in answer])
    sol = RewardTerm("sol", lambda completions, **kw: [0.0] * len(completions))
    sol.fn.required = ["solution", "prompt_index"]  # what `mmrl.rewards.isolation` reports for a plug-in
    fmt = RewardTerm("fmt", lambda completions, **kw: [1.0] * len(completions))
    stats: dict = {}
    totals, components = score([acc, sol, fmt], ["x"] * 4, columns, stats=stats)
    assert components["acc"] == [1.0, 1.0, None, None]
    assert stats == {"acc": {"missing": 0.5}, "sol": {"missing": 0.5}}  # `fmt` needs none: nothing reported
    assert summarize(components, totals, stats)["reward/acc/missing"] == 0.5
    assert missing_share(acc, {"answer": ["1"] * 4}, 4) == 0.0  # logged as 0 when nothing is missing
    assert missing_share(acc, {}, 4) is None  # a call without the column (a unit test's) reports nothing


def test_tool_rewards_score_against_the_answer_and_not_the_trajectory():
    assert TRAJECTORY_REWARDS <= set(names())
    assert {n: truth_columns(make_term(n)) for n in sorted(TRAJECTORY_REWARDS)} == {
        "tool_call_penalty": [], "tool_grounding": ["answer"], "tool_use_bonus": ["answer"]}
    looked = {"turns": 2, "finish_reason": "eos", "turn_texts": ["<region>1</region>", "<answer>90</answer>"],
              "calls": [{"tool": "region", "arguments": {"region": 1}, "error": None, "reward": None,
                         "box": [0, 0, 112, 112], "origin": 0, "text": "Image 1 shows region 1 of image 0."}]}
    zoom = {"angle": 90, "region": 1, "boxes": [[20, 30, 90, 100]], "grid": 2, "size": [224, 224]}
    columns = {"answer": [zoom, None, zoom, None], "trajectory": [looked, looked, None, None]}
    stats: dict = {}
    terms = [make_term(n) for n in sorted(TRAJECTORY_REWARDS)]
    _, components = score(terms, ["<answer>90</answer>"] * 4, columns, stats=stats)
    assert components == {"tool_call_penalty": [0.0, 0.0, None, None], "tool_grounding": [1.0, None, None, None],
                          "tool_use_bonus": [1.2, None, None, None]}
    # only a sample without an answer counts as missing; a None trajectory entry is the rollout's, not the data's
    missing = {name: s["missing"] for name, s in stats.items() if "missing" in s}
    assert missing == {"tool_grounding": 0.5, "tool_use_bonus": 0.5}
    for name in sorted(TRAJECTORY_REWARDS):  # no trajectory column at all: a run without tools, refused
        with pytest.raises(ValueError, match="trajectory"):
            score([make_term(name, on_error="raise")], ["<answer>90</answer>"], {"answer": [zoom]})


@pytest.mark.parametrize("name", ["rotation_exact", "math", "iou"])
def test_a_sample_without_an_answer_is_none_and_counted(name):
    stats: dict = {}
    _, components = score([make_term(name)], ["<answer>90</answer>"] * 2, {"answer": [None, None]}, stats=stats)
    assert components[name] == [None, None] and stats[name]["missing"] == 1.0
