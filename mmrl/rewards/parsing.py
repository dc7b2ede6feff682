"""Small, total parsers for model completions: the `<answer>` block and bounding boxes.

Both functions never raise on any text. A fuller parser (labels, points, confidences) comes later; this one
covers the forms grounding models actually emit: `[x1, y1, x2, y2]`, lists of such lists, JSON objects with a
`bbox_2d` (Qwen2.5-VL / Qwen3-VL), `bbox`, `box` or `Position` (Visual-RFT) key, and Qwen2-VL's
`(x1,y1),(x2,y2)`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

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
