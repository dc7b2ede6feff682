"""Atomic checkpoints: safetensors weights + optimizer/RNG state + a JSON trainer state.

Layout of `RUN/checkpoints/step_000040/`:
  model.safetensors      full weights (full mode) or adapter weights (lora mode)
  merged_000.safetensors adapters merged into the base at earlier stage boundaries (lora mode)
  reference.safetensors  the frozen reference (full mode with a KL term, once the RL stage began)
  optimizer.pt           optimizer state, host tensors (read back with torch.load(weights_only=True))
  rng.pt                 torch RNG state (CPU, and CUDA's when the run uses it)
  trainer_state.json     stage index, step counters, data cursor, best metric — written last

A run of several processes (mmrl.train.distributed) writes instead `dcp/` — each process's shards of the trainable
weights and the optimizer state (and the KL reference), through torch.distributed.checkpoint — plus rng.pt and
trainer_state.json; it loads into any number of processes, one included (`load_sharded`).

Everything is written into a hidden temporary folder which is then renamed into place (an atomic rename on
POSIX), so a kill at any moment leaves either the complete new checkpoint or none; `latest()` only returns
complete checkpoints. A write that fails (a full disk included) removes the temporary folder and raises
CheckpointError naming the checkpoint; the previous checkpoints are untouched.

Last into the temporary folder goes `manifest.json`: every other file's relative path, size in bytes and sha256.
`verify(path)` compares sizes first (a truncated file is found without reading anything) and then checksums (a
flipped byte), and `resume_point(root)` picks the newest checkpoint that verifies, saying which newer ones it
skipped and why. Checkpoints written before manifests existed are accepted with a note (only their state's JSON and
their safetensors files' lengths can be checked). Reading a damaged file raises CheckpointError naming the
checkpoint and the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmrl.errors import CheckpointError

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
_BLOCK = 1 << 22  # bytes hashed per read: files are streamed, never read whole
_INTERRUPTS = (KeyboardInterrupt, SystemExit)  # a kill, not a failure: the temporary folder stays for clean_partial


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
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    with _writing(tmp, final, root):
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
        _seal(tmp)
    return _finish(tmp, final, root, keep)


@contextmanager
def _writing(tmp: Path, final: Path, root: Path, *, remove: bool = True) -> Iterator[None]:
    """Writing checkpoint `final` through `tmp`: on failure remove `tmp` (where `remove`) and raise CheckpointError
    naming `final`, saying so when the disk is full and naming the previous checkpoint, which is untouched."""
    try:
        yield
    except _INTERRUPTS:
        raise
    except BaseException as err:  # torch.distributed.checkpoint's CheckpointException derives from BaseException
        if remove:
            shutil.rmtree(tmp, ignore_errors=True)
        shown = _shown(err)
        cause = ("no space left on device" if _disk_full(shown) else
                 "a short write, most likely no space left on device" if _short_write(shown) else "the write failed")
        previous = latest(root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        raise CheckpointError(f"could not write checkpoint {final}: {cause} ({_summary(shown)}); the partial copy"
                              f" was removed and {kept}") from err


def _shown(err: BaseException) -> BaseException:
    """`err`, or for torch.distributed.checkpoint's CheckpointException (rank → (error, stack)) its first error."""
    failure = next(iter(getattr(err, "failures", {}).values()), None)
    return failure[0] if isinstance(failure, tuple) else err


def _summary(err: BaseException) -> str:
    """"Type: first sentence of the first line" (torch's messages go on with advice that does not apply here)."""
    line = (str(err).strip() or "-").splitlines()[0]
    return f"{type(err).__name__}: {re.split(r'[.] +(?=[A-Z])', line, maxsplit=1)[0][:200]}"


def _disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it came from, is ENOSPC (safetensors reports it as text: "os error 28")."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "no space left on device" in str(err).lower() or "(os error 28)" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _short_write(err: BaseException) -> bool:
    """torch.save's report of a write that stopped short ("unexpected pos 576 vs 534" on a full disk)."""
    return "unexpected pos" in str(err) or "file write failed" in str(err)


