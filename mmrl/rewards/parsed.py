"""What a parser of model output found (`Parsed`), and the counts of what the parsers met while a reward ran.

`parse_stats()` opens a count (`ParseStats`: calls, caps engaged, parse failures, checks abandoned at a time
limit) that the parsers of `parsing.py` add to (`record`), as do rewards that parse elsewhere (`note_parse`,
e.g. math-verify in its worker) or abandon a check (`note_timeout`). Counts follow the context (`ContextVar`),
so concurrent reward calls on other threads or tasks keep their own.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class Parsed:
    """What a parser found: `objects` ({"box"|"point": [...], "label": str | None, "score": float | None}),
    `truncated` (the parsed text — the answer block, else the whole text — was longer than `max_answer_chars`,
    or more than `max_boxes` objects were found),
    `failed` (nothing usable parsed) and `n_found` (objects seen before truncation, ≥ len(objects); rewards
    count the objects beyond the cap as false positives)."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    failed: bool = True
    n_found: int = 0

    @property
    def boxes(self) -> list[list[float]]:
        return [o["box"] for o in self.objects if "box" in o]

    @property
    def points(self) -> list[list[float]]:
        return [o["point"] for o in self.objects if "point" in o]


@dataclass
class ParseStats:
    """Counts of parser calls while `parse_stats()` is active: `calls`, `truncated`, `failed`, and `timed_out`
    (per-completion checks a reward abandoned at its time limit, e.g. `math`)."""

    calls: int = 0
    truncated: int = 0
    failed: int = 0
    timed_out: int = 0

    def as_metrics(self) -> dict[str, float]:
        """Fractions of parsed completions: `{"truncated": …, "parse_fail": …}` (0.0 when nothing was parsed),
        plus `timed_out` when any check timed out."""
        n = max(self.calls, 1)
        out = {"truncated": self.truncated / n, "parse_fail": self.failed / n}
        if self.timed_out:
            out["timed_out"] = self.timed_out / n
        return out


_STATS: ContextVar[ParseStats | None] = ContextVar("mmrl_parse_stats", default=None)


@contextmanager
def parse_stats() -> Iterator[ParseStats]:
    """Count cap engagements and parse failures of `parse_objects`/`parse_points`/`parse_number` in a block.

    The compose layer wraps one reward call: `with parse_stats() as st: values = fn(completions, **cols)`, then
    logs `reward/<name>/truncated` and `reward/<name>/parse_fail` from `st.as_metrics()`.
    """
    stats = ParseStats()
    token = _STATS.set(stats)
    try:
        yield stats
    finally:
        _STATS.reset(token)


def record(parsed: Parsed) -> Parsed:
    """Count `parsed` (one parser call) in the active `parse_stats`, if any; returns it."""
    stats = _STATS.get()
    if stats is not None:
        stats.calls += 1
        stats.truncated += int(parsed.truncated)
        stats.failed += int(parsed.failed)
    return parsed


def note_parse(*, truncated: bool, failed: bool) -> None:
    """Record one parse done outside this module's parsers (e.g. by math-verify) in the active `parse_stats`."""
    record(Parsed(truncated=truncated, failed=failed))


def note_timeout() -> None:
    """Record one per-completion check abandoned at its time limit in the active `parse_stats`."""
    stats = _STATS.get()
    if stats is not None:
        stats.timed_out += 1
