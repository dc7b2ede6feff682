"""Rewards on a multi-turn rollout's tool calls ("thinking with images", issue 19): `tool_grounding`,
`tool_use_bonus`, `tool_call_penalty`.

They read the `trajectory` column — one dict per completion, which the multi-turn rollout fills:

    {"turns": int, "finish_reason": str, "turn_texts": [str, …],
     "calls": [{"tool": str | None, "arguments": dict, "error": str | None, "reward": float | None,
                "box": [x1, y1, x2, y2] | None, "origin": int | None, "text": str}, …]}

`box` is the call result's `info["box"]`: the region it showed, in the pixels of original image `origin`; a call
*succeeded* when its `error` is None. `completions` holds each trajectory's last policy turn (the answer turn).
Without a `trajectory` column at all the run has no tools, which is a configuration bug: the rewards raise
ValueError saying so. A completion whose trajectory entry is not a dict with a `calls` list scores None; malformed
calls inside one count as failed calls. Pure and total otherwise, like the other built-ins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mmrl.rewards.per_sample import column
from mmrl.rewards.registry import get as get_reward
from mmrl.rewards.registry import register

WHICH = ("first", "any")
TRAJECTORY_REWARDS = ("tool_grounding", "tool_use_bonus", "tool_call_penalty")  # read the `trajectory` column
MAX_PENALTY = 1e300  # tool_call_penalty's floor: an overflowing per_call × calls stays finite


def _trajectories(trajectory: Sequence[Any] | None, n: int, name: str) -> list[Any]:
    """The per-completion trajectory column, or a ValueError naming the reward when the run produced none."""
    if trajectory is None:
        raise ValueError(f"reward {name!r} scores a multi-turn rollout's tool calls and got no `trajectory` column: "
                         "set `rollout.tools` (the tools the policy may call) to run multi-turn rollouts")
    return column(trajectory, "trajectory", n)


def _calls(trajectory: Any) -> list[Any] | None:
    """A trajectory's calls (None: not a trajectory dict with a `calls` list)."""
    calls = trajectory.get("calls") if isinstance(trajectory, Mapping) else None
    return list(calls) if isinstance(calls, (list, tuple)) else None


def _succeeded(call: Any) -> bool:
    """A call that ran: a dict whose `error` is present and None (a malformed entry counts as failed)."""
    return isinstance(call, Mapping) and "error" in call and call["error"] is None


def _box(value: Any) -> tuple[float, float, float, float] | None:
    """Four finite numbers with x2 > x1 and y2 > y1, else None."""
    ok = isinstance(value, (list, tuple)) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or not (value[2] > value[0] and value[3] > value[1]):
        return None
    return float(value[0]), float(value[1]), float(value[2]), float(value[3])


def _covered(box: tuple[float, ...], target: tuple[float, ...]) -> float:
    """The share of `target`'s area that `box` covers, in [0, 1]."""
    w = min(box[2], target[2]) - max(box[0], target[0])
    h = min(box[3], target[3]) - max(box[1], target[1])
    share = w * h / ((target[2] - target[0]) * (target[3] - target[1])) if w > 0 and h > 0 else 0.0
    return min(1.0, share) if math.isfinite(share) else 0.0  # an overflowing extreme box covers nothing


def _target(answer: Any) -> tuple[float, float, float, float] | None:
    boxes = answer.get("boxes") if isinstance(answer, Mapping) else None
    return _box(boxes[0]) if isinstance(boxes, (list, tuple)) and boxes else None


@register("tool_grounding")
def tool_grounding(completions: list[str], *, answer: Sequence[Any] | None = None,
                   trajectory: Sequence[Any] | None = None, min_cover: float = 0.9, which: str = "first",
                   **kwargs: Any) -> list[float | None]:
    """Did the policy look at the right place? Range {0, 1}; None = no target box or no trajectory.

    r = 1[cover(b, g) ≥ min_cover], g = `answer["boxes"][0]` (the first image's pixels), b the `box` of the first
    successful call that has one (`which="first"`), or of any of them (`which="any"`); cover(b, g) = |b ∩ g| / |g|.
    A call on another original image (`origin` not 0) covers nothing; no successful call with a box scores 0.
    Grounding rewarded on the tool's input, as CodeV's TAPO rewards tool inputs and outputs ("CodeV: Code with
    Images for Faithful Visual Reasoning via Tool-Aware Policy Optimization", arXiv:2511.19661); here the check is
    geometric, not a judge's. Differs from: `iou`, which scores boxes written in the answer.

    >>> ok = {"calls": [{"error": None, "box": [0, 0, 112, 112], "origin": 0}]}
    >>> off = {"calls": [{"error": None, "box": [112, 0, 224, 112], "origin": 0}, ok["calls"][0]]}
    >>> tool_grounding(["", "", ""], answer=[{"boxes": [[20, 30, 90, 100]]}] * 3, trajectory=[ok, off, {"calls": []}])
    [1.0, 0.0, 0.0]
    """
    n = len(completions)
    trajs = _trajectories(trajectory, n, "tool_grounding")
    if which not in WHICH:
        raise ValueError(f"tool_grounding: which must be one of {', '.join(WHICH)}, got {which!r}")
    if isinstance(min_cover, bool) or not isinstance(min_cover, (int, float)) or not 0.0 < min_cover <= 1.0:
        raise ValueError(f"tool_grounding: min_cover must be a fraction in (0, 1], got {min_cover!r}")
    out: list[float | None] = []
    for traj, gt in zip(trajs, column(answer, "answer", n)):
        calls, target = _calls(traj), _target(gt)
        if calls is None or target is None:
            out.append(None)
            continue
        looked = [c for c in calls if _succeeded(c) and _box(c.get("box")) is not None]
        looked = looked[:1] if which == "first" else looked
        out.append(float(any(c.get("origin") in (0, None) and _covered(_box(c["box"]), target) >= min_cover
                             for c in looked)))
    return out


