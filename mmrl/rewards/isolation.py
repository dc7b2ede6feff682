"""Plug-in isolation, calling styles and error policies for reward functions.

- `IsolatedReward(spec, timeout_s=…, style=…)` runs a user reward in a persistent worker process (`spawn`
  context; the worker resolves the spec itself with `mmrl.rewards.get`). Each call sends
  `(completions, columns)` over a pipe and waits `timeout_s`; a hung function cannot be stopped by a thread,
  so on timeout the worker is terminated (then killed), `RewardTimeout` is raised and the next call starts a
  fresh worker. An exception inside the function comes back as `RewardError` carrying the remote traceback.
  Async functions run in one event loop kept by the worker, each call under `asyncio.wait_for(…, timeout_s)`
  (a timed-out coroutine is cancelled; the worker survives).
- The worker dies with the trainer (even a SIGKILLed one, even while the plug-in hangs), its data memory is capped
  at `memory_mb` beyond its start-up (a bigger allocation is a MemoryError, reported as an error naming the cap),
  and a dead worker is reported with its real exit code or signal (`mmrl.rewards.workers`).
- Every failing call goes to an `ErrorReport` (`mmrl.rewards.errors`): the first few per reward are shown, all
  are written to the run's `reward_errors.log`; without one, `make_term` shows them on stderr.
- Only picklable columns cross the process boundary: each column is pickled on its own and a column that
  fails (an open file, a lock, a live model …) is silently left out of the isolated call.
- `adapt(fn, style)`: `native` is the common signature `fn(completions, **columns)`; `trl` calls the function
  exactly as TRL's GRPOTrainer does (`prompts`, conversational `completions`, `completion_ids`,
  `trainer_state`, `log_extra`, `log_metric` and the dataset columns, all as keywords); `easyr1` adapts
  `compute_score(list[dict]) -> list[dict]` (inputs `response`, `response_length`, `ground_truth`; the
  output's `overall` is the reward).
- `RewardPool(spec, workers=K, …)`: K such workers for one plug-in; each call's completions are split into K
  contiguous chunks scored in parallel (for slow CPU-bound rewards).
- `make_term(...)` builds a `RewardTerm` from config fields: isolation (`auto`: registry names in-process,
  any other spec isolated), style and the `on_error` policy (`zero` | `skip` | `raise`).
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
import types
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from mmrl.rewards.compose import RewardError, RewardTerm, RewardTimeout
from mmrl.rewards.errors import STDERR, ErrorReport, watch
from mmrl.rewards.workers import cap_memory, die_with_parent, exit_text

STYLES = ("native", "trl", "easyr1")
ISOLATE = ("auto", "always", "never")
ON_ERROR = ("zero", "skip", "raise")
_ASYNC_GRACE_S = 2.0  # extra parent-side wait for async functions, which time out inside the worker
_START_TIMEOUT_S = 120.0  # importing the plug-in in a fresh interpreter; not counted against timeout_s
MEMORY_MB = 4096  # RewardConfig.memory_mb's default (see mmrl.config)


# ------------------------------------------------------------------------------------------------ styles
def _text_prompts(columns: dict[str, Any], n: int) -> list[Any]:
    """TRL's `prompts`: the sample's chat messages when `samples` is there (conversational), else prompt text."""
    samples = columns.get("samples")
    if samples is not None:
        return [list(getattr(s, "messages", s)) for s in samples]
    texts = columns.get("prompts") or [""] * n
    return [[{"role": "user", "content": t}] for t in texts]


TRL_ARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


class _Trl:
    """Calls `fn` as TRL's GRPOTrainer does. What the function reports through `log_metric(name, value)` is kept
    in `logged` (the trainer logs it as `reward/<term>/<name>`); `log_extra(column, values)` is accepted and
    kept in `extra` (per-completion values for the rollout log)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.logged: dict[str, float] = {}
        self.extra: dict[str, list] = {}

    def __call__(self, completions: list[str], **columns):
        n = len(completions)
        self.logged, self.extra = {}, {}
        rest = {k: v for k, v in columns.items() if k not in ("prompts", "prompt", "completion") + TRL_ARGS}
        state = columns.get("trainer_state") or types.SimpleNamespace(global_step=0, max_steps=0, epoch=0.0)
        return self.fn(
            prompts=_text_prompts(columns, n),
            completions=[[{"role": "assistant", "content": c}] for c in completions],
            completion_ids=columns.get("completion_ids"),
            trainer_state=state,
            log_extra=lambda column, values: self.extra.__setitem__(str(column), list(values)),
            log_metric=self._log_metric,
            **rest,
        )

    def _log_metric(self, name: str, value: float) -> None:
        try:
            self.logged[str(name)] = float(value)
        except (TypeError, ValueError):
            pass  # a non-numeric metric is dropped, as a logger would refuse it


def _easyr1(fn: Callable) -> Callable:
    def call(completions: list[str], **columns):
        answers = columns.get("answer") or [None] * len(completions)
        ids = columns.get("completion_ids")
        inputs = [
            {"response": c, "response_length": len(ids[i]) if ids is not None else len(c), "ground_truth": answers[i]}
            for i, c in enumerate(completions)
        ]
        out = fn(inputs)
        if inspect.isawaitable(out):
            async def finish():
                return [None if o is None else o["overall"] for o in await out]
            return finish()
        return [None if o is None else o["overall"] for o in out]

    return call


