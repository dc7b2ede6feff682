"""A list of tools and a call format checked beside the tool registry (for `mmrl.cli.checks` to run with
`mmrl.config`'s own checks once a config section holds them): one `key: …` line per problem, with a did-you-mean."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from mmrl.plugins.loading import is_plugin
from mmrl.registry import UnknownNameError, unknown_options
from mmrl.tools import TOOLS
from mmrl.tools.calls import call_format
from mmrl.tools.registry import default_name

if TYPE_CHECKING:
    from mmrl.config import ToolConfig


def check_tools(tools: list[ToolConfig], key: str) -> list[str]:
    """Names valid and unique, functions known (plug-ins `module:function` are checked when loaded), a built-in's
    options among its keyword parameters. `key`: where the list sits (`rollout.tools`)."""
    names = [t.name or default_name(t.fn) for t in tools]
    errors = []
    if len(set(names)) != len(names):
        errors.append(f"{key}: duplicate tool names {names}; give each a distinct `name`")
    for i, (t, name) in enumerate(zip(tools, names)):
        if not name or "/" in name or any(c.isspace() for c in name):
            errors.append(f"{key}[{i}].name: must be non-empty, without '/' or spaces, got {name!r}")
        if is_plugin(t.fn):
            continue
        try:
            fn = TOOLS.get(t.fn)
        except UnknownNameError as e:
            errors.append(f"{key}[{i}].fn: {e}; plug-ins are 'pkg.module:function' or 'file.py:function'")
            continue
        valid = [p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
        errors += unknown_options(t.kwargs, valid, f"{key}[{i}].kwargs", f" of tool {t.fn!r}")
    return errors


def check_call_format(fmt: Any, key: str) -> list[str]:
    """A call format (a name, or `{pattern, tool}`) that `mmrl.tools.calls.call_format` accepts."""
    try:
        call_format(fmt)
    except ValueError as e:
        return [f"{key}: {e}"]
    return []
