"""Read and write the native JSONL format: one JSON object per line, one `Sample` per object.

Two accepted shapes per line (keys beyond these are an error, with a did-you-mean):

    {"id": str, "messages": [chat messages], "answer": any, "task": str, "meta": {}}          # native
    {"id": str, "prompt": str, "image": path | "images": [paths], "answer": any, "task": str,
     "meta": {}}                                                                              # short

The short form becomes one user message: the image parts first, then the text part. Media paths that are
relative resolve against the JSONL file's folder and are stored as absolute path strings, e.g.
`{"type": "image", "image": "/abs/data/img/0.png"}`. String message content becomes one text part.

Errors name the file, the line and the field; `on_bad_sample="skip"` drops such lines and counts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from mmrl.datasets.answers import answer_problem
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.perception import images as _images  # module import: tolerates perception ↔ datasets cycles
from mmrl.registry import closest

NATIVE_KEYS = ("id", "messages", "answer", "task", "meta")
SHORT_KEYS = ("id", "prompt", "image", "images", "answer", "task", "meta")
PART_TYPES = ("text", "image", "video")
ON_BAD_SAMPLE = ("raise", "skip")


class _LineError(Exception):
    """A problem with one field of one line; turned into a BadSampleError with file and line."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def load_jsonl(
    path: str | os.PathLike, *, on_bad_sample: str = "raise", check_media: bool = True
) -> tuple[list[Sample], int]:
    """Read a JSONL file into `(samples, skipped)`.

    With `check_media`, every image is opened and fully decoded once (`load_image`) and then released;
    videos are only checked to exist. Duplicate ids are an error. Blank lines are ignored.
    Raises `BadSampleError` for the first bad line, unless `on_bad_sample="skip"`.
    """
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; expected one of {ON_BAD_SAMPLE}")
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} not found")
    samples: list[Sample] = []
    first_line: dict[str, int] = {}  # sample id -> line it was first seen on
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                sample = _parse_line(line, path, lineno, check_media)
                if sample.id in first_line:
                    raise BadSampleError(
                        sample.id,
                        f"{path}:{lineno}: field 'id': duplicate id (first on line {first_line[sample.id]})",
                    )
            except BadSampleError:
                if on_bad_sample == "raise":
                    raise
                skipped += 1
                continue
            first_line[sample.id] = lineno
            samples.append(sample)
    return samples, skipped


def _parse_line(line: str, path: Path, lineno: int, check_media: bool) -> Sample:
    """One line → Sample; every failure is a BadSampleError naming file, line and field."""
    fallback_id = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise BadSampleError(fallback_id, f"{path}:{lineno}: invalid JSON ({err})") from err
    sample_id = obj.get("id") if isinstance(obj, dict) else None
    sample_id = sample_id if isinstance(sample_id, str) and sample_id else fallback_id
    try:
        sample = _to_sample(obj, path.parent, sample_id)
        problem = answer_problem(sample.task, sample.answer)
        if problem:
            raise _LineError("answer", f"{problem} (task {sample.task!r})")
        if check_media:
            _check_media(sample)
        return sample
    except _LineError as err:
        raise BadSampleError(sample_id, f"{path}:{lineno}: field {err.field!r}: {err}") from err


