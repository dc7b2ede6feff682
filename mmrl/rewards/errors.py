"""Failed reward calls made visible: the first few of each reward shown to the user, every one written to a file.

The reward wrappers of `mmrl.rewards.isolation` and `process` call an `ErrorReport` with each failing call's
exception (the plug-in's own exception, a timeout, a dead worker, its memory cap) before the term's `on_error`
policy turns the failure into zeros or Nones. The first `show` failures of each reward name go to `log` (the
trainer's log callback; stderr when None), one line each: the reward, the exception's type and message, the step and
which completions and samples the call scored. Every failure is appended to `path` (the run's `reward_errors.log`)
with its full traceback. `STDERR` (no file) is the report of a process that was given none (a notebook, a bare
`make_term`). Output checks of `mmrl.rewards.compose` (a wrong number of values, a NaN) are counted there, not
reported here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

SHOW = 3  # failures shown per reward name per run
_MAX_HEADLINE = 300


def headline(exc: BaseException) -> str:
    """`Type: message` on one line: isolation's own `summary` (which names the plug-in's exception, not the
    RewardError carrying it) when it set one, else the exception's type and the first line of its message."""
    message = str(exc).strip()
    text = getattr(exc, "summary", None) or (f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    line = text.splitlines()[0]
    return line if len(line) <= _MAX_HEADLINE else line[: _MAX_HEADLINE - 1] + "…"


def where(n: int, columns: Mapping[str, Any], part: slice | None = None) -> str:
    """`step 3, completions 0-7 of 16, samples a, b`: what the failing call scored (`part` of the n completions)."""
    lo, hi = (part.start, part.stop) if part is not None else (0, n)
    bits = []
    step = getattr(columns.get("trainer_state"), "global_step", None)
    if step is not None:
        bits.append(f"step {step}")
    bits.append(f"completions {lo}-{hi - 1} of {n}" if hi - lo > 1 else f"completion {lo} of {n}")
    samples = columns.get("samples")
    if isinstance(samples, (list, tuple)) and len(samples) == n and hi > lo:
        ids = list(dict.fromkeys(str(getattr(s, "id", "?")) for s in samples[lo:hi]))
        bits.append("samples " + ", ".join(ids[:4]) + (f" (+{len(ids) - 4} more)" if len(ids) > 4 else ""))
    return ", ".join(bits)


class ErrorReport:
    """Shows the first `show` failures of each reward through `log` (stderr when None) and appends every failure
    to `path` (none when None). One per run: the counts are per reward name for the report's lifetime."""

    def __init__(self, path: str | Path | None = None, *, log: Callable[[str], Any] | None = None, show: int = SHOW):
        self.path = Path(path) if path is not None else None
        self.log, self.show = log, show
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, exc: BaseException, n: int, columns: Mapping[str, Any],
                 part: slice | None = None) -> None:
        at = where(n, columns, part)
        with self._lock:
            k = self.counts[name] = self.counts.get(name, 0) + 1
            unwritten = self._append(f"reward {name!r} failure {k} ({at}), pid {os.getpid()}", exc)
        if k > self.show:
            return
        line = f"mmrl: reward {name!r} failed ({at}): {headline(exc)}"
        if unwritten:
            line += f" [could not write {self.path}: {unwritten}]"
        if k == self.show:
            line += (f" — later failures of {name!r} are only counted (reward/{name}/errors, reward/{name}/timeouts)"
                     + (f"; every one is in {self.path}" if self.path else ""))
        elif self.path is not None:
            line += f" (details: {self.path})"
        if self.log is None:
            print(line, file=sys.stderr, flush=True)
        else:
            self.log(line)

    def _append(self, title: str, exc: BaseException) -> str:
        """Write one record; '' when written (or no file), else why not (a full disk must not stop scoring)."""
        if self.path is None:
            return ""
        # isolation's errors carry the plug-in's traceback in their message; a local one has its own traceback
        body = str(exc) if hasattr(exc, "summary") else "".join(traceback.format_exception(exc))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n{body.rstrip()}\n\n")
        except OSError as e:
            return str(e)
        return ""


STDERR = ErrorReport()


@contextlib.contextmanager
def watch(report: ErrorReport | None, name: str, n: int, columns: Mapping[str, Any],
          part: slice | None = None) -> Iterator[None]:
    """Report an exception escaping the block to `report` (if any), then let it propagate unchanged."""
    try:
        yield
    except Exception as exc:
        if report is not None:
            report(name, exc, n, columns, part)
            exc.reported = True  # compose's error policy must not report it a second time
        raise
