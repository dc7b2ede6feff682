"""Small, total parsers for model completions: the `<answer>` block, bounding boxes, labelled objects, points
and numbers.

None of them raises on any text. They cover the forms grounding models actually emit: `[x1, y1, x2, y2]`, lists
of such lists, JSON objects with a `bbox_2d` (Qwen2.5-VL / Qwen3-VL), `bbox`, `box` or `Position` (Visual-RFT)
key, and Qwen2-VL's `(x1,y1),(x2,y2)`. `parse_objects` / `parse_points` / `parse_number` also return what they
found as a `Parsed` and count it in the active `parse_stats()` (both from `parsed.py`, re-exported here).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

from mmrl.rewards.parsed import ParseStats, Parsed, note_parse, note_timeout, parse_stats, record

__all__ = [
    "BOX_KEYS", "MAX_ANSWER_CHARS", "MAX_BOXES", "MAX_CHARS", "POINT_KEYS", "SCORE_KEYS", "ParseStats", "Parsed",
    "extract_answer", "note_parse", "note_timeout", "parse_boxes", "parse_number", "parse_objects", "parse_points",
    "parse_stats",
]

MAX_CHARS = 64 * 1024  # longer inputs are truncated before parsing
BOX_KEYS = ("bbox_2d", "bbox", "box", "Position")
_MAX_DEPTH = 8  # how deep the JSON walk looks for boxes

# a number without ambiguous digit runs (keeps the regex linear on long digit strings)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SEP = r"\s*,\s*"
_BOX_RE = re.compile(
    rf"[\[(]\s*({_NUM}){_SEP}({_NUM}){_SEP}({_NUM}){_SEP}({_NUM})\s*[\])]"  # [x1, y1, x2, y2] / (…)
    rf"|\(\s*({_NUM}){_SEP}({_NUM})\s*\)\s*,?\s*\(\s*({_NUM}){_SEP}({_NUM})\s*\)"  # (x1,y1),(x2,y2)
)
_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The stripped content of the last `<answer>…</answer>` block, or None when there is none.

    >>> extract_answer("<think>maybe A</think><answer> B </answer>")
    'B'
    >>> extract_answer("no tags") is None
    True
    """
    if not isinstance(text, str):
        return None
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start < 0:
        return None
    return text[start + len("<answer>") : end].strip()


def parse_boxes(text: str, max_boxes: int = 100) -> list[list[float]]:
    """All boxes `[x1, y1, x2, y2]` in `text`, in order, at most `max_boxes`; junk gives [].

    JSON is tried first (whole text, then fenced blocks) so that keyed boxes (`bbox_2d`, …) win over other
    4-number lists; otherwise bracketed 4-number groups are scanned. Boxes with a non-finite number are dropped.
    Boxes are returned as written: not reordered, not validated (inverted boxes are the reward's business).

    >>> parse_boxes('[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]')
    [[10.0, 20.0, 30.0, 40.0]]
    >>> parse_boxes("the box is (1,2),(3,4.5) and [5, 6, 7, 8]")
    [[1.0, 2.0, 3.0, 4.5], [5.0, 6.0, 7.0, 8.0]]
    """
    try:
        if not isinstance(text, str) or max_boxes <= 0:
            return []
        text = text[:MAX_CHARS]
        for chunk in [text, *_FENCE_RE.findall(text)]:
            boxes = _json_boxes(chunk, max_boxes)
            if boxes:
                return boxes
        return _regex_boxes(text, max_boxes)
    except Exception:  # noqa: BLE001 — a parser of model output must be total
        return []


def _json_boxes(chunk: str, max_boxes: int) -> list[list[float]]:
    chunk = chunk.strip()
    if not chunk or chunk[0] not in "[{":
        return []
    try:
        data = json.loads(chunk)
    except (ValueError, RecursionError):
        return []
    out: list[list[float]] = []
    _walk(data, out, max_boxes, 0)
    return out


def _walk(node: Any, out: list[list[float]], max_boxes: int, depth: int) -> None:
    if len(out) >= max_boxes or depth > _MAX_DEPTH:
        return
    if isinstance(node, dict):
        keyed = [node[k] for k in BOX_KEYS if k in node]
        for child in keyed or node.values():
            _walk(child, out, max_boxes, depth + 1)
    elif isinstance(node, list):
        box = _as_box(node)
        if box is not None:
            out.append(box)
            return
        for child in node:
            _walk(child, out, max_boxes, depth + 1)


def _as_box(values: list[Any]) -> list[float] | None:
    if len(values) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    try:
        box = [float(v) for v in values]
    except OverflowError:  # an int too large for a float
        return None
    return box if all(math.isfinite(v) for v in box) else None