def _seal(tmp: Path) -> None:
    """Write `tmp`'s manifest (last), then fsync every file: the folder is ready for its atomic rename."""
    _write_manifest(tmp)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _finish(tmp: Path, final: Path, root: Path, keep: int) -> Path:
    """Move the sealed `tmp` into place as `final` (atomic rename), prune to the newest `keep`."""
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
    the KL reference, whole), with torch.distributed.checkpoint into `step_N/dcp/`; rank 0 adds the trainer state,
    RNG and the manifest (of every process's files) and renames the folder into place once all are done. Loading
    reshards to any number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    final, tmp = root / f"step_{step:06d}", root / f".tmp-step_{step:06d}"
    if main:
        with _writing(tmp, final, root):
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
    barrier()
    model, optim = get_state_dict(root_module, optimizer, options=_options(frozen=False))
    tensors = {"model": model, "optim": optim}
    tensors.update({name: get_model_state_dict(m, options=_options(frozen=True)) for name, m in dict(extra_models).items()})
    with _writing(tmp, final, root, remove=main):
        dcp.save(tensors, checkpoint_id=str(tmp / SHARDED))  # returns once every process's shards are written
        if main:
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            _seal(tmp)
    if main:
        _finish(tmp, final, root, keep)
    barrier()
    return final


def load_sharded(path: Path, root_module, *, optimizer=None, extra_models: dict[str, Any] = ()) -> dict[str, Any]:
    """Read a sharded checkpoint into `root_module` (an FSDP root, or `mmrl.train.distributed.Root` around an unsharded
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
    tensors.update({name: get_model_state_dict(m, options=_options(frozen=True)) for name, m in dict(extra_models).items()})
    with warnings.catch_warnings():  # in one process: "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        _read(path, SHARDED, lambda f: dcp.load(tensors, checkpoint_id=str(f)))
    if optimizer is not None:
        set_state_dict(root_module, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"],
                       options=_options(frozen=False))
    else:
        set_model_state_dict(root_module, tensors["model"], options=_options(frozen=False))
    for name, m in dict(extra_models).items():
        set_model_state_dict(m, tensors[name], options=_options(frozen=True))
    return {"weights": None, "merged": [], "reference": None, "optimizer": None, "sharded": True,
            "rng": _read(path, "rng.pt", _torch_load), "state": state}


def full_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's (trainable) weights as one dict of whole tensors under the model's own parameter names,
    whichever way it was written (one process: model.safetensors; several: gathered from the shards)."""
    path = Path(path)
    if not is_sharded(path):
        return _read(path, "model.safetensors", _tensors)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = _read(path, f"{SHARDED}/.metadata",
                 lambda f: dcp.FileSystemReader(str(f.parent)).read_metadata().state_dict_metadata)
    prefix = "model.module."  # {"model": Root(model).state_dict()} flattened
    skeleton = {k: torch.empty(m.size, dtype=m.properties.dtype, device="cpu") for k, m in meta.items()
                if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        _read(path, SHARDED, lambda f: dcp.load(skeleton, checkpoint_id=str(f), no_dist=True))
    return {k[len(prefix):]: v for k, v in skeleton.items()}


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state of a complete checkpoint (JSON), without reading any tensor."""
    return _read(Path(path), STATE_FILE, lambda f: json.loads(f.read_text()))


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
    """Read a checkpoint folder back (tensors on CPU). A file that is missing or cannot be read raises
    CheckpointError naming the checkpoint and the file; checksums are `verify`'s (`resume_point`, `require_intact`)."""
    path = Path(path)
    state = read_state(path)
    optional = {name: _read(path, name, reader) if (path / name).exists() else None
                for name, reader in (("reference.safetensors", _tensors), ("optimizer.pt", _torch_load))}
    return {
        "weights": _read(path, "model.safetensors", _tensors),
        "merged": [_read(path, p.name, _tensors) for p in sorted(path.glob("merged_*.safetensors"))],
        "reference": optional["reference.safetensors"],
        "optimizer": optional["optimizer.pt"],
        "rng": _read(path, "rng.pt", _torch_load),
        "state": state,
    }


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    return load_file(str(file))


def _torch_load(file: Path) -> Any:
    return torch.load(file, weights_only=True, map_location="cpu")


def _read(path: Path, name: str, reader: Callable[[Path], Any]) -> Any:
    """`reader(path / name)`; a missing or unreadable file (bad JSON, a truncated safetensors file, an optimizer
    state that does not unpickle, a damaged dcp/ folder) raises CheckpointError naming the checkpoint and the file."""
    if not (path / name).exists():
        raise CheckpointError(f"checkpoint {path}: {name} missing")
    try:
        return reader(path / name)
    except _INTERRUPTS:
        raise
    except BaseException as err:  # torch.distributed.checkpoint's CheckpointException derives from BaseException
        raise CheckpointError(f"checkpoint {path}: {name} cannot be read ({_summary(_shown(err))})") from err


# ---------------------------------------------------------------------------------------- verification
def _sha256(file: Path) -> str:
    """sha256 of `file`, streamed in blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _sha256_all(files: list[Path]) -> list[str]:
    """sha256 of each file, several at once (hashlib releases the GIL while it hashes a block)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1, 8))) as pool:
        return list(pool.map(_sha256, files))


