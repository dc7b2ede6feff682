"""Rewards on a multi-turn rollout's tool calls (`mmrl.rewards.tools`): `tool_grounding`, `tool_use_bonus`,
`tool_call_penalty` on hand-built `trajectory` dicts (exact values, None, errors, junk), through the reward
registry and config, and `tool_grounding` on a real `zoom` sample with the real `region` tool."""

from __future__ import annotations

import doctest
import math

import pytest

from mmrl.config import RewardConfig
from mmrl.datasets.synthetic import make
from mmrl.rewards import get, make_term, score, tools, value_range
from mmrl.rewards.checks import check_rewards
from mmrl.tools import ImageLimits, Toolbox, TrajectoryState, make_tool

TARGET = {"angle": 90, "region": 1, "boxes": [[20, 30, 90, 100]]}  # 70 x 70 px, in region 1 of a 224-px canvas


def call(box=None, *, error=None, origin=0, tool="region") -> dict:
    """One call as the multi-turn rollout records it."""
    return {"tool": tool, "arguments": {}, "error": error, "reward": None, "box": box, "origin": origin,
            "text": error or "Image 1 shows region 1 of image 0."}


def traj(*calls) -> dict:
    return {"turns": len(calls) + 1, "finish_reason": "eos", "turn_texts": [""] * (len(calls) + 1),
            "calls": list(calls)}


QUARTER_1, QUARTER_2 = [0, 0, 112, 112], [112, 0, 224, 112]


# ---- tool_grounding ------------------------------------------------------------------------------------------------
def test_grounding_is_one_when_the_first_successful_call_covers_the_target():
    fn = get("tool_grounding")
    trajectories = [
        traj(call(QUARTER_1)),  # covers all of it
        traj(call(QUARTER_2)),  # elsewhere
        traj(call(QUARTER_2), call(QUARTER_1)),  # the first successful call decides
        traj(call(None, error="Error: region must be …"), call(QUARTER_1)),  # failed calls do not count
        traj(),  # no call
        traj(call(None, error="Error: bad")),  # no successful call
        traj(call([0, 0, 83, 112])),  # covers 63 / 70 = 0.9 of its width: exactly min_cover
        traj(call([0, 0, 82, 112])),  # 62 / 70 < 0.9
        traj(call(QUARTER_1, origin=1)),  # a box on another original image
    ]
    values = fn([""] * len(trajectories), answer=[TARGET] * len(trajectories), trajectory=trajectories)
    assert values == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_grounding_options_which_and_min_cover():
    fn = get("tool_grounding")
    later = traj(call(QUARTER_2), call(QUARTER_1))
    assert fn([""], answer=[TARGET], trajectory=[later], which="any") == [1.0]
    half = traj(call([0, 0, 55, 112]))  # 35 / 70 of the target
    assert fn([""] * 2, answer=[TARGET] * 2, trajectory=[half] * 2, min_cover=0.5) == [1.0, 1.0]
    assert fn([""], answer=[TARGET], trajectory=[half], min_cover=0.51) == [0.0]
    for bad in ({"which": "last"}, {"min_cover": 0}, {"min_cover": 1.5}, {"min_cover": True}, {"min_cover": "0.9"}):
        with pytest.raises(ValueError, match="tool_grounding: (which|min_cover)"):
            fn([""], answer=[TARGET], trajectory=[later], **bad)


def test_grounding_is_none_without_a_target_or_a_trajectory_entry():
    fn = get("tool_grounding")
    ok = traj(call(QUARTER_1))
    answers = [None, {"angle": 90}, {"boxes": []}, {"boxes": [[5, 5, 5, 9]]}, {"boxes": "x"}, "90", TARGET, TARGET,
               TARGET, TARGET]
    trajectories = [ok] * 6 + [None, "text", {"calls": "x"}, {"turns": 1}]
    assert fn([""] * 10, answer=answers, trajectory=trajectories) == [None] * 10