def _regex_boxes(text: str, max_boxes: int) -> list[list[float]]:
    out: list[list[float]] = []
    for m in _BOX_RE.finditer(text):
        box = [float(g) for g in m.groups() if g is not None]
        if all(math.isfinite(v) for v in box):
            out.append(box)
            if len(out) >= max_boxes:
                break
    return out


# ---- labelled objects and points, with cap/failure flags ----------------------------------------------------
MAX_ANSWER_CHARS = 65536
MAX_BOXES = 100
SCORE_KEYS = ("confidence", "Confidence", "score", "Score")
POINT_KEYS = ("point_2d", "point", "Point")
_MAX_JSON_TRIES = 16  # failed json.raw_decode attempts per text (each may cost O(n))
_QWEN2_RE = re.compile(  # <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>
    r"(?:<\|object_ref_start\|>([^<]{0,256})<\|object_ref_end\|>\s*)?<\|box_start\|>\s*"
    rf"\(\s*({_NUM}){_SEP}({_NUM})\s*\)\s*,?\s*\(\s*({_NUM}){_SEP}({_NUM})\s*\)\s*<\|box_end\|>"
)
_OPEN_RE = re.compile(r"[\[{]")
_POINT_RE = re.compile(rf"[\[(]\s*({_NUM}){_SEP}({_NUM})\s*[\])]")


def _scope(text: Any, max_answer_chars: int) -> tuple[str | None, bool]:
    """The text to parse (the last `<answer>` block, else the whole text) after the length cap, and whether the
    cap cut it. The block is found in the whole text (`rfind`, linear), so a long reasoning does not push the
    answer past the cap."""
    if not isinstance(text, str):
        return None, False
    block = extract_answer(text)
    scope = text if block is None else block
    return scope[: max(int(max_answer_chars), 0)], len(scope) > max_answer_chars


def _finish(objects: list[dict[str, Any]], truncated: bool, cap: int) -> Parsed:
    n = len(objects)
    cap = max(int(cap), 0)
    return record(Parsed(objects[:cap], truncated or n > cap, n == 0, n))


def parse_objects(text: str, *, max_answer_chars: int = MAX_ANSWER_CHARS, max_boxes: int = MAX_BOXES) -> Parsed:
    """Boxes with optional labels and confidences from a completion; never raises.

    Looks in the last `<answer>` block (else the whole text). Tries, in order: JSON (the whole scope, fenced
    blocks, then JSON values embedded in prose) — objects keyed `bbox_2d`/`bbox`/`box`/`Position` with
    `label` and `confidence`/`score`, or bare 4-number lists; Qwen2-VL's
    `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`; then bracketed
    `[x1,y1,x2,y2]` / `(x1,y1),(x2,y2)` anywhere. Non-finite numbers drop the box. The text is cut at
    `max_answer_chars` and at most `max_boxes` objects are kept (`truncated` says a cap engaged).

    >>> p = parse_objects('<answer>[{"bbox_2d": [1, 2, 3, 4], "label": "cat", "confidence": 0.9}]</answer>')
    >>> p.objects, p.truncated, p.failed
    ([{'box': [1.0, 2.0, 3.0, 4.0], 'label': 'cat', 'score': 0.9}], False, False)
    >>> parse_objects("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>").objects
    [{'box': [1.0, 2.0, 3.0, 4.0], 'label': 'dog', 'score': None}]
    """
    try:
        scope, truncated = _scope(text, max_answer_chars)
        if scope is None:
            return record(Parsed())
        limit = max(int(max_boxes), 0) * 10 + 10  # count a little past the cap, bounded work
        objects = _json_objects(scope, "box", limit)
        if not objects and "<|box_start|>" in scope:
            objects = [
                {"box": box, "label": m.group(1).strip() or None, "score": None}
                for m in _QWEN2_RE.finditer(scope)
                if (box := _finite([m.group(i) for i in range(2, 6)])) is not None
            ][:limit]
        if not objects:
            objects = [{"box": b, "label": None, "score": None} for b in _regex_boxes(scope, limit)]
        return _finish(objects, truncated, max_boxes)
    except Exception:  # noqa: BLE001 — a parser of model output must be total
        return record(Parsed())


