"""Tools a policy calls in multi-turn rollouts ("thinking with images", issue 19): plug-ins like rewards.

- `calls`: reading calls from the policy's untrusted text (`parse_calls(text, fmt)`: Qwen2.5-VL's
  `<tool_call>{"name": …, "arguments": {…}}</tool_call>` by default, `<box>…</box>` or any `CallFormat`).
- `types`: what tools read and return — the trajectory's images, each with its `Geometry` and, for a crop, the
  `Frame` that maps it to the original image's pixels (`TrajectoryState`, `ToolImage`, `ImageLimits`), and the
  result of a call (`ToolResult`: text, images, reward, done, error).
- `registry`: tool names, `module:function` / `file.py:function` plug-ins (`mmrl.plugins`), the schemas chat
  templates show the policy; built-ins in `builtin`: `zoom_in`, `crop`, `rotate`.
- `run`: one call that cannot crash the rollout (`make_tool`, `run_tool`: plug-ins isolated in worker processes with
  timeouts; exceptions, hangs, malformed results and oversized images become error results the policy sees).
- `toolbox`: a rollout's tools together (`Toolbox`: parse, run, count `tool/<name>/calls|errors|timeouts`).
- `checks`: config checks beside the registry.

Dependencies point down: `mmrl.tools` uses `perception`, `plugins` and the root; the rollout loop will use it.
"""

from mmrl.tools.registry import TOOLS, ToolSpecError, chat_schema, get, names, register
from mmrl.tools import builtin  # noqa: F401  (importing registers the built-in tools)
from mmrl.tools.calls import FORMATS, CallFormat, ToolCall, call_format, parse_calls
from mmrl.tools.run import Tool, make_tool, run_tool
from mmrl.tools.toolbox import ToolMetrics, Toolbox
from mmrl.tools.types import ImageLimits, ToolArgumentError, ToolImage, ToolResult, TrajectoryState

__all__ = [
    "FORMATS", "TOOLS", "CallFormat", "ImageLimits", "Tool", "ToolArgumentError", "ToolCall", "ToolImage",
    "ToolMetrics", "ToolResult", "ToolSpecError", "Toolbox", "TrajectoryState", "builtin", "call_format",
    "chat_schema", "get", "make_tool", "names", "parse_calls", "register", "run_tool",
]
