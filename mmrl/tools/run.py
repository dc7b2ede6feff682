"""Running one tool call so that nothing it does can crash the rollout: `make_tool` (a configured tool, isolated like
rewards) and `run_tool` (a call → a `ToolResult`, always).

Where a tool runs (`isolate`): `auto` runs registry names in-process and any `module:function` / `file.py:function`
plug-in in a persistent worker process (`mmrl.plugins.process`: killed and restarted past `timeout_s`, its memory
capped at `memory_mb`, dying with the trainer); `always` / `never` force one or the other. A synchronous in-process
function cannot be stopped, so `timeout_s` bounds in-process tools only when they are async.

`run_tool` turns every failure into an error result whose text is what the policy sees next — arguments the tool's
schema does not take, a `ToolArgumentError`, an exception, a timeout, a dead worker, a result of the wrong shape, an
image beyond `state.limits.max_pixels` — and counts each call in `metrics` (`ToolMetrics`): `tool/<name>/calls`,
`tool/<name>/errors` (every failure but timeouts), `tool/<name>/timeouts`.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from mmrl.perception.frames import Frame
from mmrl.plugins.loading import is_plugin
from mmrl.plugins.process import IsolatedCall, Loaded, PluginError, PluginTimeout
from mmrl.registry import closest
from mmrl.tools.registry import chat_schema, default_name, get
from mmrl.tools.types import ToolArgumentError, ToolImage, ToolResult, TrajectoryState

ISOLATE = ("auto", "always", "never")
MEMORY_MB = 4096  # ToolConfig.memory_mb's default (see mmrl.config)


class IsolatedTool(IsolatedCall):
    """A tool in a persistent worker process (`mmrl.plugins.process.IsolatedCall`); `info` is its declared schema."""

    kind = "tool"


def load_tool(spec: str) -> Loaded:
    """In the worker: tool `spec`, called as `(arguments, state, kwargs)`; `info` = its `schema` attribute."""
    fn = get(spec)

    def call(arguments: dict[str, Any], state: TrajectoryState, kwargs: dict[str, Any]) -> Any:
        return fn(arguments, state, **kwargs)

    declared = getattr(fn, "schema", None)
    return Loaded(call, inspect.iscoroutinefunction(fn), declared if isinstance(declared, dict) else None)


@dataclass
class Tool:
    """A tool as configured: the `name` the policy calls it by, the function (in-process, or an `IsolatedTool`), the
    config's `kwargs`, `timeout_s` and the chat template's `schema` of it (None: it declares none)."""

    name: str
    fn: Callable[..., Any] | IsolatedTool
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 10.0
    schema: dict[str, Any] | None = None
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)

    def __call__(self, arguments: dict[str, Any], state: TrajectoryState) -> Any:
        if isinstance(self.fn, IsolatedTool):
            return self.fn.call(arguments, state.portable(), self.kwargs)
        out = self.fn(arguments, state, **self.kwargs)
        if inspect.isawaitable(out):
            self._loop = self._loop or asyncio.new_event_loop()
            try:
                out = self._loop.run_until_complete(asyncio.wait_for(out, self.timeout_s))
            except asyncio.TimeoutError:
                raise PluginTimeout(f"async tool did not finish within {self.timeout_s:g} s") from None
        return out

    def close(self) -> None:
        if isinstance(self.fn, IsolatedTool):
            self.fn.close()
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def make_tool(fn: str, *, name: str | None = None, kwargs: dict[str, Any] | None = None, timeout_s: float = 10.0,
              isolate: str = "auto", memory_mb: int | None = MEMORY_MB, config_key: str | None = None) -> Tool:
    """A `Tool` from config fields (`ToolConfig`): resolve `fn`, isolate it per `isolate` (`auto`: registry names
    in-process, plug-ins in a worker capped at `memory_mb`). A bad spec fails here, at start-up."""
    if isolate not in ISOLATE:
        raise ValueError(f"tool {fn!r}: isolate {isolate!r} is not one of {', '.join(ISOLATE)}")
    name = name or default_name(fn)
    if isolate == "always" or (isolate == "auto" and is_plugin(fn)):
        worker = IsolatedTool(fn, load=load_tool, timeout_s=timeout_s, name=name, memory_mb=memory_mb,
                              config_key=config_key)
        return Tool(name, worker, dict(kwargs or {}), float(timeout_s), chat_schema(worker.info, name))
    local = get(fn)
    return Tool(name, local, dict(kwargs or {}), float(timeout_s),
                chat_schema(getattr(local, "schema", None), name))


# ------------------------------------------------------------------------------------------------ one call
def run_tool(tool: Tool, arguments: dict[str, Any], state: TrajectoryState, metrics: Any = None) -> ToolResult:
    """`tool` called with the policy's `arguments` on `state`: its result, or an error result the policy sees.
    Never raises (but for KeyboardInterrupt and the like). `metrics`: a `ToolMetrics` to count the call in."""
    count = metrics.count if metrics is not None else (lambda key: None)
    count(f"tool/{tool.name}/calls")
    problem = _check_arguments(tool, arguments)
    if problem:
        count(f"tool/{tool.name}/errors")
        return ToolResult.failure(f"Error: {problem}")
    try:
        result = _normalize(tool(arguments, state), tool.name, state)
    except ToolArgumentError as exc:
        result = ToolResult.failure(f"Error: {exc}")
    except PluginTimeout:
        count(f"tool/{tool.name}/timeouts")
        return ToolResult.failure(f"Error: tool {tool.name!r} did not finish within {tool.timeout_s:g} s",
                                  kind="timeout")
    except PluginError as exc:
        result = _crashed(tool.name, getattr(exc, "summary", None) or f"{type(exc).__name__}: {exc}", str(exc))
    except Exception as exc:  # noqa: BLE001 - an in-process tool may raise anything
        result = _crashed(tool.name, f"{type(exc).__name__}: {exc}", "")
    if result.error is not None:
        count(f"tool/{tool.name}/errors")
    return result


def _crashed(name: str, summary: str, detail: str) -> ToolResult:
    """The error result of a tool that raised: one line (a `ToolArgumentError`'s own message, else the exception's
    type and message); the remote traceback, where there is one, in `info["detail"]` for logs."""
    line = summary.strip().splitlines()[0] if summary.strip() else "unknown error"
    if line.startswith("ToolArgumentError: "):
        return ToolResult.failure(f"Error: {line.removeprefix('ToolArgumentError: ')}", detail=detail)
    return ToolResult.failure(f"Error: tool {name!r} failed ({line[:300]})", kind="crash", detail=detail)


def _check_arguments(tool: Tool, arguments: Any) -> str | None:
    """Why `arguments` do not fit the tool's schema (unknown names, missing required ones), or None."""
    if not isinstance(arguments, dict):
        return f"the arguments of {tool.name!r} must be a JSON object"
    if tool.schema is None:
        return None
    parameters = tool.schema["function"]["parameters"]
    known = list((parameters.get("properties") or {}).keys())
    if parameters.get("additionalProperties") is not True:
        for key in arguments:
            if key not in known:
                hint = closest(str(key), known)
                extra = f"; did you mean {hint!r}?" if hint else ""
                return (f"{tool.name!r} has no argument {str(key)[:40]!r}{extra} "
                        f"(arguments: {', '.join(known) or 'none'})")
    missing = [k for k in parameters.get("required", ()) if k not in arguments]
    if missing:
        return f"{tool.name!r} needs the argument {missing[0]!r} (arguments: {', '.join(known)})"
    return None


