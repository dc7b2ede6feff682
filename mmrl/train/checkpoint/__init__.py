"""Atomic checkpoints: safetensors weights + optimizer/RNG state + a JSON trainer state.

Layout of `RUN/checkpoints/step_000040/`:
  model.safetensors      full weights (full mode) or adapter weights (lora mode)
  merged_000.safetensors adapters merged into the base at earlier stage boundaries (lora mode)
  reference.safetensors  the frozen reference (full mode with a KL term, once the RL stage began)
  optimizer.pt           optimizer state, host tensors (read back with torch.load(weights_only=True))
  rng.pt                 torch RNG state (CPU, and CUDA's when the run uses it)
  trainer_state.json     stage index, step counters, data cursor, best metric
  manifest.json          every other file's size and sha256 — written last

This package's root writes and reads one process's checkpoints (`save`, `load`, `full_weights`) and is the one
import the rest of mmrl uses: it re-exports its modules' pieces —
  layout   folder names (`step_name` / `step_of`), which checkpoints are complete (`list_complete`)
  files    the atomic write (temporary folder, manifest last, rename), reads that name the bad file
  verify   the manifest: `verify`, `require_intact`, `resume_point`
  sharded  a run of several processes: `save_sharded` / `load_sharded` via torch.distributed.checkpoint
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmrl.errors import CheckpointError
from mmrl.train.checkpoint.files import (
    finish, read_file, read_state, rng_state, seal, set_rng, torch_load, writing,
)
from mmrl.train.checkpoint.layout import (
    MANIFEST, SHARDED, STATE_FILE, clean_partial, is_sharded, latest, list_complete, step_folders, step_name, step_of,
)
from mmrl.train.checkpoint.sharded import gathered_weights, load_sharded, save_sharded
from mmrl.train.checkpoint.verify import require_intact, resume_point, verify

__all__ = [
    "CheckpointError", "MANIFEST", "SHARDED", "STATE_FILE",
    "save", "load", "full_weights", "read_state", "to_host", "rng_state", "set_rng",
    "step_name", "step_of", "step_folders", "is_sharded", "list_complete", "latest", "clean_partial",
    "verify", "require_intact", "resume_point", "save_sharded", "load_sharded",
]


def save(
    root: Path, step: int, *, weights: dict[str, torch.Tensor], optimizer: dict | None, state: dict[str, Any],
    merged: list[dict[str, torch.Tensor]] = (), reference: dict[str, torch.Tensor] | None = None, keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `root` atomically; keep the newest `keep` (0 = all)."""
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    with writing(tmp, final, root):
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _save_tensors(weights, tmp / "model.safetensors")
        for k, adapter in enumerate(merged):
            _save_tensors(adapter, tmp / f"merged_{k:03d}.safetensors")
        if reference is not None:
            _save_tensors(reference, tmp / "reference.safetensors")
        if optimizer is not None:
            torch.save(to_host(optimizer), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        seal(tmp)
    return finish(tmp, final, root, keep)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint folder back (tensors on CPU). A file that is missing or cannot be read raises
    CheckpointError naming the checkpoint and the file; checksums are `verify`'s (`resume_point`, `require_intact`)."""
    path = Path(path)
    state = read_state(path)
    optional = {name: read_file(path, name, reader) if (path / name).exists() else None
                for name, reader in (("reference.safetensors", _tensors), ("optimizer.pt", torch_load))}
    return {
        "weights": read_file(path, "model.safetensors", _tensors),
        "merged": [read_file(path, p.name, _tensors) for p in sorted(path.glob("merged_*.safetensors"))],
        "reference": optional["reference.safetensors"],
        "optimizer": optional["optimizer.pt"],
        "rng": read_file(path, "rng.pt", torch_load),
        "state": state,
    }


def full_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's (trainable) weights as one dict of whole tensors under the model's own parameter names,
    whichever way it was written (one process: model.safetensors; several: gathered from the shards)."""
    path = Path(path)
    if is_sharded(path):
        return gathered_weights(path)
    return read_file(path, "model.safetensors", _tensors)


def to_host(obj: Any) -> Any:
    """`obj` (nested dicts / lists / tuples) with every tensor copied to the host: checkpoints hold no device
    tensors, so a run saved on a GPU resumes on any device (the optimizer moves its state to its parameters)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    return load_file(str(file))
