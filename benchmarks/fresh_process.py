"""What the benchmarks share: each measurement runs in a fresh interpreter (its own peak RSS, no warm caches from
an earlier measurement), which prints one `RESULT {json}` line; the parent reads it back or turns a failure into a
skip reason. Imported as a sibling module (`python benchmarks/X.py` puts this folder first on sys.path)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "RESULT "


def maxrss_mib() -> float:
    """This process's peak resident memory so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def emit(result: dict) -> None:
    """The child's answer to its parent (`run`)."""
    print(PREFIX + json.dumps(result), flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
        reason_chars: int = 300) -> dict:
    """Run `cmd` (a child that calls `emit`) from the repository root with the repository on PYTHONPATH: its result,
    or {"skipped": why} when it failed, printed nothing or ran past `timeout` seconds."""
    full_env = {**os.environ, **(env or {}),
                "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=full_env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"skipped": (proc.stderr.strip().splitlines() or ["no output"])[-1][:reason_chars]}
    return json.loads(lines[-1][len(PREFIX):])