def adapt(fn: Callable, style: str = "native") -> Callable:
    """Wrap `fn` so it is called with the common signature `f(completions, **columns)`."""
    if style == "native":
        return fn
    if style == "trl":
        return _Trl(fn)
    if style == "easyr1":
        return _easyr1(fn)
    raise ValueError(f"reward style {style!r} is not one of {', '.join(STYLES)}")


def required_columns(fn: Callable, style: str = "native") -> list[str]:
    """The keyword arguments `fn` needs that no default covers, i.e. the columns a run must provide.

    native: every parameter after the first (the completions) without a default; trl: every parameter without
    a default except those TRL itself passes; easyr1: none (it receives one list of dicts).
    """
    if style == "easyr1":
        return []
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and C callables: nothing to check
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if style == "native":
        params = params[1:] if params and params[0].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else params
        skip: tuple[str, ...] = ()
    else:
        skip = TRL_ARGS
    return sorted(p.name for p in params if p.kind in kinds and p.default is p.empty and p.name not in skip)


def _run_async(awaitable, timeout_s: float, loop: asyncio.AbstractEventLoop):
    try:
        return loop.run_until_complete(asyncio.wait_for(awaitable, timeout_s))
    except asyncio.TimeoutError:
        raise RewardTimeout(f"async reward did not finish within {timeout_s:g} s") from None


# ----------------------------------------------------------------------------------------------- worker
def _describe(exc: BaseException) -> tuple[str, str]:
    """(`Type: message` on one line, the formatted traceback) of an exception being handled in the worker."""
    message = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__), traceback.format_exc()


def _worker(conn, spec: str, style: str, timeout_s: float, parent_pid: int, pdeathsig: bool,
            memory_mb: int | None) -> None:
    die_with_parent(parent_pid, pdeathsig=pdeathsig)
    try:
        cap_memory(memory_mb)  # before the plug-in is imported: its imports count too
        from mmrl.rewards import get

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
                out = _run_async(out, timeout_s, loop)
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


class InProcessReward:
    """A reward called in this process with a style adapter; awaitables are run with `timeout_s`.

    A synchronous in-process function cannot be stopped, so `timeout_s` only bounds async ones.
    """

    def __init__(self, fn: Callable, *, timeout_s: float, style: str = "native", name: str | None = None,
                 report: ErrorReport | None = None):
        self.fn, self.timeout_s, self.style = adapt(fn, style), float(timeout_s), style
        self.__name__ = name or getattr(fn, "__name__", "reward")
        self.report = report
        self.required = required_columns(fn, style)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def logged(self) -> dict[str, float]:
        return dict(getattr(self.fn, "logged", {}))

    def __call__(self, completions: list[str], **columns) -> list:
        with watch(self.report, self.__name__, len(completions), columns):
            out = self.fn(completions, **columns)
            if inspect.isawaitable(out):
                self._loop = self._loop or asyncio.new_event_loop()
                out = _run_async(out, self.timeout_s, self._loop)
            return out


# ---------------------------------------------------------------------------------------------- factory
def make_term(
    fn: str, *, name: str | None = None, weight: float = 1.0, kwargs: dict[str, Any] | None = None,
    on_error: str = "zero", timeout_s: float = 10.0, style: str = "native", isolate: str = "auto",
    gate: str | None = None, mode: str = "add", gate_min: float = 1.0, gate_penalty: float = 0.0,
    workers: int = 1, memory_mb: int | None = MEMORY_MB, report: ErrorReport | None = None,
    config_key: str | None = None,
) -> RewardTerm:
    """A `RewardTerm` from config fields (`RewardConfig`): resolve `fn`, isolate it per `isolate`
    (`auto`: registry names in-process, other specs in a worker, capped at `memory_mb`), adapt its `style`, set its
    `on_error` and its gating (`gate`, `mode`, `gate_min`, `gate_penalty`; see `mmrl.rewards.compose`).

    `report` (the run's `ErrorReport`; default `STDERR`) receives every failing call; `config_key` (`rewards[2]`)
    is where the term is configured, for messages that name a key."""
    from mmrl.rewards.registry import get

    if isolate not in ISOLATE:
        raise ValueError(f"reward {fn!r}: isolate {isolate!r} is not one of {', '.join(ISOLATE)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"reward {fn!r}: on_error {on_error!r} is not one of {', '.join(ON_ERROR)}")
    if style not in STYLES:
        raise ValueError(f"reward {fn!r}: style {style!r} is not one of {', '.join(STYLES)}")
    from mmrl.rewards.registry import default_name

    name = name or default_name(fn)
    isolated = isolate == "always" or (isolate == "auto" and ":" in fn)
    report = STDERR if report is None else report
    if isolated and workers > 1:
        call: Callable = RewardPool(fn, workers=workers, timeout_s=timeout_s, style=style, name=name,
                                    memory_mb=memory_mb, config_key=config_key, report=report)
    elif isolated:
        call = IsolatedReward(fn, timeout_s=timeout_s, style=style, name=name, memory_mb=memory_mb,
                              config_key=config_key, report=report)
    else:
        call = InProcessReward(get(fn), timeout_s=timeout_s, style=style, name=name, report=report)
    return RewardTerm(name=name, fn=call, weight=weight, kwargs=dict(kwargs or {}), on_error=on_error,
                      gate=gate, mode=mode, gate_min=gate_min, gate_penalty=gate_penalty)
