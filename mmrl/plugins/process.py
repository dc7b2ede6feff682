"""A plug-in in a persistent worker process: the worker's loop, its pipe protocol and `IsolatedCall`, the parent's end.

- `IsolatedCall(spec, load=…, timeout_s=…)` starts a worker process (`spawn` context) that runs `load(spec,
  *options)` once — which imports the user's code there and returns `Loaded(fn, is_async, info)` — and then calls
  `fn(*args, **kwargs)` for each `call(*args, **kwargs)`. A hung function cannot be stopped by a thread, so when a
  call takes longer than `timeout_s` the worker is terminated (then killed), the `timeout` exception is raised and
  the next call starts a fresh worker. An exception inside the function comes back as the `error` exception carrying
  the remote traceback; a worker that dies is reported with its real exit code or signal.
- An awaitable result runs in one event loop kept by the worker, under `asyncio.wait_for(…, timeout_s)` (a timed-out
  coroutine is cancelled; the worker survives).
- The worker dies with the trainer (even a SIGKILLed one, even while the plug-in hangs) and its data memory is capped
  at `memory_mb` beyond its start-up: a bigger allocation is a MemoryError, reported as an error naming the cap
  (`mmrl.plugins.workers`).
- Every exception raised has `summary`: the one line (`Type: message`) a report shows.

`load` must be a module-level function (the worker receives it by reference): rewards pass
`mmrl.rewards.process.load_reward`, tools `mmrl.tools.run.load_tool`. Subclasses set `kind` (the word that starts
messages and names the process) and the exception classes (`error`, `timeout`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import multiprocessing as mp
import multiprocessing.util  # noqa: F401  (registers its atexit hook, which joins live children, before ours)
import os
import sys
import threading
import traceback
import weakref
from typing import Any, Callable, NamedTuple

from mmrl.plugins.workers import cap_memory, die_with_parent, exit_text

_ASYNC_GRACE_S = 2.0  # extra parent-side wait for async functions, which time out inside the worker
_START_TIMEOUT_S = 120.0  # importing the plug-in in a fresh interpreter; not counted against timeout_s


class PluginError(RuntimeError):
    """A plug-in raised, or its worker failed (for isolated plug-ins the message holds the remote traceback)."""


class PluginTimeout(PluginError):
    """A plug-in did not return within its `timeout_s`."""


class Loaded(NamedTuple):
    """What a `load` function returns in the worker: the function to call, whether it is a coroutine function (the
    parent then waits a little longer, as the timeout happens inside the worker), and `info` for the parent."""

    fn: Callable
    is_async: bool
    info: Any = None


class _AsyncTimeout(Exception):
    pass


# ----------------------------------------------------------------------------------------------- worker
def _describe(exc: BaseException) -> tuple[str, str]:
    """(`Type: message` on one line, the formatted traceback) of an exception being handled in the worker."""
    message = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__), traceback.format_exc()


def _await(awaitable, timeout_s: float, loop: asyncio.AbstractEventLoop):
    try:
        return loop.run_until_complete(asyncio.wait_for(awaitable, timeout_s))
    except asyncio.TimeoutError:
        raise _AsyncTimeout() from None


def _worker(conn, load: Callable[..., Loaded], spec: str, options: tuple, kind: str, timeout_s: float,
            parent_pid: int, pdeathsig: bool, memory_mb: int | None) -> None:
    """The worker's loop. It sends `("ready", (is_async, info))` once `load` succeeds (else `("error", (summary,
    traceback))` and ends), then answers each `(args, kwargs)` it receives with `("ok", result)`, `("timeout",
    message)`, `("memory", …)` or `("error", …)`, until `None` or a closed pipe."""
    die_with_parent(parent_pid, pdeathsig=pdeathsig)
    try:
        cap_memory(memory_mb)  # before the plug-in is imported: its imports count too
        fn, is_async, info = load(spec, *options)
    except BaseException as exc:
        conn.send(("error", _describe(exc)))
        conn.close()
        return
    conn.send(("ready", (is_async, info)))
    loop = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if msg is None:
            break
        args, kwargs = msg
        try:
            out = fn(*args, **kwargs)
            if inspect.isawaitable(out):
                loop = loop or asyncio.new_event_loop()
                out = _await(out, timeout_s, loop)
            reply = ("ok", out)
        except _AsyncTimeout:
            reply = ("timeout", f"async {kind} did not finish within {timeout_s:g} s")
        except MemoryError as exc:  # under memory_mb; the parent restarts the worker
            reply = ("memory", _describe(exc))
        except BaseException as exc:
            reply = ("error", _describe(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result
            conn.send(("error", _describe(exc)))
    if loop is not None:
        loop.close()
    conn.close()


# ----------------------------------------------------------------------------------------------- parent
_START_LOCK = threading.Lock()
_OUT_OF_MEMORY = ("MemoryError", "failed to map segment", "Cannot allocate memory")  # a load failing under the cap


@contextlib.contextmanager
def _main_not_reimported():
    """`spawn` re-runs the parent's `__main__` script in the child; the worker needs nothing from it, and a
    user script without an `if __name__ == "__main__":` guard would otherwise build its trainer again there."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        for k in saved:
            setattr(main, k, None) if k == "__spec__" else delattr(main, k)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


_LIVE: "weakref.WeakSet[IsolatedCall]" = weakref.WeakSet()


def _close_all() -> None:
    for r in list(_LIVE):
        r.close()


atexit.register(_close_all)  # runs before multiprocessing's own exit hook (LIFO), which would wait on workers


class IsolatedCall:
    """A plug-in run in a persistent worker process; see the module docstring.

    `load(spec, *options)` runs in the worker and returns a `Loaded`; its `info` is kept as `self.info`.
    `memory_mb`: the worker's data-memory cap beyond its start-up (None: no cap); `config_key` (`rewards[2]`) names
    where it is set in messages. `spec` and `timeout_s` may be changed between calls: a worker started later (after
    a timeout or a death) uses the new ones."""

    kind = "plug-in"
    error: type[Exception] = PluginError
    timeout: type[Exception] = PluginTimeout

    def __init__(self, spec: str, *, load: Callable[..., Loaded], options: tuple = (), timeout_s: float,
                 name: str | None = None, memory_mb: int | None = None, config_key: str | None = None):
        if not timeout_s > 0:
            raise ValueError(f"{self.kind} {spec!r}: timeout_s must be > 0, got {timeout_s!r}")
        if memory_mb is not None and not memory_mb >= 1:
            raise ValueError(f"{self.kind} {spec!r}: memory_mb must be >= 1 or None, got {memory_mb!r}")
        self.spec, self.timeout_s, self.memory_mb = spec, float(timeout_s), memory_mb
        self.load, self.options = load, tuple(options)
        self.__name__ = name or spec
        self._cap_key = f"{config_key}.memory_mb" if config_key else f"memory_mb of {self.kind} {self.__name__!r}"
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()
        self.info: Any = None
        _LIVE.add(self)
        self._start()  # a bad spec fails here, at construction

    def _cap(self) -> str:
        return f"its memory cap of {self.memory_mb} MB ({self._cap_key}; raise it, or null for no cap)"

    def _failure(self, cls: type[Exception], summary: str, detail: str = "", *, typed: bool = False) -> Exception:
        """A `cls` for this plug-in whose `summary` is the line a report shows: `Type: message`, the type being the
        plug-in's own where `typed` (the summary names it), else `cls`'s."""
        exc = cls(f"{self.kind} {self.spec!r}: {summary}" + (f"\n{detail}" if detail else ""))
        exc.summary = summary if typed else f"{cls.__name__}: {summary}"
        return exc

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        # the kernel's parent-death signal follows the starting thread: only ask for it from the main thread
        pdeathsig = threading.current_thread() is threading.main_thread()
        proc = self._ctx.Process(
            target=_worker, name=f"mmrl-{self.kind}:{self.__name__}",
            args=(child, self.load, self.spec, self.options, self.kind, self.timeout_s, os.getpid(), pdeathsig,
                  self.memory_mb))
        with _START_LOCK, _main_not_reimported():
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(max(_START_TIMEOUT_S, self.timeout_s)):
            self._stop()
            raise self.timeout(f"{self.kind} {self.spec!r}: the worker did not start within {_START_TIMEOUT_S:g} s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            raise self._died("while starting") from None
        if kind != "ready":
            self._stop()
            summary, tb = payload
            hint = ""
            if self.memory_mb is not None and any(s in tb for s in _OUT_OF_MEMORY):
                hint = f"\n(the worker runs under {self._cap()})"
            raise self.error(f"{self.kind} {self.spec!r}: loading it in the worker failed: {summary}\n{tb}{hint}")
        is_async, self.info = payload
        # an async function times out inside the worker (which survives); give that a moment to report back
        self._wait_s = self.timeout_s + (_ASYNC_GRACE_S if is_async else 0.0)

    def _died(self, when: str = "") -> Exception:
        """The worker is gone: reap it for its real exit status and describe it."""
        proc = self._proc
        if proc is not None:
            proc.join(2.0)  # the pipe closes a moment before the process is reaped
        code = proc.exitcode if proc is not None else None
        self._stop()
        summary = f"the worker process died{' ' + when if when else ''} ({exit_text(code)})"
        if self.memory_mb is not None and code is not None and code < 0:
            summary += f"; it ran under a memory cap of {self.memory_mb} MB ({self._cap_key})"
        return self._failure(self.error, summary)

    def _stop(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if proc is not None:
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)  # reaps it: no zombie

    def call(self, /, *args, **kwargs) -> Any:
        """`fn(*args, **kwargs)` in the worker (started afresh if the last one is gone); raises `error` or
        `timeout` (each with `summary`) instead of returning when the call fails."""
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._stop()
                self._start()
            try:
                self._conn.send((args, kwargs))
                ready = self._conn.poll(self._wait_s)
                reply = self._conn.recv() if ready else None
            except (EOFError, OSError, BrokenPipeError):
                raise self._died() from None
            if reply is None:
                self._stop()  # a fresh worker starts on the next call
                raise self._failure(self.timeout, f"did not return within {self.timeout_s:g} s; worker killed")
            kind, value = reply
            if kind == "memory" and self.memory_mb is not None:
                self._stop()  # a fresh worker, with a clean heap, starts on the next call
                raise self._failure(self.error, f"MemoryError: the plug-in exceeded {self._cap()}", value[1],
                                    typed=True)
        if kind == "ok":
            return value
        if kind == "timeout":
            raise self._failure(self.timeout, value)
        summary, tb = value
        raise self._failure(self.error, summary, tb, typed=True)

    def close(self) -> None:
        """Ask the worker to exit, then make sure it has (terminate, kill) and reap it."""
        with self._lock:
            if self._conn is not None and self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(None)
                    self._proc.join(2.0)
                except (OSError, BrokenPipeError):
                    pass
            self._stop()
        _LIVE.discard(self)

    def __del__(self):
        try:
            self._stop()
        except Exception:
            pass
