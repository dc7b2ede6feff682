"""A list of reward terms checked beside the reward registry (`mmrl.cli.checks` runs this with `mmrl.config`'s own
checks): one `key: …` line per problem."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmrl.registry import UnknownNameError, closest
from mmrl.rewards import REWARDS
from mmrl.rewards.registry import default_name

if TYPE_CHECKING:
    from mmrl.config import RewardConfig


def reward_names(rewards: list[RewardConfig]) -> list[str]:
    """Each term's name as the run knows it: its `name`, or the default its `fn` gives."""
    return [r.name or default_name(r.fn) for r in rewards]


def check_rewards(rewards: list[RewardConfig], key: str) -> list[str]:
    """Names valid and unique, functions known (plug-ins `module:function` are checked when loaded), gates pointing at
    other rewards of the same list, at least one adding term. `key`: where the list sits (`rewards`,
    `stages[1].rewards`)."""
    names = reward_names(rewards)
    errors = []
    if len(set(names)) != len(names):
        errors.append(f"{key}: duplicate reward names {names}; give each a distinct `name`")
    for i, (r, name) in enumerate(zip(rewards, names)):
        if not name or "/" in name or name == "total":
            errors.append(f"{key}[{i}].name: must be non-empty, without '/', and not 'total', got {name!r}")
        if ":" not in r.fn:
            try:
                REWARDS.get(r.fn)
            except UnknownNameError as e:
                errors.append(f"{key}[{i}].fn: {e}; plug-ins are 'pkg.module:function' or 'file.py:function'")
        if r.gate is not None and (r.gate not in names or r.gate == name):
            hint = closest(r.gate, [n for n in names if n != name])
            extra = f"; did you mean {hint!r}?" if hint else ""
            errors.append(f"{key}[{i}].gate: {r.gate!r} is not another reward of this run{extra} (rewards: {names})")
    if rewards and all(r.mode == "gate" for r in rewards):
        errors.append(f"{key}: every reward is in `mode: gate`; at least one must add to the total")
    return errors
