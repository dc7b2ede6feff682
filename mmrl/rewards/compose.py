"""Weighted composition of reward terms, with per-term values kept for logging.

total_i = Σ_k w_k · g_k,i · r_k,i over the `add` terms k whose value r_k,i is not None (0.0 when every term is
None), where g_k,i = 1 unless term k names a `gate` term whose raw value at i is None or below that term's
`gate_min` ("only if correct", "only if well-formed"), then 0. A term in `mode="gate"` adds nothing itself: where
its value is None or below its `gate_min` the whole total_i becomes its `gate_penalty` (a format gate: nothing
counts unless the completion is well-formed). Components keep the raw values (what the reward said).
A term with an `on_error` policy (set by `mmrl.rewards.isolation.make_term`) never stops scoring on a failing
call unless the policy is `raise`: `zero` → every value of that call is 0.0, `skip` → every value is None;
failures are counted per term (`errors`, `timeouts`, cumulative) and reported through `score`'s `stats`, as is,
for a term that scores against a ground truth (`truth_columns`), the share of completions whose sample has none.
Isolation and calling styles live in `mmrl.rewards.isolation` (with `process` and `styles`); this module is the
arithmetic and the validation.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Iterable, Mapping, Sequence

from mmrl.rewards.parsed import parse_stats


class RewardError(RuntimeError):
    """A reward function raised (for isolated rewards the message holds the remote traceback)."""


class RewardTimeout(RewardError):
    """A reward function did not return within its `timeout_s`."""


@dataclass
class RewardTerm:
    """One reward in a weighted sum: `fn(completions, **columns, **kwargs)` scaled by `weight`."""

    name: str
    fn: Callable[..., Sequence[Any]]
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    on_error: str | None = None  # None: exceptions propagate, uncounted; "zero" | "skip" | "raise": see module doc
    gate: str | None = None  # another term's name: this term counts only where that one passes its gate_min
    mode: str = "add"  # "add": weighted into the total; "gate": the total counts only where this term passes
    gate_min: float = 1.0  # the value a term must reach to pass when it gates (as `gate` target or in gate mode)
    gate_penalty: float = 0.0  # gate mode: the total where this term does not pass
    errors: int = field(default=0, init=False)  # failed calls so far (timeouts excluded)
    timeouts: int = field(default=0, init=False)  # timed-out calls so far

    def __post_init__(self) -> None:
        if self.on_error not in (None, "zero", "skip", "raise"):
            raise ValueError(f"reward {self.name!r}: on_error must be zero, skip or raise, got {self.on_error!r}")
        if not self.name or "/" in self.name or self.name == "total":
            raise ValueError(f"reward name {self.name!r} must be non-empty, without '/', and not 'total'")
        if not callable(self.fn):
            raise TypeError(f"reward {self.name!r}: fn is a {type(self.fn).__name__}, not callable")
        if not isinstance(self.weight, Real) or not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name!r}: weight must be a finite number, got {self.weight!r}")
        if self.mode not in ("add", "gate"):
            raise ValueError(f"reward {self.name!r}: mode must be add or gate, got {self.mode!r}")
        if self.gate == self.name:
            raise ValueError(f"reward {self.name!r}: a term cannot gate itself")
        for key in ("gate_min", "gate_penalty"):
            v = getattr(self, key)
            if not isinstance(v, Real) or not math.isfinite(v):
                raise ValueError(f"reward {self.name!r}: {key} must be a finite number, got {v!r}")

    def passes(self, value: float | None) -> bool:
        """Whether a value of this term opens a gate (`None` never does)."""
        return value is not None and value >= self.gate_min


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _named(fn: Any) -> set[str]:
    """The parameters `fn` names, looking through wrappers that keep the function they call as `.fn` (the
    isolation and calling-style adapters of `mmrl.rewards.isolation` / `styles`) or `.func` (`functools.partial`)."""
    names: set[str] = set()
    for _ in range(4):
        try:
            names |= {p.name for p in inspect.signature(fn).parameters.values() if p.kind in _NAMED}
        except (TypeError, ValueError):  # builtins and C callables
            pass
        fn = getattr(fn, "fn", None) or getattr(fn, "func", None)
        if fn is None:
            break
    return names


def truth_columns(term: RewardTerm) -> list[str]:
    """The columns `term` scores against, sorted: those its function requires (`fn.required`: parameters without
    a default, as `mmrl.rewards.isolation` reports them) and `answer`, the ground truth, when the function names it
    at all or is called in EasyR1 style (`ground_truth`). Every built-in that compares with a ground truth takes
    `answer=None` and returns None where a sample has none; those that need none (`format`, `overlong`,
    `group_agreement`, …) name no `answer`. Callers keep the data columns among them (`answer`, dataset fields).
    A plug-in run in a worker process shows only what it requires, so name `answer` without a default there.

    >>> truth_columns(RewardTerm("acc", lambda completions, answer=None, **kw: [])), truth_columns(
    ...     RewardTerm("fmt", lambda completions, **kw: []))
    (['answer'], [])
    """
    cols = set(getattr(term.fn, "required", ()) or ())
    if "answer" in _named(term.fn) or getattr(term.fn, "style", None) == "easyr1":
        cols.add("answer")
    return sorted(cols - set(term.kwargs))


def missing_share(term: RewardTerm, columns: Mapping[str, Any], n: int) -> float | None:
    """The share of `n` completions whose sample lacks (None) a data column `term` scores against: `answer`, or a
    dataset field it requires (a `meta` key of the `samples` column); None when it scores against none of them."""
    fields = {"answer"} | {k for s in columns.get("samples") or () for k in getattr(s, "meta", {})}
    cols = [columns[c] for c in truth_columns(term) if c in fields and isinstance(columns.get(c), (list, tuple))
            and len(columns[c]) == n]
    if not cols or not n:
        return None
    return sum(any(col[i] is None for col in cols) for i in range(n)) / n


def _call(term: RewardTerm, completions: list[str], columns: dict[str, Any]) -> list[float | None]:
    clash = sorted(set(term.kwargs) & set(columns))
    if clash:
        raise ValueError(f"reward {term.name!r}: kwargs {clash} clash with data columns of the same name")
    values = functools.partial(term.fn, **term.kwargs)(completions, **columns)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (Sequence, Iterable)):
        raise ValueError(f"reward {term.name!r} returned a {type(values).__name__}, expected a list")
    values = list(values)  # also accepts tuples and 1-d numpy arrays
    if len(values) != len(completions):
        raise ValueError(f"reward {term.name!r} returned {len(values)} values for {len(completions)} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
        elif isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
        else:
            raise ValueError(
                f"reward {term.name!r} returned {v!r} for completion {i}; expected a finite number or None"
            )
    return out


def _guarded_call(term: RewardTerm, completions: list[str], columns: dict[str, Any]) -> list[float | None]:
    if term.on_error is None:
        return _call(term, completions, columns)
    try:
        return _call(term, completions, columns)
    except Exception as exc:
        if isinstance(exc, RewardTimeout):
            term.timeouts += 1
        else:
            term.errors += 1
        report = getattr(term.fn, "report", None)  # the run's ErrorReport, on plug-in wrappers
        if report is not None and not getattr(exc, "reported", False):  # e.g. a wrong number of values, a NaN
            report(term.name, exc, len(completions), columns)
        if term.on_error == "raise":
            exc.add_note(f"in reward {term.name!r}")
            raise
        return [0.0 if term.on_error == "zero" else None] * len(completions)


def score(
    terms: Sequence[RewardTerm], completions: list[str], columns: dict[str, Any],
    stats: dict[str, dict[str, float]] | None = None,
) -> tuple[list[float], dict[str, list[float | None]]]:
    """(totals, components): per-completion weighted sums and each term's raw values.

    With a `stats` dict, each term whose parser ran records the fractions of completions where an input cap
    engaged and where parsing failed (`{"truncated": …, "parse_fail": …}`) under its name, each term that scores
    against a ground truth the fraction of completions whose sample has none (`{"missing": …}`, `missing_share`),
    and each term with an `on_error` policy its cumulative failure counts (`{"errors": …, "timeouts": …}`).

    >>> t = [RewardTerm("a", lambda c, **k: [1.0, None]), RewardTerm("b", lambda c, **k: [0.5, 2], weight=2)]
    >>> score(t, ["x", "y"], {})
    ([2.0, 4.0], {'a': [1.0, None], 'b': [0.5, 2.0]})
    """
    check_gates(terms)
    components: dict[str, list[float | None]] = {}
    for term in terms:
        with parse_stats() as st:
            values = _guarded_call(term, completions, columns)
        if stats is not None and st.calls:
            stats[term.name] = st.as_metrics()
        share = missing_share(term, columns, len(completions)) if stats is not None else None
        if share is not None:
            stats.setdefault(term.name, {})["missing"] = share
        if stats is not None and term.on_error is not None:
            stats.setdefault(term.name, {}).update(errors=float(term.errors), timeouts=float(term.timeouts))
        logged = getattr(term.fn, "logged", None)  # what a TRL-style function reported through log_metric
        if stats is not None and logged:
            stats.setdefault(term.name, {}).update(logged)
        components[term.name] = values
    totals, closed = weighted_sum(terms, components, len(completions))
    if stats is not None:
        for name, count in closed.items():
            stats.setdefault(name, {})["gated"] = count / max(len(completions), 1)
    for term in terms:
        if term.mode == "gate":
            for i, v in enumerate(components[term.name]):
                if not term.passes(v):
                    totals[i] = float(term.gate_penalty)
    return totals, components


def weighted_sum(terms: Sequence[RewardTerm], components: dict[str, list[float | None]], n: int, *,
                 names: Sequence[str] | None = None) -> tuple[list[float], dict[str, int]]:
    """(Σ weight·value per completion over the `add` terms — those named in `names` when given —, each counted only
    where its gate passes; {gated term: values its gate closed}). `score`'s total before gate-mode terms act, and
    the part of it a subset of terms makes up (`algorithm.turn_rewards`)."""
    by_name = {t.name: t for t in terms}
    totals = [0.0] * n
    closed: dict[str, int] = {}
    for term in terms:
        if term.mode != "add" or (names is not None and term.name not in names):
            continue
        gate = by_name[term.gate] if term.gate else None
        if gate is not None:
            closed[term.name] = 0
        for i, v in enumerate(components[term.name]):
            if gate is not None and not gate.passes(components[gate.name][i]):
                closed[term.name] += v is not None
            elif v is not None:
                totals[i] += term.weight * v
    return totals, closed


def check_gates(terms: Sequence[RewardTerm]) -> None:
    """Unique names, and every `gate` names another term of the same composition."""
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")
    for t in terms:
        if t.gate is not None and t.gate not in names:
            raise ValueError(f"reward {t.name!r}: gate {t.gate!r} is not a reward of this run (rewards: {names})")


def summarize(
    components: dict[str, list[float | None]], totals: Sequence[float],
    stats: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """Metrics `reward/<name>/mean` (over non-None values; omitted when all None), `reward/total/mean|std`,
    and from `stats` (see `score`) `reward/<name>/truncated`, `reward/<name>/parse_fail`, `reward/<name>/missing`.

    The std is the population std (ddof = 0); the total metrics are omitted when there are no completions.

    >>> summarize({"a": [1.0, None, 0.0], "b": [None, None, None]}, [1.0, 3.0])
    {'reward/a/mean': 0.5, 'reward/total/mean': 2.0, 'reward/total/std': 1.0}
    """
    metrics: dict[str, float] = {}
    for name, values in components.items():
        present = [v for v in values if v is not None]
        if present:
            metrics[f"reward/{name}/mean"] = sum(present) / len(present)
    for name, fractions in (stats or {}).items():
        for key, value in fractions.items():
            metrics[f"reward/{name}/{key}"] = value
    if len(totals):
        mean = sum(totals) / len(totals)
        metrics["reward/total/mean"] = mean
        metrics["reward/total/std"] = math.sqrt(sum((t - mean) ** 2 for t in totals) / len(totals))
    return metrics
