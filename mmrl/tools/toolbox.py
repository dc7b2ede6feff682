"""A rollout's tools together: `Toolbox` reads calls from the policy's text in one `CallFormat`, runs each on the
trajectory's state (never raising) and counts them in `ToolMetrics`.

Metric names (stable, per step: `ToolMetrics.pop`): `tool/<name>/calls`, `tool/<name>/errors` (failed calls but
timeouts: arguments the tool does not take or cannot use, exceptions, malformed results, images over the pixel
limit), `tool/<name>/timeouts`, and `tool/invalid_calls`: calls that could not be read or name no tool of the box
(the policy's text never becomes a metric name).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mmrl.registry import closest
from mmrl.tools.calls import CallFormat, ToolCall, call_format, parse_calls
from mmrl.tools.run import Tool, make_tool, run_tool
from mmrl.tools.types import ToolResult, TrajectoryState

if TYPE_CHECKING:
    from mmrl.config import ToolConfig

INVALID = "tool/invalid_calls"


class ToolMetrics:
    """Counters of tool calls, safe to share between threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def pop(self) -> dict[str, float]:
        """The counts since the last `pop` (e.g. one step's), as metrics; the counters restart at 0."""
        with self._lock:
            out, self.counts = {k: float(v) for k, v in sorted(self.counts.items())}, Counter()
        return out


class Toolbox:
    """The tools a policy may call (by their configured names), the `fmt` it writes calls in, and the counters."""

    def __init__(self, tools: Sequence[Tool], fmt: str | CallFormat | Mapping[str, Any] = "qwen",
                 metrics: ToolMetrics | None = None):
        self.tools = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ValueError(f"duplicate tool names: {[t.name for t in tools]}")
        self.format = call_format(fmt)
        self.metrics = metrics or ToolMetrics()

    @classmethod
    def from_configs(cls, configs: Sequence[ToolConfig], fmt: str | CallFormat | Mapping[str, Any] = "qwen", *,
                     key: str = "tools") -> "Toolbox":
        """The tools of `configs` (`ToolConfig`; `key`: where the list sits in the config, for messages)."""
        tools: list[Tool] = []
        try:
            for i, c in enumerate(configs):
                tools.append(make_tool(c.fn, name=c.name, kwargs=c.kwargs, timeout_s=c.timeout_s, isolate=c.isolate,
                                       memory_mb=c.memory_mb,
                                       config_key=f"{key}[{i}]"))
        except BaseException:
            for t in tools:
                t.close()
            raise
        return cls(tools, fmt)

    def parse(self, text: str) -> list[ToolCall]:
        """The calls in the policy's `text`, in order (`mmrl.tools.calls.parse_calls`)."""
        return parse_calls(text, self.format)

    def run(self, call: ToolCall, state: TrajectoryState) -> ToolResult:
        """One parsed call's result on `state`; an unreadable call or an unknown tool is an error result."""
        if call.error is not None:
            self.metrics.count(INVALID)
            return ToolResult.failure(call.error, kind="invalid")
        tool = self.tools.get(call.name) if isinstance(call.name, str) else None
        if tool is None:
            self.metrics.count(INVALID)
            names = list(self.tools)
            hint = closest(str(call.name), names)
            extra = f"; did you mean {hint!r}?" if hint else ""
            return ToolResult.failure(f"Error: there is no tool {str(call.name)[:40]!r}{extra} "
                                      f"(tools: {', '.join(names)})", kind="invalid")
        return run_tool(tool, call.arguments, state, self.metrics)

    def schemas(self) -> list[dict[str, Any]]:
        """The tools' descriptions for the chat template (`tools=[…]`), those that declare one."""
        return [t.schema for t in self.tools.values() if t.schema is not None]

    def close(self) -> None:
        for t in self.tools.values():
            t.close()

    def __enter__(self) -> "Toolbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