# ---- tool_use_bonus ------------------------------------------------------------------------------------------------
def test_the_bonus_needs_a_successful_call_and_a_right_answer():
    fn = get("tool_use_bonus")
    used, failed = traj(call(QUARTER_1)), traj(call(None, error="Error: bad"))
    completions = ["<answer>90</answer>", "<answer>90</answer>", "<answer>90</answer>", "<answer>0</answer>",
                   "<answer>90</answer>", "no answer"]
    trajectories = [used, failed, traj(), used, traj(call(None, error="Error: x"), call(QUARTER_2)), used]
    assert fn(completions, answer=[TARGET] * 6, trajectory=trajectories) == [1.2, 0.0, 0.0, 0.0, 1.2, 0.0]
    assert fn(completions[:1], answer=[TARGET], trajectory=[used], bonus=1.0) == [1.0]
    assert fn(completions[:2], answer=[None, TARGET], trajectory=[used, None]) == [None, None]


def test_the_bonus_works_with_any_accuracy_reward():
    fn = get("tool_use_bonus")
    used = traj(call(QUARTER_1))
    completions = ["<answer>Paris</answer>", "<answer>Rome</answer>"]
    assert fn(completions, answer=["Paris"] * 2, trajectory=[used] * 2, accuracy="answer_match") == [1.2, 0.0]
    box = "<answer>[20, 30, 90, 100]</answer>"  # IoU 1 with the target; a half-size box has IoU 0.5
    half = "<answer>[20, 30, 55, 100]</answer>"
    values = fn([box, half], answer=[TARGET] * 2, trajectory=[used] * 2, accuracy="iou")
    assert values == [1.2, 0.0]  # right means accuracy > threshold (0.5, DeepEyes')
    assert fn([half], answer=[TARGET], trajectory=[used], accuracy="iou", threshold=0.4) == [1.2]


def test_bonus_options_are_checked():
    fn = get("tool_use_bonus")
    args = dict(answer=[TARGET], trajectory=[traj(call(QUARTER_1))])
    with pytest.raises(Exception, match="rotation_exact"):  # unknown reward: the registry's did-you-mean
        fn(["<answer>90</answer>"], accuracy="rotation_exactt", **args)
    with pytest.raises(ValueError, match="must name an answer reward"):
        fn(["<answer>90</answer>"], accuracy="tool_grounding", **args)
    with pytest.raises(ValueError, match="bonus must be a finite number"):
        fn(["<answer>90</answer>"], bonus=math.inf, **args)
    assert value_range("tool_use_bonus") == (0.0, 1.2) and value_range("tool_use_bonus", bonus=-1) == (-1.0, 0.0)


# ---- tool_call_penalty ---------------------------------------------------------------------------------------------
def test_the_penalty_counts_calls_beyond_the_free_ones():
    fn = get("tool_call_penalty")
    trajectories = [traj(), traj(call(QUARTER_1)), traj(call(QUARTER_1), call(None, error="Error: x")),
                    traj(*[call(QUARTER_1)] * 4), None, {"calls": ["junk", 3]}]
    values = fn([""] * 6, trajectory=trajectories)
    assert values[:4] == [0.0, 0.0, pytest.approx(-0.05), pytest.approx(-0.15)] and values[4] is None
    assert values[5] == pytest.approx(-0.05)  # malformed calls are calls
    assert math.copysign(1.0, values[0]) == 1.0  # 0.0, not -0.0
    assert fn([""] * 2, trajectory=trajectories[1:3], per_call=0.5, free=0) == [-0.5, -1.0]
    for bad in ({"per_call": -0.1}, {"per_call": math.nan}, {"free": -1}, {"free": 1.5}):
        with pytest.raises(ValueError, match="tool_call_penalty"):
            fn([""], trajectory=[traj()], **bad)
    assert value_range("tool_call_penalty") == (-math.inf, 0.0) and value_range("tool_call_penalty", per_call=0) == (
        0.0, 0.0)


