"""The per-sample reward skeleton: the one loop of every built-in reward that scores each completion on its own.

A per-sample function scores one completion: `score(text, <column>, …, *, <option>=default, …) -> float | None`.
Its positional parameters after the completion text name the columns it reads (it receives that completion's
value of each), its keyword-only parameters are its options. `@per_sample` makes it a reward with the common
contract `reward(completions, *, <column>=None, …, <option>=default, …, **kwargs) -> list[float | None]`
(DESIGN.md "Core types"): each column must hold one value per completion (an absent column is None for every
completion), the options are checked once per call (`check`), `**kwargs` takes the columns the reward does not
read, and the reward's signature says all of that, so `mmrl.rewards.compose.truth_columns` and
`mmrl.rewards.styles.required_columns` read it as they read a hand-written reward.

Rewards that score a completion against others (`group_agreement`), call another reward over the whole batch
(`cosine_length`) or batch their requests (`judge`) keep their own loop.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

_P = inspect.Parameter


def column(col: Sequence[Any] | None, name: str, n: int) -> list[Any]:
    """A per-completion column, or n Nones when absent; a wrong length is a caller bug.

    >>> column(None, "answer", 2), column(("a", "b"), "answer", 2)
    ([None, None], ['a', 'b'])
    """
    if col is None:
        return [None] * n
    if len(col) != n:
        raise ValueError(f"column {name!r} has {len(col)} values for {n} completions")
    return list(col)


def per_sample(score: Callable[..., float | None] | None = None, *,
               check: Callable[..., None] | None = None) -> Callable[..., list[float | None]]:
    """Decorator: the reward that applies `score` to each completion with its columns and the call's options.

    `check(**options)`, when given, runs once per call with every option resolved (defaults filled in) before
    any completion is scored; it raises ValueError on an option that is a configuration bug. Used bare
    (`@per_sample`) or with a check (`@per_sample(check=…)`).

    >>> @per_sample
    ... def longer(text, answer, *, by=0):
    ...     return None if answer is None else float(len(text) > len(answer) + by)
    >>> longer(["abc", "a", "x"], answer=["ab", "ab", None]), longer(["abc"], answer=["ab"], by=1, other=[0])
    ([1.0, 0.0, None], [0.0])
    >>> list(inspect.signature(longer).parameters)
    ['completions', 'answer', 'by', 'kwargs']
    """
    if score is None:
        return functools.partial(per_sample, check=check)
    params = list(inspect.signature(score).parameters.values())
    columns = [p.name for p in params[1:] if p.kind is _P.POSITIONAL_OR_KEYWORD]
    options = [p for p in params if p.kind is _P.KEYWORD_ONLY]
    if any(p.default is _P.empty for p in options):
        raise TypeError(f"per_sample: every option of {score.__name__} needs a default")

    @functools.wraps(score)
    def reward(completions: list[str], **kwargs: Any) -> list[float | None]:
        n = len(completions)
        opts = {p.name: kwargs.get(p.name, p.default) for p in options}
        if check is not None:
            check(**opts)
        cols = [column(kwargs.get(name), name, n) for name in columns]
        return [score(text, *values, **opts) for text, *values in zip(completions, *cols)]

    reward.__signature__ = inspect.Signature(  # what callers introspect: the batch call, not `score`'s
        [_P("completions", _P.POSITIONAL_OR_KEYWORD, annotation="list[str]")]
        + [_P(name, _P.KEYWORD_ONLY, default=None, annotation="Sequence[Any] | None") for name in columns]
        + options + [_P("kwargs", _P.VAR_KEYWORD, annotation="Any")],
        return_annotation="list[float | None]",
    )
    return reward
