"""A reward in a persistent worker process: the worker's loop and pipe protocol, `IsolatedReward`, `RewardPool`.

- `IsolatedReward(spec, timeout_s=…, style=…)` runs a user reward in a persistent worker process (`spawn`
  context; the worker resolves the spec itself with `mmrl.rewards.registry.get`). Each call sends
  `(completions, columns)` over a pipe and waits `timeout_s`; a hung function cannot be stopped by a thread,
  so on timeout the worker is terminated (then killed), `RewardTimeout` is raised and the next call starts a
  fresh worker. An exception inside the function comes back as `RewardError` carrying the remote traceback.
  Async functions run in one event loop kept by the worker, each call under `asyncio.wait_for(…, timeout_s)`
  (a timed-out coroutine is cancelled; the worker survives).
- The worker dies with the trainer (even a SIGKILLed one, even while the plug-in hangs), its data memory is capped
  at `memory_mb` beyond its start-up (a bigger allocation is a MemoryError, reported as an error naming the cap),
  and a dead worker is reported with its real exit code or signal (`mmrl.rewards.workers`).
- Every failing call goes to the `ErrorReport` given as `report` (`mmrl.rewards.errors`).
- Only picklable columns cross the process boundary: each column is pickled on its own and a column that
  fails (an open file, a lock, a live model …) is silently left out of the isolated call.
- `RewardPool(spec, workers=K, …)`: K such workers for one plug-in; each call's completions are split into K
  contiguous chunks scored in parallel (for slow CPU-bound rewards).

This module depends on the registry, not on the `mmrl.rewards` package: built-in rewards are registered by the
package's `__init__`, which Python runs before any of its submodules (this one included) in the worker too.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import multiprocessing as mp
import multiprocessing.util  # noqa: F401  (registers its atexit hook, which joins live children, before ours)
import os
import pickle
import sys
import threading
import traceback
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mmrl.rewards.compose import RewardError, RewardTimeout
from mmrl.rewards.errors import ErrorReport, watch
from mmrl.rewards.registry import get
from mmrl.rewards.styles import STYLES, adapt, required_columns, run_async
from mmrl.rewards.workers import cap_memory, die_with_parent, exit_text

_ASYNC_GRACE_S = 2.0  # extra parent-side wait for async functions, which time out inside the worker
_START_TIMEOUT_S = 120.0  # importing the plug-in in a fresh interpreter; not counted against timeout_s


# ----------------------------------------------------------------------------------------------- worker
def _describe(exc: BaseException) -> tuple[str, str]:
    """(`Type: message` on one line, the formatted traceback) of an exception being handled in the worker."""
    message = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__), traceback.format_exc()


def _worker(conn, spec: str, style: str, timeout_s: float, parent_pid: int, pdeathsig: bool,
            memory_mb: int | None) -> None:
    """The worker's loop. It sends `("ready", (is_async, required_columns))` once the reward resolves (else
    `("error", (summary, traceback))` and ends), then answers each `(completions, columns)` it receives with
    `("ok", (values, logged))`, `("timeout", message)`, `("memory", …)` or `("error", …)`, until `None` or a closed
    pipe."""
    die_with_parent(parent_pid, pdeathsig=pdeathsig)
    try:
        cap_memory(memory_mb)  # before the plug-in is imported: its imports count too
        raw = get(spec)
        fn = adapt(raw, style)
    except BaseException as exc:
        conn.send(("error", _describe(exc)))
        conn.close()
        return
    conn.send(("ready", (inspect.iscoroutinefunction(raw), required_columns(raw, style))))
    loop = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if msg is None:
            break
        completions, columns = msg
        try:
            out = fn(completions, **columns)
            if inspect.isawaitable(out):
                loop = loop or asyncio.new_event_loop()
                out = run_async(out, timeout_s, loop)
            reply = ("ok", (list(out), dict(getattr(fn, "logged", {}))))
        except RewardTimeout as exc:
            reply = ("timeout", str(exc))
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


_LIVE: "weakref.WeakSet[IsolatedReward]" = weakref.WeakSet()


def _close_all() -> None:
    for r in list(_LIVE):
        r.close()


atexit.register(_close_all)  # runs before multiprocessing's own exit hook (LIFO), which would wait on workers


def _failure(cls: type[RewardError], spec: str, summary: str, detail: str = "", *, typed: bool = False) -> RewardError:
    """A RewardError (or RewardTimeout) for reward `spec` whose `summary` is the line an ErrorReport shows:
    `Type: message`, the type being the plug-in's own where `typed` (the summary names it), else `cls`'s."""
    exc = cls(f"reward {spec!r}: {summary}" + (f"\n{detail}" if detail else ""))
    exc.summary = summary if typed else f"{cls.__name__}: {summary}"
    return exc


class IsolatedReward:
    """A reward run in a persistent worker process; see the module docstring.

    `memory_mb`: the worker's data-memory cap beyond its start-up (None: no cap); `config_key` (`rewards[2]`)
    names where it is set in messages; `report` receives every failing call (None: the caller reports)."""

    def __init__(self, spec: str, *, timeout_s: float, style: str = "native", name: str | None = None,
                 memory_mb: int | None = None, config_key: str | None = None, report: ErrorReport | None = None):
        if style not in STYLES:
            raise ValueError(f"reward style {style!r} is not one of {', '.join(STYLES)}")
        if not timeout_s > 0:
            raise ValueError(f"reward {spec!r}: timeout_s must be > 0, got {timeout_s!r}")
        if memory_mb is not None and not memory_mb >= 1:
            raise ValueError(f"reward {spec!r}: memory_mb must be >= 1 or None, got {memory_mb!r}")
        self.spec, self.style, self.timeout_s, self.memory_mb = spec, style, float(timeout_s), memory_mb
        self.__name__ = name or spec
        self.report = report
        self._cap_key = f"{config_key}.memory_mb" if config_key else f"memory_mb of reward {self.__name__!r}"
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()
        self.required: list[str] = []  # columns the function needs (reported by the worker)
        self.logged: dict[str, float] = {}  # what the last call reported through TRL's log_metric
        _LIVE.add(self)
        self._start()  # a bad spec fails here, at construction

    def _cap(self) -> str:
        return f"its memory cap of {self.memory_mb} MB ({self._cap_key}; raise it, or null for no cap)"

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        # the kernel's parent-death signal follows the starting thread: only ask for it from the main thread
        pdeathsig = threading.current_thread() is threading.main_thread()
        proc = self._ctx.Process(
            target=_worker, name=f"mmrl-reward:{self.__name__}",
            args=(child, self.spec, self.style, self.timeout_s, os.getpid(), pdeathsig, self.memory_mb))
        with _START_LOCK, _main_not_reimported():
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(max(_START_TIMEOUT_S, self.timeout_s)):
            self._stop()
            raise RewardTimeout(f"reward {self.spec!r}: the worker did not start within {_START_TIMEOUT_S:g} s")
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
            raise RewardError(f"reward {self.spec!r}: loading it in the worker failed: {summary}\n{tb}{hint}")
        is_async, self.required = payload
        # an async function times out inside the worker (which survives); give that a moment to report back
        self._wait_s = self.timeout_s + (_ASYNC_GRACE_S if is_async else 0.0)

    def _died(self, when: str = "") -> RewardError:
        """The worker is gone: reap it for its real exit status and describe it."""
        proc = self._proc
        if proc is not None:
            proc.join(2.0)  # the pipe closes a moment before the process is reaped
        code = proc.exitcode if proc is not None else None
        self._stop()
        summary = f"the worker process died{' ' + when if when else ''} ({exit_text(code)})"
        if self.memory_mb is not None and code is not None and code < 0:
            summary += f"; it ran under a memory cap of {self.memory_mb} MB ({self._cap_key})"
        return _failure(RewardError, self.spec, summary)

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

    def __call__(self, completions: list[str], **columns) -> list:
        with watch(self.report, self.__name__, len(completions), columns):
            return self._score(list(completions), columns)

    def _score(self, completions: list[str], columns: dict[str, Any]) -> list:
        payload = {}
        for key, value in columns.items():  # only picklable columns cross the process boundary
            try:
                pickle.dumps(value)
            except Exception:
                continue
            payload[key] = value
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._stop()
                self._start()
            try:
                self._conn.send((completions, payload))
                ready = self._conn.poll(self._wait_s)
                reply = self._conn.recv() if ready else None
            except (EOFError, OSError, BrokenPipeError):
                raise self._died() from None
            if reply is None:
                self._stop()  # a fresh worker starts on the next call
                raise _failure(RewardTimeout, self.spec, f"did not return within {self.timeout_s:g} s; worker killed")
            kind, value = reply
            if kind == "memory" and self.memory_mb is not None:
                self._stop()  # a fresh worker, with a clean heap, starts on the next call
                raise _failure(RewardError, self.spec, f"MemoryError: the plug-in exceeded {self._cap()}", value[1],
                               typed=True)
        if kind == "ok":
            values, self.logged = value
            return values
        if kind == "timeout":
            raise _failure(RewardTimeout, self.spec, value)
        summary, tb = value
        raise _failure(RewardError, self.spec, summary, tb, typed=True)

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


def split_columns(columns: dict[str, Any], n: int, parts: int) -> list[tuple[slice, dict[str, Any]]]:
    """Contiguous slices of n completions into at most `parts` chunks, with every per-completion column (a list
    or tuple of length n) sliced alike and any other column passed whole."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        sl = slice(lo, hi)
        out.append((sl, {k: (v[sl] if isinstance(v, (list, tuple)) and len(v) == n else v) for k, v in columns.items()}))
    return out


