"""Tool calls read from the policy's text: `parse_calls(text, fmt)` → one `ToolCall` per call, in order.

The model's text is untrusted: it is only ever matched by a regular expression (run under a timeout: a user's
pattern may backtrack catastrophically on adversarial text) and decoded with `json.loads` (bounded in length; never
eval'd). A call that cannot be read is a `ToolCall` with `error` set — the observation the policy then sees — so a
malformed call is the policy's mistake to learn from, never a crash.

Formats (`CallFormat`; `FORMATS` names the built-in ones):

- `qwen` (default): Qwen2.5-VL's own (Hermes-style) call, as its chat template teaches it:
  `<tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [10, 20, 200, 240]}}</tool_call>`. The JSON object names
  the tool and its arguments. A last call left open (generation stopped at `</tool_call>`, which engines may strip)
  is read as if closed.
- `box`: the compact `<box>[x1, y1, x2, y2]</box>` (or `<box>x1, y1, x2, y2</box>`), a `zoom_in` of that box.
- `region`: `<region>Q</region>`, the built-in `region` tool on grid cell Q (the `zoom` task's call).
- any `CallFormat(pattern, tool)`: with `tool` set, every match calls that tool and the pattern's named groups are
  its arguments (each value decoded as JSON when it is JSON, as a list of numbers when it is one, else kept as
  text): the calibration task's `<box>Q</box>` (a quadrant) is `CallFormat(r"<box>\\s*(?P<quadrant>\\d)\\s*</box>",
  tool="quadrant")`. Without `tool`, the pattern's first group is a JSON call as in `qwen`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import regex

MAX_CALL_CHARS = 20_000  # a call's text beyond this is an error, not decoded
PATTERN_TIMEOUT_S = 1.0  # one text's matching; past it, the text's calls are one error

_NUMBERS = re.compile(r"\s*\[?\s*(-?\d+(?:\.\d+)?(?:\s*,\s*|\s+))*-?\d+(?:\.\d+)?\s*\]?\s*")


@dataclass(frozen=True)
class CallFormat:
    """How calls are written: a regular expression (Python syntax, `.` matches newlines) whose every match is one
    call, and `tool` — the tool every match calls, its named groups the arguments — or None: the first group is a
    JSON object `{"name": …, "arguments": {…}}`."""

    pattern: str
    tool: str | None = None

    def __post_init__(self) -> None:
        try:
            compiled = regex.compile(self.pattern, regex.DOTALL)
        except regex.error as exc:
            raise ValueError(f"tool call pattern {self.pattern!r} is not a regular expression: {exc}") from None
        if self.tool is None and compiled.groups < 1:
            raise ValueError(f"tool call pattern {self.pattern!r} needs a group holding the JSON call (or a `tool`)")


FORMATS: dict[str, CallFormat] = {
    "qwen": CallFormat(r"<tool_call>(.*?)(?:</tool_call>|\Z)"),
    "box": CallFormat(r"<box>(?P<bbox_2d>.*?)</box>", tool="zoom_in"),
    "region": CallFormat(r"<region>(?P<region>.*?)</region>", tool="region"),
}


def call_format(fmt: str | CallFormat | Mapping[str, Any]) -> CallFormat:
    """A format from a name in `FORMATS`, a `CallFormat`, or a mapping `{pattern, tool}` (config)."""
    if isinstance(fmt, CallFormat):
        return fmt
    if isinstance(fmt, str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown tool call format {fmt!r} (valid: {', '.join(FORMATS)}, or {{pattern, tool}})")
        return FORMATS[fmt]
    if isinstance(fmt, Mapping) and set(fmt) <= {"pattern", "tool"} and "pattern" in fmt:
        return CallFormat(str(fmt["pattern"]), fmt.get("tool"))
    raise ValueError(f"a tool call format is a name ({', '.join(FORMATS)}) or {{pattern, tool}}, got {fmt!r}")


@dataclass(frozen=True)
class ToolCall:
    """One call as written: the tool it names (None when unreadable), its arguments, where it is in the text
    (`span`, character offsets) and, when it cannot be used, `error`: the observation the policy sees."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    span: tuple[int, int] = (0, 0)
    error: str | None = None


def parse_calls(text: str, fmt: str | CallFormat | Mapping[str, Any] = "qwen", *,
                timeout_s: float = PATTERN_TIMEOUT_S) -> list[ToolCall]:
    """Every call in `text` in order (empty: no call — the trajectory ends). Never raises on any text."""
    form = call_format(fmt)
    if not isinstance(text, str):
        return []
    try:
        matches = list(regex.finditer(form.pattern, text, regex.DOTALL, timeout=timeout_s))
    except TimeoutError:
        return [ToolCall(None, {}, (0, len(text)), f"Error: the tool calls could not be read within {timeout_s:g} s")]
    calls = []
    for m in matches:
        if not m.group(0):
            continue  # an empty match (e.g. the open-call branch at the very end) is no call
        calls.append(_compact(form.tool, m) if form.tool is not None else _json_call(m.group(1), m.span()))
    return calls


def _compact(tool: str, m: Any) -> ToolCall:
    arguments = {k: _value(v) for k, v in m.groupdict().items() if v is not None}
    return ToolCall(tool, arguments, m.span())


def _value(raw: str) -> Any:
    """A compact call's argument: JSON when it is JSON, a list of numbers when it is one (`10, 20, 30`), else text."""
    if len(raw) > MAX_CALL_CHARS:
        return raw[:MAX_CALL_CHARS]
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        pass
    if len(raw) <= 200 and _NUMBERS.fullmatch(raw):
        return [float(v) if "." in v else int(v) for v in re.findall(r"-?\d+(?:\.\d+)?", raw)]
    return raw.strip()


def _json_call(payload: str | None, span: tuple[int, int]) -> ToolCall:
    """A `{"name": …, "arguments": {…}}` call; `arguments` may also be a JSON string holding the object."""
    payload = (payload or "").strip()
    if not payload:
        return ToolCall(None, {}, span, "Error: empty tool call; write {\"name\": ..., \"arguments\": {...}}")
    if len(payload) > MAX_CALL_CHARS:
        return ToolCall(None, {}, span, f"Error: the tool call is longer than {MAX_CALL_CHARS} characters")
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        where = f" ({exc.msg} at character {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        return ToolCall(None, {}, span, f"Error: the tool call is not valid JSON{where}")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, {}, span, 'Error: a tool call is a JSON object {"name": ..., "arguments": {...}}')
    name, arguments = obj["name"], obj.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            pass
    if not isinstance(arguments, dict):
        return ToolCall(name, {}, span, f"Error: the arguments of {name!r} must be a JSON object")
    if not _finite(arguments):
        return ToolCall(name, {}, span, f"Error: the arguments of {name!r} hold a number that is not finite")
    return ToolCall(name, arguments, span)


def _finite(value: Any, depth: int = 0) -> bool:
    """No NaN / Infinity (which Python's JSON accepts) anywhere in `value`."""
    if isinstance(value, float):
        return math.isfinite(value)
    if depth > 32:
        return True
    if isinstance(value, dict):
        return all(_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v, depth + 1) for v in value)
    return True