# ------------------------------------------------------------------------------------------ what it returns
class _Malformed(Exception):
    pass


def _normalize(out: Any, name: str, state: TrajectoryState) -> ToolResult:
    """A tool's return value as a checked `ToolResult` (module docstring of `mmrl.tools.registry`), or an error
    result naming what is wrong with it."""
    try:
        if isinstance(out, ToolResult):
            fields = dict(text=out.text, images=out.images, reward=out.reward, done=out.done, error=out.error,
                          info=out.info)
        elif isinstance(out, dict) and set(out) <= {"text", "images", "reward", "done"}:
            fields = dict(out)
        elif isinstance(out, (str, Image.Image, ToolImage)):
            fields = _parts([out])
        elif isinstance(out, (list, tuple)):
            fields = _parts(list(out))
        else:
            raise _Malformed(f"a {type(out).__name__}")
        return _checked(fields, state)
    except _Malformed as exc:
        return ToolResult.failure(f"Error: tool {name!r} returned something that is not a tool result ({exc})",
                                  kind="malformed")
    except _OverBudget as exc:
        return ToolResult.failure(f"Error: tool {name!r} returned {exc}", kind="budget")


def _parts(items: list[Any]) -> dict[str, Any]:
    texts = [x for x in items if isinstance(x, str)]
    images = [x for x in items if isinstance(x, (Image.Image, ToolImage))]
    if len(texts) + len(images) != len(items):
        odd = next(x for x in items if not isinstance(x, (str, Image.Image, ToolImage)))
        raise _Malformed(f"a list holding a {type(odd).__name__}")
    return {"text": "\n".join(texts), "images": images}