def _write_manifest(folder: Path) -> None:
    """`folder/manifest.json`: every other file under `folder` — relative path → size in bytes and sha256."""
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f != folder / MANIFEST)
    listed = {f.relative_to(folder).as_posix(): {"bytes": f.stat().st_size, "sha256": digest}
              for f, digest in zip(files, _sha256_all(files))}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": listed}, indent=1))


def verify(path: Path) -> str | None:
    """None when checkpoint `path` is intact, else a short reason: "model.safetensors: 1234 bytes, manifest says
    5678", "optimizer.pt: checksum differs", "manifest.json unreadable", "trainer_state.json missing". Every size
    is compared before any checksum, so a truncated file is found without reading one. A checkpoint without a
    manifest (written before checkpoints carried one) gets only `_unlisted_problem`'s checks."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        return f"{STATE_FILE} missing"
    if not (path / MANIFEST).exists():
        return _unlisted_problem(path)
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        listed = {str(name): (int(e["bytes"]), str(e["sha256"])) for name, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable, not JSON, not the shape above
        return f"{MANIFEST} unreadable"
    if STATE_FILE not in listed:
        return f"{MANIFEST} does not list {STATE_FILE}"
    for name, (size, _) in listed.items():
        if not (path / name).is_file():
            return f"{name} missing"
        if (actual := (path / name).stat().st_size) != size:
            return f"{name}: {actual} bytes, manifest says {size}"
    names = sorted(listed)
    for name, digest in zip(names, _sha256_all([path / n for n in names])):
        if digest != listed[name][1]:
            return f"{name}: checksum differs"
    return None


def _unlisted_problem(path: Path) -> str | None:
    """What shows without a manifest: a trainer state that is not JSON, missing weights, or a safetensors file
    whose length differs from what its header says (8-byte header length + JSON header + the tensors' bytes)."""
    try:
        json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return f"{STATE_FILE} unreadable"
    if not (path / "model.safetensors").is_file() and not is_sharded(path):
        return "model.safetensors missing"
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        try:
            with open(file, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n)) if n <= size else None
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return f"{file.name}: header unreadable"
        if size != 8 + n + end:
            return f"{file.name}: {size} bytes, its header says {8 + n + end}"
    return None


def _unverified_note(path: Path) -> list[str]:
    if (path / MANIFEST).exists():
        return []
    return [f"{path} has no {MANIFEST} (written before checkpoints carried one): its files cannot be verified"]


def require_intact(path: Path) -> list[str]:
    """Raise CheckpointError naming `path` and the reason when checkpoint `path` fails `verify`; else its notes
    (one when it has no manifest and so could not be verified)."""
    path = Path(path)
    if (reason := verify(path)) is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: {reason}")
    return _unverified_note(path)


def resume_point(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under `root` that verifies, and notes: "skipped PATH: REASON" for each newer one, and
    one when the chosen one has no manifest. (None, []) when `root` holds no checkpoint; when it holds some but
    none verifies, CheckpointError naming `root` and every checkpoint's reason."""
    root = Path(root)
    found = sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    skipped = []
    for path in reversed(found):
        reason = verify(path)
        if reason is None:
            return path, skipped + _unverified_note(path)
        skipped.append(f"skipped {path}: {reason}")
    if skipped:
        raise CheckpointError(f"no intact checkpoint in {root}:\n  " + "\n  ".join(skipped))
    return None, []
