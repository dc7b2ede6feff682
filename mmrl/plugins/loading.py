"""Plug-in specs `pkg.module:function` and `path/to/file.py:function` resolved to the callable they name.

Shared by every plug-in point that takes user code (rewards, tools): each keeps its own registry of built-in names
and resolves a spec with `resolve` (a registry name, or a spec with a `:` handed to `load`). A file is loaded as a
module by path (relative to the current directory), once per process; a module is imported with importlib. Every
failure is one `error` naming the spec and what is missing (the file, the module, the attribute, with the callables
that are there).
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


class PluginSpecError(ValueError):
    """A plug-in spec cannot be resolved (missing file/module/attribute, or not callable)."""


def is_plugin(spec: str) -> bool:
    """Whether `spec` names user code (`module:function`, `file.py:function`) rather than a registry name."""
    return ":" in spec


def default_name(spec: str) -> str:
    """A plug-in point's metric name for `spec` when config gives none: the registry name, or the function's name.

    >>> default_name("iou"), default_name("plugins/my_rewards.py:score"), default_name("pkg.mod:acc")
    ('iou', 'score', 'acc')
    """
    return spec.rpartition(":")[2].strip() if ":" in spec else spec.strip()


def resolve(spec: str, registry: Registry, *, kind: str, error: type[Exception] = PluginSpecError) -> Callable:
    """A spec resolved to a callable: a name in `registry` (unknown names fail with the valid ones, a did-you-mean
    and how plug-ins are written), else the plug-in it names (`load`); `kind` and `error` as in `load`."""
    if not isinstance(spec, str) or not spec.strip():
        raise error(f"{kind} spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if is_plugin(spec):
        return load(spec, kind=kind, error=error)
    if spec.endswith(".py"):
        raise error(f"{kind} spec {spec!r} names a file but no function: use 'path/file.py:function'")
    try:
        return registry.get(spec)
    except UnknownNameError as exc:
        hint = "plug-ins are written 'pkg.module:function' or 'path/file.py:function'"
        raise UnknownNameError(f"{exc}; {hint}") from None


def load(spec: str, *, kind: str = "plug-in", error: type[Exception] = PluginSpecError) -> Callable:
    """The callable `spec` (`pkg.module:function` or `path/file.py:function`) names; `kind` (`reward`, `tool`)
    starts every message and names the modules loaded from files; failures raise `error`."""
    target, _, attr = spec.strip().rpartition(":")  # rpartition keeps Windows drive letters in the path
    if not target or not attr:
        raise error(f"{kind} spec {spec!r} must look like 'pkg.module:function' or 'file.py:function'")
    module = _load_file(target, spec, kind, error) if _is_path(target) else _import(target, spec, kind, error)
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise error(f"{kind} spec {spec!r}: {target!r} has no attribute {attr!r}"
                    f" (callables there: {', '.join(public) or 'none'})")
    fn = getattr(module, attr)
    if not callable(fn):
        raise error(f"{kind} spec {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import(module_name: str, spec: str, kind: str, error: type[Exception]):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):  # the module itself is missing, not one it imports
            raise error(f"{kind} spec {spec!r}: no module named {module_name!r}") from exc
        raise error(f"{kind} spec {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise error(f"{kind} spec {spec!r}: importing {module_name!r} failed: {exc!r}") from exc


def _load_file(target: str, spec: str, kind: str, error: type[Exception]):
    path = Path(target).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise error(f"{kind} spec {spec!r}: file {str(path)!r} does not exist")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"mmrl_{kind.replace('-', '_')}_plugin_{path.stem}_{digest}"
    if name in sys.modules:  # load each file once per process
        return sys.modules[name]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise error(f"{kind} spec {spec!r}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # so dataclasses/pickling inside the plug-in can find their module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise error(f"{kind} spec {spec!r}: executing {str(path)!r} failed: {exc!r}") from exc
    return module
