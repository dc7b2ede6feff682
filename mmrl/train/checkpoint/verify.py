"""A checkpoint's manifest and what it lets a resume check.

Last into a checkpoint's temporary folder goes `manifest.json`: every other file's relative path, size in bytes and
sha256. `verify(path)` compares sizes first (a truncated file is found without reading anything) and then checksums
(a flipped byte), and `resume_point(root)` picks the newest checkpoint that verifies, saying which newer ones it
skipped and why. Checkpoints written before manifests existed are accepted with a note (only their state's JSON and
their safetensors files' lengths can be checked).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmrl.errors import CheckpointError
from mmrl.train.checkpoint.layout import MANIFEST, STATE_FILE, is_sharded, step_folders

_BLOCK = 1 << 22  # bytes hashed per read: files are streamed, never read whole


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


def write_manifest(folder: Path) -> None:
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
    skipped = []
    for path in reversed(step_folders(root)):
        reason = verify(path)
        if reason is None:
            return path, skipped + _unverified_note(path)
        skipped.append(f"skipped {path}: {reason}")
    if skipped:
        raise CheckpointError(f"no intact checkpoint in {root}:\n  " + "\n  ".join(skipped))
    return None, []
