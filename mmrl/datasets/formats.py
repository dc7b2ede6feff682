"""Data sets in the formats people already have: JSON, JSONL, parquet or a saved HF `datasets` directory, holding
mmrl's native records or a peer's (VLM-R1 REC, EasyR1 / HF `problem`-`answer`-`images`, LLaVA conversations).

`load_file(path, format="auto", fields={…}, image_root=…, template=…)` reads records, renames fields by the
mapping (`fields: {mmrl key: your key}`), detects each record's format from its keys (or uses the one named),
and converts it to a `Sample`:
- `native`: mmrl's own JSONL shapes (`mmrl.datasets.jsonl`);
- `vlm_r1_rec`: `{"image", "problem", "solution": [x1, y1, x2, y2] | "<answer>[…]</answer>"}` → a grounding
  sample with `answer = {"boxes": [box]}` in original pixels (VLM-R1's referring-expression data);
- `easyr1`: `{"problem", "answer", "images": [...]}` with `<image>` placeholders in the problem text marking
  where the images go (EasyR1's and many HF data sets' layout; `prompt` for `problem` when the images are
  in-memory cells, since `prompt` with image paths is mmrl's native short form);
- `llava`: `{"image", "conversations": [{"from": "human", "value": "<image>\\n…"}, {"from": "gpt", …}]}` → the
  first human turn is the prompt, the first reply the answer;
- `deepeyes`: verl's RL records as DeepEyes releases them, `{"prompt": [chat messages], "images": [...],
  "reward_model": {"ground_truth": …}, "data_source", "extra_info", …}` → the chat messages (a system turn kept,
  `<image>` markers replaced by the images), the answer from `reward_model.ground_truth`, the rest in `meta`.
Images may be paths (relative to `image_root`, else to the file's folder), bytes, or HF `Image` cells
(`{"bytes", "path"}`). `template` (with `{problem}`) rewrites the question text. Errors name the file, the
record (line or index) and the field; `on_bad_sample: skip` drops such records and counts them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from mmrl.datasets.answers import answer_problem
from mmrl.datasets.jsonl import _check_media, _LineError, _resolve, _to_sample
from mmrl.datasets.sample import BadSampleError, Sample, with_template
from mmrl.perception.images import load_image
from mmrl.registry import Registry

FORMATS: Registry[Callable[..., Sample]] = Registry("data format")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
REC_TEMPLATE = "Locate {problem}. Answer with its bounding box [x1, y1, x2, y2] inside <answer></answer>."
DEEPEYES_KEYS = ("prompt", "images", "reward_model")  # the keys that make a record `deepeyes` when auto-detected
CHAT_ROLES = ("system", "user", "assistant")


# ------------------------------------------------------------------------------------------------ reading
def records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record: `file:line` for JSONL, `file[index]` otherwise."""
    if path.is_dir():  # a data set saved with `datasets.Dataset.save_to_disk`
        from datasets import load_from_disk

        for i, row in enumerate(load_from_disk(str(path))):
            yield f"{path}[{i}]", row
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{lineno}", json.loads(line)
                    except json.JSONDecodeError as err:
                        yield f"{path}:{lineno}", _Invalid(f"invalid JSON ({err})")
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BadSampleError(str(path), f"{path}: invalid JSON ({err})") from err
        rows = data.get("data") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise BadSampleError(str(path), f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        for i, row in enumerate(rows):
            yield f"{path}[{i}]", row
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row
    else:
        raise BadSampleError(str(path), f"{path}: unknown data file type (use .jsonl, .json, .parquet or a saved "
                                        "datasets directory)")


class _Invalid:
    def __init__(self, message: str):
        self.message = message


def _cells(record: dict) -> bool:
    """Whether the record's `images` hold in-memory cells (HF `Image` dicts, bytes, PIL images), not paths."""
    raw = record.get("images", [])
    return any(not isinstance(v, str) for v in (raw if isinstance(raw, list) else [raw]))


def detect(record: dict) -> str:
    """The format a record's keys say it is in."""
    if all(key in record for key in DEEPEYES_KEYS):  # verl RL records; mmrl's short form has no `reward_model`
        return "deepeyes"
    if "messages" in record or ("prompt" in record and not ("answer" in record and _cells(record))):
        return "native"
    if "conversations" in record:
        return "llava"
    if "problem" in record and "solution" in record:
        return "vlm_r1_rec"
    if ("problem" in record or "prompt" in record) and "answer" in record:  # HF data sets often say `prompt`
        return "easyr1"
    raise _LineError("<record>", f"cannot tell its format from its keys {sorted(record)[:8]} (set data format:)")


# ------------------------------------------------------------------------------------------------ helpers
def _media(value: Any, root: Path, sample_id: str, field: str) -> Any:
    """A path (resolved against `root`) or an in-memory image from bytes / an HF Image cell."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # datasets' Image feature
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return load_image(bytes(value), sample_id=sample_id)
    if isinstance(value, str) and value:
        return _resolve(value, root)
    if hasattr(value, "convert"):  # a PIL image
        return value
    raise _LineError(field, f"expected an image path, bytes or image, got {type(value).__name__}")


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _LineError(field, "expected non-empty text")
    return value


def _user(parts: list[dict]) -> list[dict]:
    return [{"role": "user", "content": parts}]


def _with_images(text: str, images: list[Any]) -> list[dict]:
    """Content parts: images where `<image>` placeholders stand (in order), the rest before the text."""
    pieces = text.split("<image>")
    parts: list[dict] = []
    if len(pieces) - 1 != len(images):  # no (or mismatched) placeholders: images first, then the text
        parts = [{"type": "image", "image": im} for im in images]
        clean = text.replace("<image>", "").strip()
        return parts + ([{"type": "text", "text": clean}] if clean else [])
    for k, piece in enumerate(pieces):
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
        if k < len(images):
            parts.append({"type": "image", "image": images[k]})
    return parts


# ----------------------------------------------------------------------------------------------- formats
@FORMATS.register("native")
def native(record: dict, *, root: Path, sample_id: str, template: str | None = None, **_) -> Sample:
    sample = _to_sample(record, root, sample_id)
    return with_template(sample, template) if template else sample


@FORMATS.register("vlm_r1_rec")
def vlm_r1_rec(record: dict, *, root: Path, sample_id: str, template: str | None = None, **_) -> Sample:
    """VLM-R1's REC records (arXiv:2504.07615): `image`, `problem` (the referring expression), `solution` (the
    box in original pixels, as a list or text)."""
    problem = _text(record.get("problem"), "problem")
    sol = record.get("solution")
    if isinstance(sol, str):
        m = _BOX.search(sol)
        sol = [float(v) for v in m.groups()] if m else None
    if not (isinstance(sol, (list, tuple)) and len(sol) == 4 and all(isinstance(v, (int, float)) for v in sol)):
        raise _LineError("solution", "expected a box [x1, y1, x2, y2]")
    image = _media(record.get("image"), root, sample_id, "image")
    text = (template or REC_TEMPLATE).format(problem=problem.strip())
    return Sample(id=sample_id, messages=_user([{"type": "image", "image": image}, {"type": "text", "text": text}]),
                  answer={"boxes": [[float(v) for v in sol]], "labels": [problem.strip()]}, task="grounding",
                  meta={k: v for k, v in record.items() if k not in ("image", "problem", "solution", "id")})


@FORMATS.register("easyr1")
def easyr1(record: dict, *, root: Path, sample_id: str, template: str | None = None, **_) -> Sample:
    """EasyR1 / HF layout: `problem` (or `prompt`; with `<image>` placeholders), `answer`, `images` (a list, or
    one)."""
    key = "problem" if "problem" in record else "prompt"
    problem = _text(record.get(key), key)
    raw = record.get("images", [])
    raw = raw if isinstance(raw, list) else [raw]
    images = [_media(v, root, sample_id, f"images[{k}]") for k, v in enumerate(raw)]
    if template:
        problem = template.format(problem=problem)
    if record.get("answer") is None:
        raise _LineError("answer", "missing")
    return Sample(id=sample_id, messages=_user(_with_images(problem, images)), answer=record["answer"],
                  task=str(record.get("task", "")),
                  meta={k: v for k, v in record.items() if k not in (key, "answer", "images", "id", "task")})


@FORMATS.register("llava")
def llava(record: dict, *, root: Path, sample_id: str, template: str | None = None, **_) -> Sample:
    """LLaVA conversations: `image` (or `images`) and `conversations` [{from: human|gpt, value}]; the first human
    turn is the prompt and the first gpt turn the answer."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _LineError("conversations", "expected a non-empty list of turns")
    human = next((t for t in turns if isinstance(t, dict) and t.get("from") in ("human", "user")), None)
    reply = next((t for t in turns if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")), None)
    if human is None or reply is None:
        raise _LineError("conversations", "needs a human turn and a gpt turn")
    raw = record.get("images", record.get("image", []))
    raw = raw if isinstance(raw, list) else [raw]
    images = [_media(v, root, sample_id, "image") for v in raw]
    prompt = _text(human.get("value"), "conversations[human].value")
    if template:
        prompt = template.format(problem=prompt)
    response = _text(reply.get("value"), "conversations[gpt].value").strip()
    return Sample(id=sample_id, messages=_user(_with_images(prompt, images)), answer=response,
                  task=str(record.get("task", "")), meta={"response": response})  # the SFT target as written


@FORMATS.register("deepeyes")
def deepeyes(record: dict, *, root: Path, sample_id: str, template: str | None = None, **_) -> Sample:
    """DeepEyes' RL records ("DeepEyes: Incentivizing 'Thinking with Images' via Reinforcement Learning",
    arXiv:2505.14362; data set ChenShawn/DeepEyes-Datasets-47k), verl's parquet layout: `prompt` (chat messages
    {role, content}: a system turn describing `image_zoom_in_tool`, a user turn "<image>\\nQuestion: …"), `images`
    (a list of paths or `{bytes, path}` cells), `reward_model: {ground_truth, …}`, and `data_source`, `extra_info`,
    `ability`, `env_name`, … (kept in `meta`; `reward_model`'s other keys under `meta["reward_model"]`).

    The messages stay turns: the system turn is kept (so `data.system_prompt` does not replace it), each `<image>`
    marker of the other turns becomes the next image (no markers: the images lead the first user turn; any other
    count is an error). The prompt must end with a user turn. `template` rewrites the last user turn's question."""
    raw = record.get("images", [])
    raw = raw if isinstance(raw, list) else [raw]
    images = [_media(v, root, sample_id, f"images[{k}]") for k, v in enumerate(raw)]
    reward_model = record.get("reward_model")
    if not isinstance(reward_model, dict):
        raise _LineError("reward_model", f"expected an object with a ground_truth, got {type(reward_model).__name__}")
    truth = reward_model.get("ground_truth")
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        raise _LineError("reward_model.ground_truth", "missing" if truth is None else "empty")
    meta = {k: v for k, v in record.items() if k not in (*DEEPEYES_KEYS, "id", "task")}
    rest = {k: v for k, v in reward_model.items() if k != "ground_truth" and v is not None}
    if rest:
        meta["reward_model"] = rest
    sample = Sample(id=sample_id, messages=_chat(record.get("prompt"), images), answer=truth,
                    task=str(record.get("task", "")), meta=meta)
    return with_template(sample, template) if template else sample


def _chat(prompt: Any, images: list[Any]) -> list[dict]:
    """verl chat messages → mmrl's: every turn's text as one text part, `<image>` markers (outside the system turn)
    replaced by `images` in order, or all images before the first user turn's text when there is no marker."""
    if not isinstance(prompt, list) or not prompt:
        raise _LineError("prompt", "expected a non-empty list of chat messages {role, content}")
    turns: list[tuple[str, str]] = []
    for m, msg in enumerate(prompt):
        if not isinstance(msg, dict):
            raise _LineError(f"prompt[{m}]", f"expected a message {{role, content}}, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in CHAT_ROLES:
            raise _LineError(f"prompt[{m}].role", f"{role!r} is not one of {', '.join(CHAT_ROLES)}")
        turns.append((role, _content_text(msg.get("content"), f"prompt[{m}].content")))
    if turns[-1][0] != "user":
        raise _LineError(f"prompt[{len(turns) - 1}].role", f"the prompt must end with a user turn, not "
                                                            f"{turns[-1][0]!r}")
    markers = sum(text.count("<image>") for role, text in turns if role != "system")
    if markers and markers != len(images):
        raise _LineError("images", f"{len(images)} image(s) for {markers} <image> marker(s) in the prompt")
    out, queue, lead = [], list(images), not markers
    for role, text in turns:
        if role == "system":
            parts = [{"type": "text", "text": text}]
        elif lead and role == "user":  # no markers: the images open the first user turn
            parts, queue, lead = _with_images(text.strip(), queue), [], False
        else:
            k = text.count("<image>")
            parts, queue = _with_images(text, queue[:k]), queue[k:]
        if not parts:
            raise _LineError(f"prompt[{len(out)}].content", "empty")
        out.append({"role": role, "content": parts})
    return out


def _content_text(content: Any, field: str) -> str:
    """A message's content as text: a string, or a list of parts whose text parts are joined and whose image parts
    become `<image>` markers."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for k, part in enumerate(content):
            if isinstance(part, dict) and (part.get("type") == "image" or "image" in part):
                pieces.append("<image>")
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            else:
                raise _LineError(f"{field}[{k}]", "expected a text or image part")
        return "".join(pieces)
    raise _LineError(field, f"expected text or a list of parts, got {type(content).__name__}")


# ---------------------------------------------------------------------------------------------- loading
def load_file(
    path: str | os.PathLike, *, format: str = "auto", fields: dict[str, str] | None = None,
    image_root: str | os.PathLike | None = None, template: str | None = None, on_bad_sample: str = "raise",
    check_media: bool = True,
) -> tuple[list[Sample], int]:
    """(samples, skipped) from a data file or saved data set directory; see the module docstring."""
    if on_bad_sample not in ("raise", "skip"):
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; expected raise or skip")
    if format != "auto":
        FORMATS.get(format)  # unknown names fail with the valid ones
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} not found")
    root = Path(image_root).resolve() if image_root else (path if path.is_dir() else path.parent)
    samples, seen, skipped = [], set(), 0
    for where, record in records(path):
        try:
            samples.append(_convert(where, record, format, fields or {}, root, template, check_media, seen))
        except BadSampleError:
            if on_bad_sample == "raise":
                raise
            skipped += 1
    return samples, skipped


def _convert(where, record, format, fields, root, template, check_media, seen) -> Sample:
    fallback = where
    if isinstance(record, _Invalid):
        raise BadSampleError(fallback, f"{where}: {record.message}")
    sample_id = fallback
    try:
        if not isinstance(record, dict):
            raise _LineError("<record>", f"expected an object, got {type(record).__name__}")
        record = dict(record)
        for ours, theirs in fields.items():
            if theirs not in record:
                raise _LineError(theirs, f"missing (mapped to {ours!r} by data fields)")
            record[ours] = record.pop(theirs)
        rid = record.get("id")
        sample_id = str(rid) if isinstance(rid, (str, int)) and str(rid) else fallback
        if format == "native" or (format == "auto" and detect(record) == "native"):
            record.setdefault("id", sample_id)
        fmt = detect(record) if format == "auto" else format
        sample = FORMATS.get(fmt)(record, root=root, sample_id=sample_id, template=template)
        if sample.id in seen:
            raise _LineError("id", "duplicate id")
        problem = answer_problem(sample.task, sample.answer)
        if problem:
            raise _LineError("answer", f"{problem} (task {sample.task!r})")
        if check_media:
            _check_media(sample)
    except _LineError as err:
        raise BadSampleError(sample_id, f"{where}: field {err.field!r}: {err}") from err
    except BadSampleError as err:
        raise BadSampleError(sample_id, f"{where}: {err}") from err
    seen.add(sample.id)
    return sample
