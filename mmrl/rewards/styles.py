"""How a reward function is called: its calling style, the columns it requires, and its awaitable results.

`adapt(fn, style)`: `native` is the common signature `fn(completions, **columns)`; `trl` calls the function
exactly as TRL's GRPOTrainer does (`prompts`, conversational `completions`, `completion_ids`, `trainer_state`,
`log_extra`, `log_metric` and the dataset columns, all as keywords); `easyr1` adapts
`compute_score(list[dict]) -> list[dict]` (inputs `response`, `response_length`, `ground_truth`; the output's
`overall` is the reward). `required_columns(fn, style)` lists the columns a run must provide; `run_async` runs an
async reward's result under a timeout. Used in-process (`isolation.InProcessReward`) and in a worker process
(`process`).
"""

from __future__ import annotations

import asyncio
import inspect
import types
from typing import Any, Callable

from mmrl.rewards.compose import RewardTimeout

STYLES = ("native", "trl", "easyr1")


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


def run_async(awaitable, timeout_s: float, loop: asyncio.AbstractEventLoop):
    """The result of `awaitable` run in `loop`, or RewardTimeout after `timeout_s` (the coroutine is cancelled)."""
    try:
        return loop.run_until_complete(asyncio.wait_for(awaitable, timeout_s))
    except asyncio.TimeoutError:
        raise RewardTimeout(f"async reward did not finish within {timeout_s:g} s") from None