def parse_points(text: str, *, max_answer_chars: int = MAX_ANSWER_CHARS, max_points: int = MAX_BOXES) -> Parsed:
    """Points `[x, y]` from a completion (JSON `point_2d`/`point`, `[x, y]`, `(x, y)`); never raises.

    Same scope, caps and flags as `parse_objects`; objects are `{"point": [x, y], "label", "score"}`.

    >>> parse_points('<answer>{"point_2d": [5, 7], "label": "cup"}</answer>').points
    [[5.0, 7.0]]
    >>> parse_points("click at (3, 4.5)").points
    [[3.0, 4.5]]
    """
    try:
        scope, truncated = _scope(text, max_answer_chars)
        if scope is None:
            return record(Parsed())
        limit = max(int(max_points), 0) * 10 + 10
        objects = _json_objects(scope, "point", limit)
        if not objects:
            objects = []
            for m in _POINT_RE.finditer(scope):
                pt = _finite(m.groups())
                if pt is not None:
                    objects.append({"point": pt, "label": None, "score": None})
                    if len(objects) >= limit:
                        break
        return _finish(objects, truncated, max_points)
    except Exception:  # noqa: BLE001
        return record(Parsed())


def parse_number(text: str, *, max_answer_chars: int = MAX_ANSWER_CHARS) -> tuple[float | None, Parsed]:
    """The last finite number in the `<answer>` block (else in the whole text), and the parse flags.

    >>> parse_number("<think>1, 2, 3</think><answer>There are 4 cats.</answer>")[0]
    4.0
    """
    try:
        scope, truncated = _scope(text, max_answer_chars)
        value = None
        if scope is not None:
            for m in re.finditer(_NUM, scope[-4096:]):  # the answer is at the end; bounded work
                v = _finite([m.group(0)])
                value = v[0] if v is not None else value
        return value, record(Parsed([], truncated, value is None, int(value is not None)))
    except Exception:  # noqa: BLE001
        return None, record(Parsed())


def _finite(values: Sequence[Any]) -> list[float] | None:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _json_objects(scope: str, kind: str, limit: int) -> list[dict[str, Any]]:
    """Objects from JSON in `scope`; Python-style single quotes (Visual-RFT's own prompt format) are retried
    as double quotes, as Visual-RFT does."""
    out = _json_objects_once(scope, kind, limit)
    if not out and "'" in scope and '"' not in scope:
        out = _json_objects_once(scope.replace("'", '"'), kind, limit)
    return out


def _json_objects_once(scope: str, kind: str, limit: int) -> list[dict[str, Any]]:
    """Objects from JSON in `scope`: the whole text, fenced blocks, else values embedded in prose."""
    for chunk in [scope, *_FENCE_RE.findall(scope)]:
        chunk = chunk.strip()
        if chunk[:1] in ("[", "{"):
            try:
                data = json.loads(chunk)
            except (ValueError, RecursionError):
                continue
            out: list[dict[str, Any]] = []
            _walk_objects(data, kind, out, limit, 0)
            if out:
                return out
    out, pos, fails, decoder = [], 0, 0, json.JSONDecoder()
    keyed = False
    for _ in range(4 * limit + _MAX_JSON_TRIES):  # bounded work on texts full of small JSON values
        m = _OPEN_RE.search(scope, pos)
        if m is None or len(out) >= limit or fails >= _MAX_JSON_TRIES:
            break
        start = m.start()
        try:
            data, end = decoder.raw_decode(scope, start)
        except (ValueError, RecursionError):
            fails, pos = fails + 1, start + 1
            continue
        before = len(out)
        keyed |= _walk_objects(data, kind, out, limit, 0)
        pos = end if len(out) > before or end > start + 1 else start + 1
    return out if keyed else []  # unkeyed lists in prose are left to the regex (which also sees tuples)


def _walk_objects(node: Any, kind: str, out: list[dict[str, Any]], limit: int, depth: int) -> bool:
    """Append the boxes/points under `node`; returns whether a keyed object (`bbox_2d`, …) was seen."""
    if len(out) >= limit or depth > _MAX_DEPTH:
        return False
    keys, n = (BOX_KEYS, 4) if kind == "box" else (POINT_KEYS, 2)
    if isinstance(node, dict):
        key = next((k for k in keys if k in node), None)
        if key is None:
            return any([_walk_objects(v, kind, out, limit, depth + 1) for v in node.values()])  # noqa: C419 (visit all)
        label = node.get("label")
        score = next((node[k] for k in SCORE_KEYS if k in node), None)
        score = _finite([score])[0] if _number(score) and _finite([score]) else None
        value = node[key]
        rows = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
        for row in rows:
            vec = _as_vec(row, n)
            if vec is not None and len(out) < limit:
                out.append({kind: vec, "label": label if isinstance(label, str) else None, "score": score})
        return True
    if isinstance(node, list):
        vec = _as_vec(node, n)
        if vec is not None:
            out.append({kind: vec, "label": None, "score": None})
            return False
        return any([_walk_objects(v, kind, out, limit, depth + 1) for v in node])  # noqa: C419 (visit all)
    return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_vec(values: Any, n: int) -> list[float] | None:
    if not isinstance(values, list) or len(values) != n or not all(_number(v) for v in values):
        return None
    return _finite(values)
