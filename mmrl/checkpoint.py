"""Atomic checkpoints: safetensors weights + optimizer/RNG state + a JSON trainer state.

Layout of `RUN/checkpoints/step_000040/`:
  model.safetensors      full weights (full mode) or adapter weights (lora mode)
  merged_000.safetensors adapters merged into the base at earlier stage boundaries (lora mode)
  reference.safetensors  the frozen reference (full mode with a KL term, once the RL stage began)
  optimizer.pt           optimizer state, host tensors (read back with torch.load(weights_only=True))
  rng.pt                 torch RNG state (CPU, and CUDA's when the run uses it)
  trainer_state.json     stage index, step counters, data cursor, best metric — written last

A run of several processes (mmrl.distributed) writes instead `dcp/` — each process's shards of the trainable
weights and the optimizer state (and the KL reference), through torch.distributed.checkpoint — plus rng.pt and
trainer_state.json; it loads into any number of processes, one included (`load_sharded`).

Everything is written into a hidden temporary folder which is then renamed into place (an atomic rename on
POSIX), so a kill at any moment leaves either the complete new checkpoint or none; `latest()` only returns
complete checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
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


def rng_state() -> dict[str, Any]:
    """The global RNG states: the CPU's, and every CUDA device's when CUDA has been initialised."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng(state: dict[str, Any]) -> None:
    """Restore `rng_state()`'s states (CUDA's only where this run has as many devices)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


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
        torch.save(to_host(optimizer), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    return _finish(tmp, final, root, keep)


def _finish(tmp: Path, final: Path, root: Path, keep: int) -> Path:
    """fsync every file of `tmp`, move it into place as `final` (atomic rename), prune to the newest `keep`."""
    for f in tmp.rglob("*"):
        if f.is_file():
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


# ---------------------------------------------------------------------------------- across processes
SHARDED = "dcp"  # the torch.distributed.checkpoint folder of a checkpoint written by several processes


def is_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED / ".metadata").exists()


def _options(frozen: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=not frozen)


def save_sharded(root: Path, step: int, *, root_module, optimizer, state: dict[str, Any], main: bool, barrier,
                 extra_models: dict[str, Any] = (), keep: int = 2) -> Path:
    """Every process writes its shards of the (trainable) weights and optimizer state, and of `extra_models` (e.g.
    the KL reference, whole), with torch.distributed.checkpoint into `step_N/dcp/`; rank 0 adds the trainer state
    and RNG and renames the folder into place once all are done. Loading reshards to any number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    final, tmp = root / f"step_{step:06d}", root / f".tmp-step_{step:06d}"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    model, optim = get_state_dict(root_module, optimizer, options=_options(frozen=False))
    tensors = {"model": model, "optim": optim}
    tensors.update({name: get_model_state_dict(m, options=_options(frozen=True)) for name, m in dict(extra_models).items()})
    dcp.save(tensors, checkpoint_id=str(tmp / SHARDED))
    if main:
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        _finish(tmp, final, root, keep)
    barrier()
    return final


def load_sharded(path: Path, root_module, *, optimizer=None, extra_models: dict[str, Any] = ()) -> dict[str, Any]:
    """Read a sharded checkpoint into `root_module` (an FSDP root, or `mmrl.distributed.Root` around an unsharded
    model in one process), and into `optimizer` / `extra_models` when given; returns the trainer state and RNG
    (`weights` etc. are None: they are already in place)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict,
    )

    path = Path(path)
    if optimizer is not None:
        model, optim = get_state_dict(root_module, optimizer, options=_options(frozen=False))
        tensors = {"model": model, "optim": optim}
    else:
        tensors = {"model": get_model_state_dict(root_module, options=_options(frozen=False))}
    tensors.update({name: get_model_state_dict(m, options=_options(frozen=True)) for name, m in dict(extra_models).items()})
    with warnings.catch_warnings():  # in one process: "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(tensors, checkpoint_id=str(path / SHARDED))
    if optimizer is not None:
        set_state_dict(root_module, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"],
                       options=_options(frozen=False))
    else:
        set_model_state_dict(root_module, tensors["model"], options=_options(frozen=False))
    for name, m in dict(extra_models).items():
        set_model_state_dict(m, tensors[name], options=_options(frozen=True))
    return {"weights": None, "merged": [], "reference": None, "optimizer": None, "sharded": True,
            "rng": torch.load(path / "rng.pt", weights_only=True, map_location="cpu"), "state": read_state(path)}


def full_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's (trainable) weights as one dict of whole tensors under the model's own parameter names,
    whichever way it was written (one process: model.safetensors; several: gathered from the shards)."""
    path = Path(path)
    if not is_sharded(path):
        return load_file(str(path / "model.safetensors"))
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(path / SHARDED)).read_metadata().state_dict_metadata
    prefix = "model.module."  # {"model": Root(model).state_dict()} flattened
    skeleton = {k: torch.empty(m.size, dtype=m.properties.dtype, device="cpu") for k, m in meta.items()
                if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(skeleton, checkpoint_id=str(path / SHARDED), no_dist=True)
    return {k[len(prefix):]: v for k, v in skeleton.items()}


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state of a complete checkpoint (JSON), without reading any tensor."""
    return json.loads((Path(path) / STATE_FILE).read_text())


def list_complete(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (written by one process or by several)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*")
                  if (p / STATE_FILE).exists() and ((p / "model.safetensors").exists() or is_sharded(p)))


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
        "optimizer": torch.load(opt, weights_only=True, map_location="cpu") if opt.exists() else None,
        "rng": torch.load(path / "rng.pt", weights_only=True, map_location="cpu"),
        "state": json.loads((path / STATE_FILE).read_text()),
    }
