"""The reward registry and plug-in loading.

A reward spec is one of
- a registry name: `"iou"` (unknown names fail with the valid names and a did-you-mean);
- `"pkg.module:function"`: imported with importlib;
- `"path/to/file.py:function"`: the file is loaded as a module by path (relative to the current directory).
Plug-ins are resolved by `mmrl.plugins.loading`, which tools share.

A reward is `fn(completions: list[str], **columns) -> list[float | None]` (DESIGN.md "Core types").
"""

from __future__ import annotations

from typing import Callable

from mmrl.plugins.loading import PluginSpecError, default_name, resolve
from mmrl.registry import Registry

# default_name lives with the plug-in loading that tools share; importers of this module find it here too
__all__ = ["REWARDS", "RewardSpecError", "default_name", "get", "names", "pure_names", "register", "value_range"]

RewardFn = Callable[..., list]
Range = tuple[float, float]

REWARDS: Registry[RewardFn] = Registry("reward")
_RANGES: dict[str, Range | Callable[..., Range]] = {}
_IMPURE: set[str] = set()


class RewardSpecError(PluginSpecError):
    """A plug-in reward spec cannot be resolved (missing file/module/attribute, or not callable)."""


def register(
    name: str, *, range: Range | Callable[..., Range] = (0.0, 1.0), pure: bool = True
) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a reward function under `name` with its declared value range `(lo, hi)`.

    `range` may instead be a function of the reward's keyword options returning `(lo, hi)`, for rewards whose
    range is set by their options (e.g. `cosine_length`). `pure=False` marks a reward that depends on the outside
    world (a judge server). Tests hold every registered reward to its range, and every pure one to totality.
    """
    lo_hi = range

    def deco(fn: RewardFn) -> RewardFn:
        REWARDS.register(name)(fn)
        _RANGES[name] = lo_hi
        if not pure:
            _IMPURE.add(name)
        return fn

    return deco


def pure_names() -> list[str]:
    """The registered rewards that are pure functions of their inputs (all but model judges), sorted."""
    return [n for n in REWARDS.names() if n not in _IMPURE]


def value_range(name: str, **kwargs) -> Range:
    """The declared `(lo, hi)` of registered reward `name` under options `kwargs` (`None` values excepted)."""
    REWARDS.get(name)  # unknown names fail with the valid ones
    r = _RANGES[name]
    return tuple(r(**kwargs)) if callable(r) else r


def names() -> list[str]:
    """The registered reward names, sorted."""
    return REWARDS.names()


def get(spec: str) -> RewardFn:
    """Resolve a reward spec (registry name, `pkg.module:function` or `path/file.py:function`) to a callable."""
    return resolve(spec, REWARDS, kind="reward", error=RewardSpecError)
