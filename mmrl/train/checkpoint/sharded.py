"""Checkpoints of a run of several processes (mmrl.train.distributed), through torch.distributed.checkpoint.

Each process writes its shards of the trainable weights and the optimizer state (and the KL reference) into the
checkpoint's `dcp/` folder; rank 0 adds rng.pt, trainer_state.json and the manifest, and renames the folder into
place — the same atomic write as one process's checkpoint (`mmrl.train.checkpoint.files`). It loads into any number
of processes, one included (`load_sharded`), and its weights gather into one dict of whole tensors
(`gathered_weights`).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from mmrl.train.checkpoint.files import finish, read_file, read_state, rng_state, seal, torch_load, writing
from mmrl.train.checkpoint.layout import SHARDED, STATE_FILE, step_name


def _options(frozen: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=not frozen)


def _extra_state(extra_models: dict[str, Any]) -> dict[str, Any]:
    """The whole state (frozen parameters included) of each extra model, e.g. the KL reference."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return {name: get_model_state_dict(m, options=_options(frozen=True)) for name, m in dict(extra_models).items()}


def save_sharded(root: Path, step: int, *, root_module, optimizer, state: dict[str, Any], main: bool, barrier,
                 extra_models: dict[str, Any] = (), keep: int = 2) -> Path:
    """Every process writes its shards of the (trainable) weights and optimizer state, and of `extra_models` (e.g.
    the KL reference, whole), with torch.distributed.checkpoint into `step_N/dcp/`; rank 0 adds the trainer state,
    RNG and the manifest (of every process's files) and renames the folder into place once all are done. Loading
    reshards to any number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final, tmp = root / step_name(step), root / f".tmp-{step_name(step)}"
    if main:
        with writing(tmp, final, root):
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
    barrier()
    model, optim = get_state_dict(root_module, optimizer, options=_options(frozen=False))
    tensors = {"model": model, "optim": optim}
    tensors.update(_extra_state(extra_models))
    with writing(tmp, final, root, remove=main):
        dcp.save(tensors, checkpoint_id=str(tmp / SHARDED))  # returns once every process's shards are written
        if main:
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            seal(tmp)
    if main:
        finish(tmp, final, root, keep)
    barrier()
    return final


def load_sharded(path: Path, root_module, *, optimizer=None, extra_models: dict[str, Any] = ()) -> dict[str, Any]:
    """Read a sharded checkpoint into `root_module` (an FSDP root, or `mmrl.model.sharding.Root` around an unsharded
    model in one process), and into `optimizer` / `extra_models` when given; returns the trainer state and RNG
    (`weights` etc. are None: they are already in place)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict,
    )

    path = Path(path)
    state = read_state(path)
    if optimizer is not None:
        model, optim = get_state_dict(root_module, optimizer, options=_options(frozen=False))
        tensors = {"model": model, "optim": optim}
    else:
        tensors = {"model": get_model_state_dict(root_module, options=_options(frozen=False))}
    tensors.update(_extra_state(extra_models))
    with warnings.catch_warnings():  # in one process: "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        read_file(path, SHARDED, lambda f: dcp.load(tensors, checkpoint_id=str(f)))
    if optimizer is not None:
        set_state_dict(root_module, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"],
                       options=_options(frozen=False))
    else:
        set_model_state_dict(root_module, tensors["model"], options=_options(frozen=False))
    for name, m in dict(extra_models).items():
        set_model_state_dict(m, tensors[name], options=_options(frozen=True))
    return {"weights": None, "merged": [], "reference": None, "optimizer": None, "sharded": True,
            "rng": read_file(path, "rng.pt", torch_load), "state": state}


def gathered_weights(path: Path) -> dict[str, torch.Tensor]:
    """A sharded checkpoint's (trainable) weights gathered from every process's shards, in this one process: one
    dict of whole CPU tensors under the model's own parameter names."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    meta = read_file(path, f"{SHARDED}/.metadata",
                     lambda f: dcp.FileSystemReader(str(f.parent)).read_metadata().state_dict_metadata)
    prefix = "model.module."  # {"model": Root(model).state_dict()} flattened
    skeleton = {k: torch.empty(m.size, dtype=m.properties.dtype, device="cpu") for k, m in meta.items()
                if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        read_file(path, SHARDED, lambda f: dcp.load(skeleton, checkpoint_id=str(f), no_dist=True))
    return {k[len(prefix):]: v for k, v in skeleton.items()}
