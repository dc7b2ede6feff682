"""Built-in rewards: `format`, `answer_match`, `iou`.

Each is pure, runs in-process, never raises on any completion text, and returns one value per completion
(`None` = not applicable). Each is the score of one completion made a reward by `per_sample`: options are
keyword-only with defaults (the caller binds them with `functools.partial`); `**kwargs` takes the columns a reward
does not use.
"""

from __future__ import annotations

import re
from typing import Any

from mmrl.perception.boxes import iou as box_iou  # re-exported: `mmrl.rewards.box_iou`
from mmrl.rewards.parsing import extract_answer, parse_objects
from mmrl.rewards.per_sample import per_sample
from mmrl.rewards.registry import register

# tempered tokens: block contents never contain another think/answer tag (linear matching, no smuggling)
_BODY = r"((?:(?!</?(?:think|answer)>).)*)"
_FORMAT_RE = re.compile(rf"\s*(?:<think>{_BODY}</think>\s*)?<answer>{_BODY}</answer>\s*", re.DOTALL)


@register("format")
@per_sample
def format_reward(text: Any, *, require_think: bool = False) -> float:
    """1.0 when a completion is exactly `(<think>…</think>)? <answer>…</answer>`, else 0.0. Range [0, 1].

    r = 1[text ≍ `\\s* (<think> T </think> \\s*)? <answer> A </answer> \\s*`, strip(A) ≠ "",
    (T present and strip(T) ≠ "" if `require_think`)], DOTALL, where T and A contain no think/answer tag.
    The R1-style format reward (DeepSeek-R1, arXiv:2501.12948; R1-V, VLM-R1 arXiv:2504.07615).

    >>> format_reward(["<think>2+2</think> <answer>4</answer>", "4", "<answer> </answer>"])
    [1.0, 0.0, 0.0]
    >>> format_reward(["<answer>4</answer>"], require_think=True)
    [0.0]
    """
    m = _FORMAT_RE.fullmatch(text) if isinstance(text, str) else None
    ok = bool(m) and m.group(2).strip() != ""
    if ok and require_think:
        ok = m.group(1) is not None and m.group(1).strip() != ""
    return 1.0 if ok else 0.0


def _norm(s: str) -> str:
    return " ".join(s.casefold().split())


@register("answer_match")
@per_sample
def answer_match(text: Any, answer: Any) -> float | None:
    """Exact match of the `<answer>` block with the ground truth. Range [0, 1]; None = not applicable.

    r = 1[norm(extract_answer(text)) = norm(str(answer))], norm = strip, casefold, collapse whitespace.
    An empty or missing answer block scores 0 (Visual-RFT's substring match pays 1.0 for `<answer></answer>`).
    `None` when the ground truth is None or structured (a dict other than `{"choice": …}`, a list): this
    reward does not apply to boxes, spans or orders. No numeric equivalence: "3.0" ≠ "3".

    >>> answer_match(["<answer> Paris  </answer>", "<answer>Lyon</answer>", "x"], answer=["paris", "Paris", None])
    [1.0, 0.0, None]
    """
    gt = answer.get("choice") if isinstance(answer, dict) else answer
    if gt is None or isinstance(gt, (list, tuple, dict, set)):
        return None
    pred = extract_answer(text) if isinstance(text, str) else None
    return 1.0 if pred and _norm(pred) and _norm(pred) == _norm(str(gt)) else 0.0


@register("iou")
@per_sample
def iou(text: Any, answer: Any, geometry: Any) -> float | None:
    """Max IoU of the first predicted box against the ground-truth boxes. Range [0, 1]; None = not applicable.

    r = max_j IoU(G(b̂_1), b_j), where b̂_1 is the first box parsed from the `<answer>` block (from the whole
    text when there is no `<answer>` block), G = `geometry.to_original` (identity when geometry is None:
    coordinates are then original pixels) and b_j are `answer["boxes"]` in original pixels. 0.0 when no box
    parses or the box is degenerate/inverted; None when the answer has no "boxes". The continuous IoU reward
    of VLM-R1 (arXiv:2504.07615, REC task) and Visual-RFT (arXiv:2503.01785, reasoning grounding).

    >>> iou(["<answer>[0, 0, 2, 2]</answer>", "<answer>none</answer>"], answer=[{"boxes": [[1, 1, 3, 3]]}] * 2)
    [0.14285714285714285, 0.0]
    """
    gt_boxes = answer.get("boxes") if isinstance(answer, dict) else None
    if not isinstance(gt_boxes, (list, tuple)):
        return None
    boxes = parse_objects(text).boxes  # capped, and counted in parse_stats
    if not boxes:
        return 0.0
    pred = geometry.to_original(boxes)[0] if geometry is not None else boxes[0]
    return max((box_iou(pred, g) for g in gt_boxes), default=0.0)
