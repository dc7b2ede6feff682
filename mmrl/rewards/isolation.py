"""Reward terms from config: isolation, calling styles and error policies.

`make_term(...)` builds a `RewardTerm` from config fields: isolation (`auto`: registry names in-process, any other
spec in a worker process, `mmrl.rewards.process`), calling style (`native | trl | easyr1`,
`mmrl.rewards.styles`) and the `on_error` policy (`zero` | `skip` | `raise`). Every failing call goes to an
`ErrorReport` (`mmrl.rewards.errors`): the first few per reward are shown, all are written to the run's
`reward_errors.log`; without one, `make_term` shows them on stderr. `InProcessReward` is the in-process wrapper.
The worker-process and calling-style names are re-exported here, where callers import them.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

from mmrl.rewards.compose import RewardTerm
from mmrl.rewards.errors import STDERR, ErrorReport, watch
from mmrl.rewards.process import IsolatedReward, RewardPool, split_columns
from mmrl.rewards.registry import default_name, get
from mmrl.rewards.styles import STYLES, TRL_ARGS, adapt, required_columns, run_async

__all__ = [
    "ISOLATE", "MEMORY_MB", "ON_ERROR", "STYLES", "TRL_ARGS", "InProcessReward", "IsolatedReward", "RewardPool",
    "adapt", "make_term", "required_columns", "split_columns",
]

ISOLATE = ("auto", "always", "never")
ON_ERROR = ("zero", "skip", "raise")
MEMORY_MB = 4096  # RewardConfig.memory_mb's default (see mmrl.config)


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
                out = run_async(out, self.timeout_s, self._loop)
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
    if isolate not in ISOLATE:
        raise ValueError(f"reward {fn!r}: isolate {isolate!r} is not one of {', '.join(ISOLATE)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"reward {fn!r}: on_error {on_error!r} is not one of {', '.join(ON_ERROR)}")
    if style not in STYLES:
        raise ValueError(f"reward {fn!r}: style {style!r} is not one of {', '.join(STYLES)}")
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
