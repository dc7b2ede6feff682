"""The reward registry and plug-in loading.

A reward spec is one of
- a registry name: `"iou"` (unknown names fail with the valid names and a did-you-mean);
- `"pkg.module:function"`: imported with importlib;
- `"path/to/file.py:function"`: the file is loaded as a module by path (relative to the current directory).

A reward is `fn(completions: list[str], **columns) -> list[float | None]` (DESIGN.md "Core types").
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

from mmrl.registry import Registry, UnknownNameError

RewardFn = Callable[..., list]
Range = tuple[float, float]

REWARDS: Registry[RewardFn] = Registry("reward")
_RANGES: dict[str, Range | Callable[..., Range]] = {}
_IMPURE: set[str] = set()


class RewardSpecError(ValueError):
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


def default_name(spec: str) -> str:
    """A reward's metric name when config gives none: the registry name, or a plug-in's function name.

    >>> default_name("iou"), default_name("plugins/my_rewards.py:score"), default_name("pkg.mod:acc")
    ('iou', 'score', 'acc')
    """
    return spec.rpartition(":")[2].strip() if ":" in spec else spec.strip()


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
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"reward spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ":" not in spec:
        if spec.endswith(".py"):
            raise RewardSpecError(f"reward spec {spec!r} names a file but no function: use 'path/file.py:function'")
        try:
            return REWARDS.get(spec)
        except UnknownNameError as exc:
            raise UnknownNameError(
                f"{exc}; plug-ins are written 'pkg.module:function' or 'path/file.py:function'"
            ) from None
    target, _, attr = spec.rpartition(":")  # rpartition keeps Windows drive letters in the path
    if not target or not attr:
        raise RewardSpecError(f"reward spec {spec!r} must look like 'pkg.module:function' or 'file.py:function'")
    module = _load_file(target, spec) if _is_path(target) else _import(target, spec)
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise RewardSpecError(
            f"reward spec {spec!r}: {target!r} has no attribute {attr!r}"
            f" (callables there: {', '.join(public) or 'none'})"
        )
    fn = getattr(module, attr)
    if not callable(fn):
        raise RewardSpecError(f"reward spec {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import(module_name: str, spec: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):  # the module itself is missing, not one it imports
            raise RewardSpecError(f"reward spec {spec!r}: no module named {module_name!r}") from exc
        raise RewardSpecError(f"reward spec {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise RewardSpecError(f"reward spec {spec!r}: importing {module_name!r} failed: {exc!r}") from exc


def _load_file(target: str, spec: str):
    path = Path(target).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise RewardSpecError(f"reward spec {spec!r}: file {str(path)!r} does not exist")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"mmrl_reward_plugin_{path.stem}_{digest}"
    if name in sys.modules:  # load each file once per process
        return sys.modules[name]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise RewardSpecError(f"reward spec {spec!r}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # so dataclasses/pickling inside the plug-in can find their module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise RewardSpecError(f"reward spec {spec!r}: executing {str(path)!r} failed: {exc!r}") from exc
    return module