def _bonus_range(bonus: float = 1.2, **_: Any) -> tuple[float, float]:
    return min(0.0, float(bonus)), max(0.0, float(bonus))


@register("tool_use_bonus", range=_bonus_range)
def tool_use_bonus(completions: list[str], *, answer: Sequence[Any] | None = None,
                   trajectory: Sequence[Any] | None = None, bonus: float = 1.2, accuracy: str = "rotation_exact",
                   threshold: float = 0.5, **kwargs: Any) -> list[float | None]:
    """A bonus for a right answer reached with a tool. Range [min(0, bonus), max(0, bonus)]; None = the accuracy
    reward does not apply, or no trajectory.

    r = bonus · 1[at least one call succeeded] · 1[acc > threshold], acc = the registered reward named `accuracy`
    on the same completions and columns (default `rotation_exact`, the `zoom` task's; any reward of the task
    works). DeepEyes ("DeepEyes: Incentivizing 'Thinking with Images' via Reinforcement Learning",
    arXiv:2505.14362): its code scores 0.8·acc − 0.2·[format error] + 1.2·[a tool returned an image and acc > 0.5];
    bonus = 1.2 and threshold = 0.5 are those values (weight the accuracy term apart). Differs from: a plain tool-use
    bonus, which also pays for tool calls that end in a wrong answer.

    >>> used = {"calls": [{"error": "Error: bad region"}, {"error": None}]}
    >>> tool_use_bonus(["<answer>90</answer>", "<answer>90</answer>", "<answer>0</answer>"],
    ...                answer=[{"angle": 90}] * 3, trajectory=[used, {"calls": []}, used])
    [1.2, 0.0, 0.0]
    """
    n = len(completions)
    trajs = _trajectories(trajectory, n, "tool_use_bonus")
    if accuracy in ("tool_use_bonus", "tool_grounding", "tool_call_penalty"):
        raise ValueError(f"tool_use_bonus: accuracy must name an answer reward, not {accuracy!r}")
    for key, value in (("bonus", bonus), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"tool_use_bonus: {key} must be a finite number, got {value!r}")
    acc = get_reward(accuracy)(completions, answer=answer, **kwargs)
    out: list[float | None] = []
    for traj, a in zip(trajs, acc):
        calls = _calls(traj)
        if calls is None or a is None or not isinstance(a, (int, float)) or not math.isfinite(a):
            out.append(None)
            continue
        out.append(float(bonus) if a > threshold and any(_succeeded(c) for c in calls) else 0.0)
    return out


def _penalty_range(per_call: float = 0.05, **_: Any) -> tuple[float, float]:
    return (-math.inf, 0.0) if float(per_call) > 0 else (0.0, 0.0)


@register("tool_call_penalty", range=_penalty_range)
def tool_call_penalty(completions: list[str], *, trajectory: Sequence[Any] | None = None, per_call: float = 0.05,
                      free: int = 1, **kwargs: Any) -> list[float | None]:
    """A cost per tool call beyond the free ones. Range (−∞, 0] (bounded in practice by the rollout's max_turns);
    None = no trajectory.

    r = −per_call · max(0, k − free), k the number of calls the policy wrote (failed ones included). Pixel-Reasoner
    ("Pixel Reasoner: Incentivizing Pixel-Space Reasoning with Curiosity-Driven Reinforcement Learning",
    arXiv:2505.15966): −0.05 per call beyond the first, the part of its curiosity reward that curbs overuse (the
    group-level curiosity bonus is not here). Differs from: `overlong`, which counts tokens, not calls.

    >>> tool_call_penalty(["", "", ""], trajectory=[{"calls": [{}] * 3}, {"calls": []}, None])
    [-0.1, 0.0, None]
    """
    n = len(completions)
    trajs = _trajectories(trajectory, n, "tool_call_penalty")
    if isinstance(per_call, bool) or not isinstance(per_call, (int, float)) or not 0.0 <= per_call < math.inf:
        raise ValueError(f"tool_call_penalty: per_call must be a number >= 0, got {per_call!r}")
    if isinstance(free, bool) or not isinstance(free, int) or free < 0:
        raise ValueError(f"tool_call_penalty: free must be an int >= 0, got {free!r}")
    out: list[float | None] = []
    for traj in trajs:
        calls = _calls(traj)
        if calls is None:
            out.append(None)
            continue
        cost = float(per_call) * max(0, len(calls) - free)
        out.append(-min(cost, MAX_PENALTY) if cost > 0 else 0.0)  # finite, and never -0.0
    return out
