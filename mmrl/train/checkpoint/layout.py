"""Where a checkpoint's files live, how its folder is named, and which checkpoints a folder holds.

Step 40's checkpoint is the folder `RUN/checkpoints/step_000040/` (`step_name`, read back by `step_of`: the one
place that maps folder names to steps). It is complete once its trainer state (STATE_FILE) sits beside its weights:
`model.safetensors` when one process wrote it, the torch.distributed.checkpoint folder SHARDED when several did.
A checkpoint being written lives in a hidden `.tmp-step_000040…` folder until its atomic rename
(`mmrl.train.checkpoint.files`); `clean_partial` removes those a killed run left behind.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
SHARDED = "dcp"  # the torch.distributed.checkpoint folder of a checkpoint written by several processes
_STEP_NAME = re.compile(r"step_(\d+)")


def step_name(step: int) -> str:
    """The folder name of step `step`'s checkpoint: `step_000040` for 40."""
    return f"step_{step:06d}"


def step_of(path: Path | str) -> int | None:
    """The step of checkpoint folder `path` (`…/step_000040` → 40); None when its name is not `step_<digits>`."""
    match = _STEP_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def step_folders(root: Path) -> list[Path]:
    """The `step_<digits>` folders under `root`, complete or not, ordered by step (oldest first)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: (step_of(p), p.name))


def is_sharded(path: Path) -> bool:
    """Whether checkpoint `path` was written by several processes (its weights are shards under SHARDED)."""
    return (Path(path) / SHARDED / ".metadata").exists()


def list_complete(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (written by one process or by several)."""
    return [p for p in step_folders(root)
            if (p / STATE_FILE).exists() and ((p / "model.safetensors").exists() or is_sharded(p))]


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    done = list_complete(root)
    return done[-1] if done else None


def clean_partial(root: Path) -> None:
    """Remove temporary folders a killed run left behind."""
    for p in root.glob(".tmp-step_*") if root.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)