def _to_sample(obj: Any, root: Path, fallback_id: str) -> Sample:
    """Validate one decoded JSON object (native or short form) and build the Sample."""
    if not isinstance(obj, dict):
        raise _LineError("<line>", f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj and "prompt" in obj:
        raise _LineError("prompt", "give either 'messages' or 'prompt', not both")
    allowed = NATIVE_KEYS if "messages" in obj else SHORT_KEYS
    for key in obj:
        if key not in allowed:
            hint = closest(key, allowed)
            raise _LineError(key, "unknown field" + (f"; did you mean {hint!r}?" if hint else ""))
    if "id" not in obj:
        raise _LineError("id", "missing")
    _expect(obj["id"], str, "id")
    if not obj["id"]:
        raise _LineError("id", "empty")
    task = _expect(obj.get("task", ""), str, "task")
    meta = _expect(obj.get("meta", {}), dict, "meta")
    if "messages" in obj:
        messages = _messages(obj["messages"], root)
    elif "prompt" in obj:
        messages = _short_form(obj, root)
    else:
        raise _LineError("messages", "missing (give 'messages' or 'prompt')")
    return Sample(id=obj["id"], messages=messages, answer=obj.get("answer"), task=task, meta=meta)


def _expect(value: Any, kind: type, field: str) -> Any:
    if not isinstance(value, kind):
        raise _LineError(field, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _short_form(obj: dict, root: Path) -> list[dict]:
    """`prompt` + `image`/`images` → one user message, image parts first, then the text."""
    prompt = _expect(obj["prompt"], str, "prompt")
    if "image" in obj and "images" in obj:
        raise _LineError("images", "give either 'image' or 'images', not both")
    if "images" in obj:
        paths = _expect(obj["images"], list, "images")
        for k, p in enumerate(paths):
            _expect(p, str, f"images[{k}]")
    else:
        paths = [_expect(obj["image"], str, "image")] if "image" in obj else []
    parts = [{"type": "image", "image": _resolve(p, root)} for p in paths]
    parts.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": parts}]


def _messages(messages: Any, root: Path) -> list[dict]:
    """Validate chat messages; string content becomes one text part; media paths become absolute."""
    _expect(messages, list, "messages")
    if not messages:
        raise _LineError("messages", "empty")
    out = []
    for m, msg in enumerate(messages):
        where = f"messages[{m}]"
        _expect(msg, dict, where)
        _expect(msg.get("role"), str, f"{where}.role")
        content = msg.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        _expect(content, list, f"{where}.content")
        parts = [_part(p, root, f"{where}.content[{k}]") for k, p in enumerate(content)]
        out.append({**msg, "content": parts})
    return out


def _part(part: Any, root: Path, where: str) -> dict:
    """Validate one content part; resolve media paths (a video may be one path or a list of frames)."""
    _expect(part, dict, where)
    kind = part.get("type")
    if kind not in PART_TYPES:
        raise _LineError(f"{where}.type", f"{kind!r} is not one of {PART_TYPES}")
    if kind not in part:
        raise _LineError(f"{where}.{kind}", "missing")
    value = part[kind]
    if kind == "text":
        _expect(value, str, f"{where}.text")
        return dict(part)
    if kind == "video" and isinstance(value, list):
        frames = [_resolve(_expect(v, str, f"{where}.video[{i}]"), root) for i, v in enumerate(value)]
        return {**part, "video": frames}
    return {**part, kind: _resolve(_expect(value, str, f"{where}.{kind}"), root)}


def _resolve(media: str, root: Path) -> str:
    """A media path relative to the JSONL folder (or absolute, or `file://…`) → absolute path string."""
    media = media[len("file://"):] if media.startswith("file://") else media
    return str((root / media).resolve()) if not os.path.isabs(media) else str(Path(media))


def _check_media(sample: Sample) -> None:
    """Decode every image once (then drop it) and check that videos exist; errors name the part's field."""
    for m, msg in enumerate(sample.messages):
        for k, part in enumerate(msg["content"]):
            kind, where = part["type"], f"messages[{m}].content[{k}].{part['type']}"
            if kind == "image":
                try:
                    _images.load_image(part["image"], sample_id=sample.id).close()
                except BadSampleError as err:
                    raise _LineError(where, str(err).removeprefix(f"sample {err.sample_id!r}: ")) from err
            elif kind == "video":
                frames = part["video"] if isinstance(part["video"], list) else [part["video"]]
                for frame in frames:
                    if not os.path.exists(frame):
                        raise _LineError(where, f"video file {frame!r}: not found")


# ---------------------------------------------------------------------------------------------- writing


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike) -> Path:
    """Write samples in the native format and return `path`, so `load_jsonl(write_jsonl(s, p))` round-trips.

    PIL images in message parts are saved as PNG under `images/<id>_<k>.png` next to the file (`k` counts a
    sample's images in prompt order; a video given as PIL frames becomes `images/<id>_v<k>_<f>.png`) and
    written as relative paths. Path media are written relative to the file when they lie under its
    folder, absolute otherwise. The JSONL is written to a temporary file and renamed into place.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for sample in samples:
            row = {
                "id": sample.id,
                "messages": _export_messages(sample, path.parent),
                "answer": sample.answer,
                "task": sample.task,
                "meta": sample.meta,
            }
            f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _export_messages(sample: Sample, root: Path) -> list[dict]:
    """Copy the messages with every PIL image saved under `root/images/` and replaced by its path."""
    stem = _file_stem(sample.id)
    counter = {"image": 0, "video": 0}
    out = []
    for msg in sample.messages:
        content = msg.get("content")
        if not isinstance(content, list):
            out.append(dict(msg))
            continue
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image", "video"):
                k = counter[kind]
                counter[kind] += 1
                name = f"{stem}_{k}" if kind == "image" else f"{stem}_v{k}"
                part = {**part, kind: _export_media(part[kind], root, name)}
            parts.append(part)
        out.append({**msg, "content": parts})
    return out


def _export_media(media: Any, root: Path, name: str) -> Any:
    """PIL image → saved PNG's relative path; list of frames → list of paths; path → portable path."""
    if isinstance(media, Image.Image):
        rel = Path("images") / f"{name}.png"
        (root / "images").mkdir(exist_ok=True)
        media.save(root / rel, format="PNG")
        return rel.as_posix()
    if isinstance(media, list):
        return [_export_media(frame, root, f"{name}_{f}") for f, frame in enumerate(media)]
    from mmrl.perception.video import Clip, write_video

    if isinstance(media, Clip):  # an in-memory clip (synthetic video tasks) → a real video file
        rel = Path("videos") / f"{name}.mp4"
        write_video(media, root / rel)
        return rel.as_posix()
    if isinstance(media, (str, os.PathLike)):
        absolute = Path(media).resolve()
        return absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else str(absolute)
    raise TypeError(f"cannot write media of type {type(media).__name__} to JSONL")


def _file_stem(sample_id: str) -> str:
    """A filesystem-safe stem for a sample id; ids that needed changes get a short hash (no collisions)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:100]
    if safe != sample_id:
        safe += "-" + hashlib.sha1(sample_id.encode()).hexdigest()[:8]
    return safe


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and tuples-in-disguise → plain JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
