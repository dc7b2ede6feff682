"""Ground-truth checks per `Sample.task`, run when a data file is read: a malformed answer is reported naming the
sample, file, line and field (or skipped and counted with `on_bad_sample: skip`), never found later by a reward
or an SFT target deep inside a step. Tasks without a check here accept any answer (rewards then decide)."""

from __future__ import annotations

import math
from typing import Any, Callable


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _boxes(answer: Any) -> str | None:
    if not isinstance(answer, dict) or not isinstance(answer.get("boxes"), list) or not answer["boxes"]:
        return 'expected {"boxes": [[x1, y1, x2, y2], …]} with at least one box'
    for j, box in enumerate(answer["boxes"]):
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            return f"boxes[{j}] = {box!r} is not [x1, y1, x2, y2] of finite numbers"
        if box[2] < box[0] or box[3] < box[1]:
            return f"boxes[{j}] = {box!r} has x2 < x1 or y2 < y1"
    labels = answer.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(answer["boxes"])):
        return "labels must be a list with one label per box"
    return None


def _span(answer: Any) -> str | None:
    span = answer.get("span") if isinstance(answer, dict) else answer
    if not (isinstance(span, list) and len(span) == 2 and all(_number(v) for v in span) and span[0] <= span[1]):
        return 'expected {"span": [start, end]} in seconds with start <= end'
    return None


def _count(answer: Any) -> str | None:
    c = answer.get("count") if isinstance(answer, dict) else None
    if not (_number(c) and c >= 0):
        return 'expected {"count": n} with n >= 0'
    return None


def _order(answer: Any) -> str | None:
    order = answer.get("order") if isinstance(answer, dict) else None
    if not (isinstance(order, list) and order and len(set(map(str, order))) == len(order)):
        return 'expected {"order": [...]} of distinct items'
    return None


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "grounding": _boxes, "detection": _boxes, "counting": _count, "puzzle/jigsaw": _order,
    "temporal/frame_order": _order, "temporal/event": _span, "temporal/grounding": _span,
}


def answer_problem(task: str, answer: Any) -> str | None:
    """What is wrong with `answer` for `task` (None: fine, or a task without a check)."""
    check = CHECKS.get(task)
    return check(answer) if check is not None else None
