"""The run directory's life: refusing to start over a run by accident (`run.overwrite`), clearing an old run,
setting aside checkpoints a resume leaves behind, and stopping at a step boundary on Ctrl-C."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
from pathlib import Path

from mmrl.train import checkpoint
from mmrl.config import Config, ConfigError


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at a step boundary, after saving `checkpoint` (step `step`)."""

    def __init__(self, step: int, saved: Path | None):
        super().__init__(f"interrupted after step {step}; checkpoint {saved}")
        self.step, self.saved = step, saved


@contextlib.contextmanager
def interruptible():
    """While training: the first Ctrl-C (SIGINT) sets the yielded event, and the step loop saves a checkpoint and
    stops at the end of the current step; a second one interrupts at once. Outside the main thread: no handler."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def first(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, previous)  # the next Ctrl-C interrupts at once
        print("\nmmrl: stopping after this step and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


# what a run writes in run.dir
RUN_FILES = ("metrics.jsonl", "rollouts.jsonl", "summary.json", "config.yaml", "reward_errors.log")
RUN_FOLDERS = ("checkpoints", "plots", "tb", "eval")


def held_run(run_dir: Path) -> list[str]:
    """What shows that `run_dir` holds a run (its metrics, summary, checkpoints); empty for a fresh directory."""
    held = [name for name in ("metrics.jsonl", "summary.json") if (run_dir / name).exists()]
    n = len(checkpoint.list_complete(run_dir / "checkpoints"))
    return held + ([f"{n} checkpoint{'s' * (n != 1)}"] if n else [])


def check_run_dir(cfg: Config) -> None:
    """Refuse to start a fresh run in a directory that holds one, unless told what to do with it: `resume=auto`
    (or a checkpoint of this run) continues it, `run.overwrite=true` replaces it. Raises ConfigError."""
    held = held_run(cfg.run_dir)
    if not held or cfg.run.overwrite or cfg.resume == "auto":
        return
    if cfg.resume != "none" and Path(cfg.resume).resolve().parent == (cfg.run_dir / "checkpoints").resolve():
        return
    raise ConfigError(
        f"run.dir: {cfg.run_dir} already holds a run ({', '.join(held)}); continue it with resume=auto, start"
        f" afresh with run.overwrite=true (removes it), or choose another run.dir")


def remove_run(run_dir: Path) -> list[str]:
    """Delete what a previous run wrote in `run_dir` (`run.overwrite`); other files stay. Returns what went."""
    gone = [n for n in RUN_FILES if (run_dir / n).exists()] + [n for n in RUN_FOLDERS if (run_dir / n).is_dir()]
    for name in gone:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
        else:
            (run_dir / name).unlink()
    return gone


def supersede_after(ckpt_dir: Path, resume_from: Path, log=print) -> None:
    """Move the checkpoints in `ckpt_dir` newer than `resume_from` (one of them: skipped as damaged, or a
    continuation abandoned by resuming an older one) to `ckpt_dir/superseded/`: kept, but never resumed from,
    exported or pruned in place of the new ones."""
    resume_from = Path(resume_from)
    step = checkpoint.step_of(resume_from)
    if step is None or resume_from.resolve().parent != ckpt_dir.resolve():
        return
    newer = [p for p in checkpoint.step_folders(ckpt_dir) if checkpoint.step_of(p) > step]
    if not newer:
        return
    aside = ckpt_dir / "superseded"
    aside.mkdir(exist_ok=True)
    for p in newer:
        if (aside / p.name).exists():
            shutil.rmtree(aside / p.name)
        p.rename(aside / p.name)
    log(f"resume: {', '.join(p.name for p in newer)} (after {resume_from.name}) moved to {aside}")