# ---- all three -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tool_grounding", "tool_use_bonus", "tool_call_penalty"])
def test_without_a_trajectory_column_the_reward_says_it_needs_rollout_tools(name):
    with pytest.raises(ValueError, match=f"{name}.*`trajectory` column.*rollout.tools"):
        get(name)(["<answer>90</answer>"], answer=[TARGET])
    with pytest.raises(ValueError, match="trajectory"):  # a column of the wrong length is a caller's bug
        get(name)(["a", "b"], answer=[TARGET] * 2, trajectory=[traj()])


JUNK_CALLS = [None, "x", 3, [], {}, {"error": None}, {"error": None, "box": [math.nan, 0, 1, 1]},
              {"error": None, "box": [0, 0, 1e308, 1e308]}, {"error": None, "box": [5, 5, 1, 1]},
              {"error": None, "box": ["0", 0, 1, 1]}, {"error": None, "box": [True, 0, 1, 1]},
              {"error": 7, "box": QUARTER_1}, {"error": None, "box": QUARTER_1, "origin": "0"}]
JUNK_TRAJECTORIES = [None, "trajectory", 3, [], {}, {"calls": None}, {"calls": {}}, {"calls": JUNK_CALLS},
                     {"calls": JUNK_CALLS[::-1]}, {"calls": [call(QUARTER_1)] * 1000}]


@pytest.mark.parametrize("name", ["tool_grounding", "tool_use_bonus", "tool_call_penalty"])
def test_junk_trajectories_never_raise_and_stay_in_range(name):
    n = len(JUNK_TRAJECTORIES)
    completions = ["<answer>90</answer>", None, 3, "", "<answer>0 or 90</answer>"] * 2
    answers = [TARGET, None, {"boxes": [[math.inf, 0, 1, 1]]}, "x", {"angle": "ninety"}] * 2
    values = get(name)(completions, answer=answers, trajectory=JUNK_TRAJECTORIES)
    lo, hi = value_range(name)
    assert len(values) == n and all(v is None or (lo <= v <= hi and not math.isnan(v)) for v in values), values


def test_they_resolve_from_config_and_compose():
    rewards = [RewardConfig(fn="tool_grounding"), RewardConfig(fn="tool_use_bonus", kwargs={"bonus": 1.0}),
               RewardConfig(fn="tool_call_penalty"), RewardConfig(fn="rotation_exact")]
    assert check_rewards(rewards, "rewards") == []
    terms = [make_term(r.fn, kwargs=r.kwargs) for r in rewards]
    columns = {"answer": [TARGET], "trajectory": [traj(call(QUARTER_1), call(QUARTER_2))]}
    totals, parts = score(terms, ["<answer>90</answer>"], columns)
    assert parts == {"tool_grounding": [1.0], "tool_use_bonus": [1.0], "tool_call_penalty": [pytest.approx(-0.05)],
                     "rotation_exact": [1.0]}
    assert totals == [pytest.approx(2.95)]


def test_doctests():
    assert doctest.testmod(tools).failed == 0


# ---- a real zoom sample through the real region tool ---------------------------------------------------------------
def test_grounding_on_a_zoom_sample_with_the_region_tool():
    samples = make("zoom", 4, seed=11)
    with Toolbox([make_tool("region")], fmt="region") as toolbox:
        for sample in samples:
            state = TrajectoryState.start(sample.media("image"), limits=ImageLimits("pixel", 56 * 56, 112 * 112))
            trajectories = []
            for q in (1, 2, 3, 4):
                [parsed] = toolbox.parse(f"Let me look. <region>{q}</region>")
                result = toolbox.run(parsed, state)
                assert result.error is None, result.text
                trajectories.append(traj({"tool": parsed.name, "arguments": parsed.arguments, "error": result.error,
                                          "reward": result.reward, "box": result.info.get("box"),
                                          "origin": result.info.get("origin"), "text": result.text}))
            values = get("tool_grounding")([""] * 4, answer=[sample.answer] * 4, trajectory=trajectories)
            assert values == [float(q == sample.answer["region"]) for q in (1, 2, 3, 4)], sample.answer
