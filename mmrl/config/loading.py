"""Building a `Config`: a recipe's `extends:` chain, its algorithm preset, the `smoke:` block and command-line
`key=value` overrides merged in that order, then every value converted to its field's type (unknown keys and
wrong types reported together), then `validate`. Presets and registry checks belong to other parts: `load` takes
them as arguments (`mmrl.cli.checks.load_config` passes them)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mmrl.config.sections import Config, ConfigError
from mmrl.config.validation import Check, validate
from mmrl.registry import UnknownNameError, closest


# --------------------------------------------------------------------------------------------- building


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to type `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(e.errors)
        raise ConfigError(*(errors[0] if errors else [f"{key}: invalid value {value!r}"]))
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:  # YAML reads `true` as a bool
            value = str(value).lower()
        if value not in args:
            hint = closest(str(value), [str(a) for a in args])
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}{extra}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return _convert_all([(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]) if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # a bug in the dataclass tree, not user input


def _convert_all(items: list[tuple[str, Any, Any]]) -> list:
    """`_convert` each (key, value, type); one ConfigError with every item's problems."""
    out, errors = [], []
    for key, value, tp in items:
        try:
            out.append(_convert(value, tp, key))
        except ConfigError as e:
            errors += e.errors
    if errors:
        raise ConfigError(*errors)
    return out


def _build(cls: type, data: dict, prefix: str) -> Any:
    """`cls(**data)` with every value converted; unknown keys and wrong types anywhere below raise together."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs, errors = {}, []
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            hint = closest(str(k), names)
            extra = f"; did you mean {(prefix + '.' if prefix else '') + hint!r}?" if hint else ""
            errors.append(f"unknown key {dotted!r}{extra} (valid under {prefix or 'top level'}: {', '.join(names)})")
            continue
        try:
            kwargs[k] = _convert(v, hints[k], dotted)
        except ConfigError as e:
            errors += e.errors
    if errors:
        raise ConfigError(*errors)
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge recursively; everything else (lists included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


EXCLUSIVE = {("data", "train"): ("task", "path"), ("data", "eval"): ("task", "path")}


def merge_layer(base: dict, over: dict) -> dict:
    """`deep_merge`, except that setting one of a mutually exclusive pair (a data source's `task` / `path`)
    in a higher layer removes the other one inherited from below, and a data source that names a different
    `task` (or a `path`) starts its `kwargs` afresh: options belong to the task they were written for."""
    base = dict(base)
    for (sec, sub), keys in EXCLUSIVE.items():
        new = over.get(sec, {}).get(sub) if isinstance(over.get(sec), dict) else None
        old = base.get(sec, {}).get(sub) if isinstance(base.get(sec), dict) else None
        if isinstance(new, dict) and isinstance(old, dict) and any(k in new for k in keys):
            cleared = {k: v for k, v in old.items() if k not in keys or k in new}
            if new.get("task", old.get("task")) != old.get("task") or "path" in new:
                cleared.pop("kwargs", None)
            base[sec] = dict(base[sec], **{sub: cleared})
    return deep_merge(base, over)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read a recipe, resolving its `extends:` chain (relative to the file) into one mapping."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"extends: cycle through {path}")
    if not path.exists():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return merge_layer(_read_yaml(path.parent / parent, chain + (path,)), data)


def parse_override(text: str) -> dict:
    """`trainer.lr=1e-4` → {"trainer": {"lr": 1e-4}} (the value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e.problem})") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
         preset: typing.Callable[[str], dict] | None = None, checks: typing.Sequence[Check] = ()) -> Config:
    """Resolve a recipe (+ `extends:` chain) and command-line overrides into a validated `Config`. `preset(name)`
    gives an `algorithm.preset`'s knobs (raising `UnknownNameError`); `checks` run in `validate` beside this
    package's own. Without them a preset is refused and registry names go unchecked: load through
    `mmrl.cli.checks.load_config`, which passes both."""
    data = _read_yaml(Path(recipe)) if recipe else {}
    parsed = [parse_override(text) for text in overrides]
    smoke = any(p.keys() == {"smoke"} and p["smoke"] for p in parsed)
    smoke_block = data.pop("smoke", None)
    if smoke:  # the recipe's smoke block sits between the recipe and the command line
        if not isinstance(smoke_block, dict):
            raise ConfigError("smoke=true but the recipe has no `smoke:` block")
        data = merge_layer(data, smoke_block)
    for over in parsed:
        if over.keys() != {"smoke"}:
            data = merge_layer(data, over)
    data = _apply_preset(data, preset)
    cfg = _build(Config, data, "")
    validate(cfg, checks)
    return cfg


def _apply_preset(data: dict, preset: typing.Callable[[str], dict] | None) -> dict:
    """`algorithm.preset: NAME` expands to its knob bundle `preset(NAME)` (presets < recipe values)."""
    algo = data.get("algorithm")
    if not isinstance(algo, dict) or "preset" not in algo:
        return data
    if preset is None:
        raise ConfigError("algorithm.preset: this loader was given no presets (load through "
                          "mmrl.cli.checks.load_config)")
    algo = dict(algo)
    try:
        knobs = preset(str(algo.pop("preset")))
    except UnknownNameError as e:
        raise ConfigError(f"algorithm.preset: {e}") from None
    return dict(data, algorithm=deep_merge(dict(knobs), algo))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
