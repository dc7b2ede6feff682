"""The tool registry and plug-in loading, like rewards' (`mmrl.rewards.registry`; both resolve plug-ins with
`mmrl.plugins.loading`).

A tool spec is a registry name (`"zoom_in"`), `"pkg.module:function"` or `"path/to/file.py:function"`. A tool is

    fn(arguments: dict, state: TrajectoryState, **kwargs) -> ToolResult | str | PIL.Image | ToolImage
                                                           | list/tuple of str and images | dict (ToolResult's fields)

`arguments` are the policy's, parsed from its call (untrusted: check them; raise `ToolArgumentError` with a message
the policy should see); `state` holds the trajectory's images with their `Geometry` (`mmrl.tools.types`); `kwargs`
come from config. A tool's `schema` — the JSON schema of its arguments as chat templates take it (`tools=[…]`,
OpenAI's function format) — is declared at registration, or by a plug-in as a `schema` attribute of its function
(`{"description": …, "parameters": {…}}`); the arguments a call may pass are checked against it.
"""

from __future__ import annotations

from typing import Any, Callable

from mmrl.plugins.loading import PluginSpecError, default_name, resolve
from mmrl.registry import Registry

__all__ = ["TOOLS", "ToolSpecError", "chat_schema", "default_name", "get", "names", "register"]

ToolFn = Callable[..., Any]

TOOLS: Registry[ToolFn] = Registry("tool")


class ToolSpecError(PluginSpecError):
    """A plug-in tool spec cannot be resolved (missing file/module/attribute, or not callable)."""


def register(name: str, *, description: str, parameters: dict[str, Any]) -> Callable[[ToolFn], ToolFn]:
    """Decorator: register a tool under `name`, with the `description` and JSON-schema `parameters` (an object
    schema: `properties`, `required`) the policy is shown."""

    def deco(fn: ToolFn) -> ToolFn:
        fn.schema = {"description": description, "parameters": parameters}
        return TOOLS.register(name)(fn)

    return deco


def names() -> list[str]:
    """The registered tool names, sorted."""
    return TOOLS.names()


def get(spec: str) -> ToolFn:
    """Resolve a tool spec (registry name, `pkg.module:function` or `path/file.py:function`) to a callable."""
    return resolve(spec, TOOLS, kind="tool", error=ToolSpecError)


def chat_schema(declared: Any, name: str) -> dict[str, Any] | None:
    """The chat template's description (`{"type": "function", "function": {…}}`) of a tool called `name` whose
    function declares `declared` (its `schema` attribute: `{"description", "parameters"}`), or None without one."""
    if not isinstance(declared, dict):
        return None
    parameters = declared.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "function",
            "function": {"name": name, "description": str(declared.get("description", "")), "parameters": parameters}}
