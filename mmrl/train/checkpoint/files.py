"""Writing a checkpoint folder atomically, and reading its files back with errors that name them — shared by the
one-process writer (`mmrl.train.checkpoint`) and the several-process one (`mmrl.train.checkpoint.sharded`).

Everything is written into a hidden temporary folder (`writing`), sealed with its manifest last (`seal`), then
renamed into place (`finish`: an atomic rename on POSIX), so a kill at any moment leaves either the complete new
checkpoint or none. A write that fails (a full disk included) removes the temporary folder and raises
CheckpointError naming the checkpoint; the previous checkpoints are untouched. Reading a damaged file (`read_file`)
raises CheckpointError naming the checkpoint and the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mmrl.errors import CheckpointError
from mmrl.train.checkpoint.layout import STATE_FILE, latest, list_complete
from mmrl.train.checkpoint.verify import write_manifest

_INTERRUPTS = (KeyboardInterrupt, SystemExit)  # a kill, not a failure: the temporary folder stays for clean_partial


# ------------------------------------------------------------------------------------------------ writing
@contextmanager
def writing(tmp: Path, final: Path, root: Path, *, remove: bool = True) -> Iterator[None]:
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


def seal(tmp: Path) -> None:
    """Write `tmp`'s manifest (last), then fsync every file: the folder is ready for its atomic rename."""
    write_manifest(tmp)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def finish(tmp: Path, final: Path, root: Path, keep: int) -> Path:
    """Move the sealed `tmp` into place as `final` (atomic rename), prune to the newest `keep` (0 = all)."""
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    if keep > 0:
        for old in list_complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ reading
def read_file(path: Path, name: str, reader: Callable[[Path], Any]) -> Any:
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


def torch_load(file: Path) -> Any:
    """A `torch.save`d file (optimizer state, RNG state), tensors only: never unpickles arbitrary objects."""
    return torch.load(file, weights_only=True, map_location="cpu")


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state of a complete checkpoint (JSON), without reading any tensor."""
    return read_file(Path(path), STATE_FILE, lambda f: json.loads(f.read_text()))


# ------------------------------------------------------------------------------------------------ RNG
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