class _OverBudget(Exception):
    pass


def _checked(fields: dict[str, Any], state: TrajectoryState) -> ToolResult:
    text, reward, done = fields.get("text", ""), fields.get("reward"), fields.get("done", False)
    error, info = fields.get("error"), fields.get("info") or {}
    if not isinstance(text, str):
        raise _Malformed(f"text is a {type(text).__name__}")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))
                               or not math.isfinite(reward)):
        raise _Malformed(f"reward {str(reward)[:40]} is not a finite number")
    if not isinstance(done, bool):
        raise _Malformed(f"done is a {type(done).__name__}, not a bool")
    if error is not None and not isinstance(error, str):
        raise _Malformed(f"error is a {type(error).__name__}")
    images = fields.get("images") or ()
    if not isinstance(images, (list, tuple)):
        raise _Malformed(f"images is a {type(images).__name__}")
    checked = tuple(_image(im, state) for im in images)
    if error is not None:
        return ToolResult(text=text or error, reward=None if reward is None else float(reward), done=done,
                          error=error, info=dict(info))
    return ToolResult(text, checked, None if reward is None else float(reward), done, None, dict(info))


def _image(im: Any, state: TrajectoryState) -> ToolImage:
    """A returned image with the `Geometry` the policy's processor gives it (a plug-in's own geometry is not
    trusted); a `ToolImage`'s `origin` and `frame` are kept when they point at an image of the trajectory."""
    origin, frame = None, None
    if isinstance(im, ToolImage):
        origin, frame, im = im.origin, im.frame, im.image
        if origin is not None and (isinstance(origin, bool) or not isinstance(origin, int)
                                   or not 0 <= origin < len(state.images)):
            raise _Malformed(f"an image whose origin {origin!r} is not an image of the trajectory")
        if frame is not None and not isinstance(frame, Frame):
            raise _Malformed(f"an image whose frame is a {type(frame).__name__}")
    if not isinstance(im, Image.Image):
        raise _Malformed(f"an image that is a {type(im).__name__}")
    w, h = im.size
    if w < 1 or h < 1:
        raise _Malformed(f"an empty {w}x{h} image")
    if w * h > state.limits.max_pixels:
        raise _OverBudget(f"a {w}x{h} image ({w * h} pixels), over the limit of {state.limits.max_pixels} pixels")
    im = im if im.mode == "RGB" else im.convert("RGB")
    return ToolImage(im, state.limits.geometry(w, h), origin, frame)
