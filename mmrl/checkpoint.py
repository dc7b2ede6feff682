"""Atomic checkpoints: safetensors weights + optimizer/RNG state + a JSON trainer state.

Layout of `RUN/checkpoints/step_000040/`:
  model.safetensors      full weights (full mode) or adapter weights (lora mode)
  merged_000.safetensors adapters merged into the base at earlier stage boundaries (lora mode)
  reference.safetensors  the frozen reference (full mode with a KL term, once the RL stage began)
  optimizer.pt           optimizer state (read back with torch.load(weights_only=True))
  rng.pt                 torch RNG state
  trainer_state.json     stage index, step counters, data cursor, best metric — written last

Everything is written into a hidden temporary folder which is then renamed into place (an atomic rename on
POSIX), so a kill at any moment leaves either the complete new checkpoint or none; `latest()` only returns
complete checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def save(
    root: Path, step: int, *, weights: dict[str, torch.Tensor], optimizer: dict | None, state: dict[str, Any],
    merged: list[dict[str, torch.Tensor]] = (), reference: dict[str, torch.Tensor] | None = None, keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `root` atomically; keep the newest `keep` (0 = all)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_tensors(weights, tmp / "model.safetensors")
    for k, adapter in enumerate(merged):
        _save_tensors(adapter, tmp / f"merged_{k:03d}.safetensors")
    if reference is not None:
        _save_tensors(reference, tmp / "reference.safetensors")
    if optimizer is not None:
        torch.save(optimizer, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    if keep > 0:
        for old in list_complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_complete(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists() and (p / "model.safetensors").exists())


def latest(root: Path) -> Path | None:
    done = list_complete(root)
    return done[-1] if done else None


def clean_partial(root: Path) -> None:
    """Remove temporary folders a killed run left behind."""
    for p in root.glob(".tmp-step_*") if root.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint folder back (tensors on CPU)."""
    path = Path(path)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a complete mmrl checkpoint (no {STATE_FILE})")
    merged = [load_file(str(p)) for p in sorted(path.glob("merged_*.safetensors"))]
    ref = path / "reference.safetensors"
    opt = path / "optimizer.pt"
    return {
        "weights": load_file(str(path / "model.safetensors")),
        "merged": merged,
        "reference": load_file(str(ref)) if ref.exists() else None,
        "optimizer": torch.load(opt, weights_only=True) if opt.exists() else None,
        "rng": torch.load(path / "rng.pt", weights_only=True),
        "state": json.loads((path / STATE_FILE).read_text()),
    }
