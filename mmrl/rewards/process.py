"""A reward in a persistent worker process: `IsolatedReward` and `RewardPool`, on `mmrl.plugins.process`.

- `IsolatedReward(spec, timeout_s=…, style=…)` runs a user reward in a persistent worker process
  (`mmrl.plugins.process.IsolatedCall`: the worker resolves the spec itself with `mmrl.rewards.registry.get`
  in `load_reward`). Each call sends `(completions, columns)` and waits `timeout_s`; on timeout the worker is
  killed, `RewardTimeout` is raised and the next call starts a fresh worker. An exception inside the function comes
  back as `RewardError` carrying the remote traceback. Async functions run in one event loop kept by the worker,
  each call under `asyncio.wait_for(…, timeout_s)` (a timed-out coroutine is cancelled; the worker survives).
- The worker dies with the trainer, its data memory is capped at `memory_mb` beyond its start-up, and a dead worker
  is reported with its real exit code or signal (`mmrl.plugins.workers`).
- Every failing call goes to the `ErrorReport` given as `report` (`mmrl.rewards.errors`).
- Only picklable columns cross the process boundary: each column is pickled on its own and a column that
  fails (an open file, a lock, a live model …) is silently left out of the isolated call.
- `RewardPool(spec, workers=K, …)`: K such workers for one plug-in; each call's completions are split into K
  contiguous chunks scored in parallel (for slow CPU-bound rewards).

This module depends on the registry, not on the `mmrl.rewards` package: built-in rewards are registered by the
package's `__init__`, which Python runs before any of its submodules (this one included) in the worker too.
"""

from __future__ import annotations

import inspect
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mmrl.plugins.process import IsolatedCall, Loaded
from mmrl.rewards.compose import RewardError, RewardTimeout
from mmrl.rewards.errors import ErrorReport, watch
from mmrl.rewards.registry import get
from mmrl.rewards.styles import STYLES, adapt, required_columns


def load_reward(spec: str, style: str) -> Loaded:
    """In the worker: the reward `spec` adapted to `style`, called as `(completions, **columns) -> (values, logged)`
    (`logged`: what it reported through TRL's `log_metric`); `info` = the columns it needs."""
    raw = get(spec)
    fn = adapt(raw, style)

    async def finish(out) -> tuple[list, dict]:
        return list(await out), dict(getattr(fn, "logged", {}))

    def call(completions: list[str], **columns):
        out = fn(completions, **columns)
        if inspect.isawaitable(out):
            return finish(out)
        return list(out), dict(getattr(fn, "logged", {}))

    return Loaded(call, inspect.iscoroutinefunction(raw), required_columns(raw, style))


class IsolatedReward(IsolatedCall):
    """A reward run in a persistent worker process; see the module docstring.

    `memory_mb`: the worker's data-memory cap beyond its start-up (None: no cap); `config_key` (`rewards[2]`)
    names where it is set in messages; `report` receives every failing call (None: the caller reports)."""

    kind = "reward"
    error = RewardError
    timeout = RewardTimeout

    def __init__(self, spec: str, *, timeout_s: float, style: str = "native", name: str | None = None,
                 memory_mb: int | None = None, config_key: str | None = None, report: ErrorReport | None = None):
        if style not in STYLES:
            raise ValueError(f"reward style {style!r} is not one of {', '.join(STYLES)}")
        self.style, self.report = style, report
        self.logged: dict[str, float] = {}  # what the last call reported through TRL's log_metric
        super().__init__(spec, load=load_reward, options=(style,), timeout_s=timeout_s, name=name,
                         memory_mb=memory_mb, config_key=config_key)
        self.required: list[str] = list(self.info)  # columns the function needs (reported by the worker)

    def __call__(self, completions: list[str], **columns) -> list:
        with watch(self.report, self.__name__, len(completions), columns):
            payload = {}
            for key, value in columns.items():  # only picklable columns cross the process boundary
                try:
                    pickle.dumps(value)
                except Exception:
                    continue
                payload[key] = value
            values, self.logged = self.call(list(completions), **payload)
            return values


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