class RewardPool:
    """`workers` persistent worker processes for one plug-in: each call's completions are split into contiguous
    chunks (per-completion columns sliced alike) scored in parallel, each chunk under the same `timeout_s` and
    restart rules as `IsolatedReward`. A failing chunk fails the call (so `on_error` applies to the whole call) and
    is reported (`report`) with the completions it held."""

    def __init__(self, spec: str, *, workers: int, timeout_s: float, style: str = "native", name: str | None = None,
                 memory_mb: int | None = None, config_key: str | None = None, report: ErrorReport | None = None):
        if workers < 1:
            raise ValueError(f"reward {spec!r}: workers must be >= 1, got {workers!r}")
        self.members = [IsolatedReward(spec, timeout_s=timeout_s, style=style, name=name, memory_mb=memory_mb,
                                       config_key=config_key) for _ in range(workers)]
        self.__name__, self.style = name or spec, style
        self.report = report
        self.required = self.members[0].required
        self.logged: dict[str, float] = {}
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmrl-reward")

    def __call__(self, completions: list[str], **columns) -> list:
        n = len(completions)
        chunks = split_columns(columns, n, len(self.members))
        futures = [self._threads.submit(member, list(completions[sl]), **cols)
                   for member, (sl, cols) in zip(self.members, chunks)]
        results = []
        for future, (sl, _) in zip(futures, chunks):
            with watch(self.report, self.__name__, n, columns, sl):
                results.append(future.result())  # re-raises the first failing chunk's RewardError / RewardTimeout
        self.logged = dict(self.members[0].logged)
        return [v for chunk in results for v in chunk]

    def close(self) -> None:
        for member in self.members:
            member.close()
        self._threads.shutdown(wait=False)
