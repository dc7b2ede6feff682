"""Puzzle and video rewards.

Puzzles (annotation-free SSL pretext tasks): `rotation_exact`, `jigsaw`, `relative_position`, `patch_fit`.
Video: `temporal_iou`, `frame_order`. (Consistency rewards live in `consistency.py`.)
Same contract as `text.py`: pure, total on any text, input capped, one value per completion, `None` = n/a; each
is the score of one completion made a reward by `per_sample`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from mmrl.rewards.per_sample import per_sample
from mmrl.rewards.registry import register
from mmrl.rewards.text_parsing import MAX_CHARS, answer_text, normalize_text, parse_letter, parse_numbers

MAX_ITEMS = 512  # longest order / permutation parsed from a completion


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        f = float(v)
    except (ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


# ---- rotation ---------------------------------------------------------------------------------------------------
_ANGLE_RE = re.compile(r"(?<![\d.])([-+]?\d{1,6}(?:\.\d+)?)\s*(?:°|º|deg(?:rees?)?\b|degree\b)?", re.IGNORECASE)


@register("rotation_exact")
@per_sample
def rotation_exact(text: Any, answer: Any, *, tol: float = 1e-6) -> float | None:
    """Exact rotation angle, modulo 360. Range {0, 1}; None = not applicable.

    r = 1[all angles θ̂ in the answer agree and (θ̂ − θ) mod 360 ∈ [−tol, tol]], answer θ = a number, numeric
    string or `{"angle": θ}`; "90", "90°", "90 degrees", "-270" all parse as 90. An answer naming two different
    angles ("0 or 90") scores 0 (no hedging). PC-GRPO "Puzzle Curriculum GRPO for Vision-Centric Reasoning"
    (arXiv:2512.14944) and SSL4RL's rotation task (arXiv:2510.16416).

    >>> rotation_exact(["<answer>90°</answer>", "<answer>-270 degrees</answer>", "<answer>0 or 90</answer>"],
    ...                answer=[90, {"angle": 90}, "90"])
    [1.0, 1.0, 0.0]
    """
    theta = answer.get("angle") if isinstance(answer, dict) else answer
    if isinstance(theta, str):  # "90°", "90 degrees"
        m = _ANGLE_RE.search(theta[:64])
        theta = m.group(1) if m else None
    theta = _finite(theta)
    if theta is None:
        return None
    angles = {round(float(m.group(1)) % 360.0, 6) % 360.0 for m in _ANGLE_RE.finditer(answer_text(text)[:4096])}
    if len(angles) != 1:
        return 0.0
    diff = (angles.pop() - theta) % 360.0
    return 1.0 if min(diff, 360.0 - diff) <= tol else 0.0


# ---- orders: jigsaw and frame order -----------------------------------------------------------------------------
_INT_RE = re.compile(r"-?\d{1,9}")
_TOKEN_RE = re.compile(r"[^\s,;\[\](){}<>\"'|→]+")


def _gt_order(gt: Any) -> list[str] | None:
    order = gt.get("order") if isinstance(gt, dict) else None
    if not isinstance(order, (list, tuple)) or not order or len(order) > MAX_ITEMS:
        return None
    if not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in order):
        return None
    return [str(x).strip().casefold() for x in order]


def parse_order(pred: str, gt: list[str]) -> list[str]:
    """The predicted sequence: integers when every ground-truth item is an integer, else delimited tokens.

    >>> parse_order("[2, 0, 3, 1]", ["0", "1", "2", "3"])
    ['2', '0', '3', '1']
    """
    pred = pred[:MAX_CHARS]
    if all(re.fullmatch(r"-?\d+", g) for g in gt):
        return [str(int(m.group())) for m in _INT_RE.finditer(pred)][: MAX_ITEMS * 2]
    return [t.strip(".").casefold() for t in _TOKEN_RE.findall(pred)][: MAX_ITEMS * 2]


@register("jigsaw")
@per_sample
def jigsaw(text: Any, answer: Any) -> float | None:
    """Jigsaw: fraction of tiles in place. Range [0, 1]; None = not applicable.

    r = (1/N) Σ_i 1[p̂_i = p_i] over the N entries of `answer["order"]`; p̂ is parsed from the answer ("2, 0,
    3, 1", "[2,0,3,1]"; integers when the order holds integers). Missing entries count 0, extra ones are
    ignored, unparsable → 0. SSL4RL's code (jigsaw.py; arXiv:2510.16416) and PC-GRPO's graded partial
    credit (arXiv:2512.14944).

    >>> jigsaw(["<answer>[2, 0, 3, 1]</answer>", "<answer>2, 0, 1</answer>", "no"], answer=[{"order": [2, 0, 3, 1]}] * 3)
    [1.0, 0.5, 0.0]
    """
    order = _gt_order(answer)
    if order is None:
        return None
    if all(re.fullmatch(r"-?\d+", g) for g in order):
        order = [str(int(g)) for g in order]
    pred = parse_order(answer_text(text), order)
    return sum(p == g for p, g in zip(pred, order)) / len(order)


def kendall_tau_partial(pred: list[str], gt: list[str]) -> float:
    """Kendall τ of `pred` against `gt` where a pair with an item missing from `pred` counts as discordant.

    Only the first occurrence of a repeated item counts. τ = (C − D) / (N(N−1)/2) ∈ [−1, 1]; N = 1 → ±1.

    >>> kendall_tau_partial(["a", "b", "c"], ["a", "b", "c"]), kendall_tau_partial(["c", "b", "a"], ["a", "b", "c"])
    (1.0, -1.0)
    """
    pos: dict[str, int] = {}
    for i, p in enumerate(pred):
        pos.setdefault(p, i)
    n = len(gt)
    if n == 1:
        return 1.0 if gt[0] in pos else -1.0
    ranks = [pos.get(g) for g in gt]
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = ranks[i], ranks[j]
            if a is not None and b is not None and a < b:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / (n * (n - 1) / 2)


@register("frame_order")
@per_sample
def frame_order(text: Any, answer: Any) -> float | None:
    """Frame-order score: Kendall τ mapped to [0, 1]. Range [0, 1]; None = not applicable.

    r = (τ + 1)/2, τ = (C − D)/(N(N−1)/2) between the predicted order and `answer["order"]` (N distinct
    items); pairs involving an item the answer omits count as discordant (so junk → 0, reversed → 0,
    exact → 1). Duplicate ground-truth items make the sample not applicable. Issue 3's video frame-order
    reward; Video-R1's T-GRPO motivates temporal order (arXiv:2503.21776).

    >>> frame_order(["<answer>1, 2, 3</answer>", "<answer>1, 3, 2</answer>", "<answer>3 2 1</answer>"],
    ...             answer=[{"order": [1, 2, 3]}] * 3)
    [1.0, 0.6666666666666666, 0.0]
    """
    order = _gt_order(answer)
    if order is not None and all(re.fullmatch(r"-?\d+", g) for g in order):
        order = [str(int(g)) for g in order]
    if order is None or len(set(order)) != len(order):
        return None
    tau = kendall_tau_partial(parse_order(answer_text(text), order), order)
    return min(1.0, max(0.0, (tau + 1.0) / 2.0))


# ---- relative position ------------------------------------------------------------------------------------------
_COMPOSITE = {
    "top-left": r"(?:top|upper)\s*left", "top-right": r"(?:top|upper)\s*right",
    "bottom-left": r"(?:bottom|lower)\s*left", "bottom-right": r"(?:bottom|lower)\s*right",
}
_SIMPLE = {
    "left": r"left", "right": r"right", "above": r"above|top|up|over|upper",
    "below": r"below|bottom|beneath|under|underneath|down|lower", "front": r"front",
    "behind": r"behind|back", "center": r"center|centre|middle",
}
_COMPOSITE_RE = {k: re.compile(rf"\b(?:{v})\b") for k, v in _COMPOSITE.items()}
_SIMPLE_RE = {k: re.compile(rf"\b(?:{v})\b") for k, v in _SIMPLE.items()}


def relations(text: str) -> set[str]:
    """Canonical relations named in `text` (composites like "upper left" first, then single words).

    >>> sorted(relations("It is in the upper-left corner")), sorted(relations("to the left of the cup"))
    (['top-left'], ['left'])
    """
    s = normalize_text(text[:4096])
    found: set[str] = set()
    for name, rx in _COMPOSITE_RE.items():
        if rx.search(s):
            found.add(name)
            s = rx.sub(" ", s)
    found |= {name for name, rx in _SIMPLE_RE.items() if rx.search(s)}
    return found


@register("relative_position")
@per_sample
def relative_position(text: Any, answer: Any) -> float | None:
    """Relative position with normalised synonyms. Range {0, 1}; None = not applicable.

    r = 1[R(â) = {R(y)}], R = the set of canonical relations named (top-left, top-right, bottom-left,
    bottom-right, left, right, above, below, front, behind, center; "upper left"/"top_left" → top-left,
    "under"/"beneath" → below, "on top"/"over" → above, …); y = `answer["relation"]` or a string. Naming two
    relations ("left or right") scores 0. SSL4RL's position task (exact match of a quadrant) (arXiv:2510.16416).

    >>> relative_position(["<answer>Upper left</answer>", "<answer>left or right</answer>"],
    ...                   answer=[{"relation": "top-left"}, "left"])
    [1.0, 0.0]
    """
    rel = answer.get("relation") if isinstance(answer, dict) else answer
    gold = relations(rel) if isinstance(rel, str) else set()
    if len(gold) != 1:
        return None
    return 1.0 if relations(answer_text(text)) == gold else 0.0


# ---- patch fit --------------------------------------------------------------------------------------------------
@register("patch_fit")
@per_sample
def patch_fit(text: Any, answer: Any, *, index_base: int = 1) -> float | None:
    """PatchFit: the candidate patch that fits the hole. Range {0, 1}; None = not applicable.

    r = 1[ĉ = c], c from `answer["choice"]` (a letter) and/or `answer["index"]` (an integer as numbered in the
    prompt); ĉ is a letter ("B", "(B)") or a number ("2", "patch 2"). With only a letter (or only an index)
    known, the other form is converted with `index_base` (default 1: "1" ≍ "A"). PC-GRPO's binary PatchFit
    reward (arXiv:2512.14944).

    >>> patch_fit(["<answer>(B)</answer>", "<answer>patch 2</answer>", "<answer>0</answer>"],
    ...           answer=[{"choice": "B"}, {"choice": "B"}, {"index": 0}], index_base=1)
    [1.0, 1.0, 1.0]
    """
    gt = answer if isinstance(answer, dict) else {"choice": answer} if isinstance(answer, str) else {"index": answer}
    letter = parse_letter(gt["choice"]) if isinstance(gt.get("choice"), str) else None
    idx = gt.get("index")
    idx = idx if isinstance(idx, int) and not isinstance(idx, bool) else None
    if letter is None and idx is None:
        return None
    if idx is None:
        idx = ord(letter) - ord("A") + index_base
    if letter is None and 0 <= idx - index_base < 26:
        letter = chr(ord("A") + idx - index_base)
    pred = answer_text(text)
    p_letter = parse_letter(pred)
    if p_letter is not None:
        ok = p_letter == letter
    else:  # every number named must be the index: "patch 2" yes, "1 or 2" no
        ok = {v for v, _ in parse_numbers(pred[:1024])} == {float(idx)}
    return 1.0 if ok else 0.0


# ---- temporal IoU -----------------------------------------------------------------------------------------------
_TIME_RE = re.compile(r"(?<![\d.:])(?:(\d{1,3}):)?(?:(\d{1,2}):)?(\d{1,7}(?:\.\d+)?)")


def parse_span(pred: str) -> tuple[float, float] | None:
    """The first two times in `pred` (seconds; "75", "1:15", "00:01:15.5"), as (start, end), or None.

    >>> parse_span("[12.5, 20]"), parse_span("from 12.5-20 s"), parse_span("0:10 to 1:05")
    ((12.5, 20.0), (12.5, 20.0), (10.0, 65.0))
    """
    times = []
    for m in _TIME_RE.finditer(pred[:4096]):
        h, mnt, sec = m.group(1), m.group(2), float(m.group(3))
        if h is not None and mnt is None:  # "mm:ss"
            h, mnt = None, h
        t = sec + 60.0 * float(mnt or 0) + 3600.0 * float(h or 0)
        times.append(t)
        if len(times) == 2:
            return (times[0], times[1]) if all(math.isfinite(x) for x in times) else None
    return None


def temporal_iou_of(a: tuple[float, float], b: tuple[float, float]) -> float:
    """tIoU = |a ∩ b| / |a ∪ b| of two [start, end] intervals; 1.0 for two equal points; 0.0 when inverted."""
    if a[1] < a[0] or b[1] < b[0]:
        return 0.0
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    if union <= 0:
        return 1.0 if a == b else 0.0
    return min(1.0, max(0.0, inter / union))


@register("temporal_iou")
@per_sample
def temporal_iou(text: Any, answer: Any) -> float | None:
    """Temporal IoU of a predicted [start, end] span in seconds. Range [0, 1]; None = not applicable.

    r = max(0, min(ê, e) − max(ŝ, s)) / (max(ê, e) − min(ŝ, s)), ŝ, ê = the first two times in the answer
    ("[12.5, 20]", "12.5-20 s", "0:10 to 1:05"), (s, e) = `answer["span"]`; an inverted prediction scores 0.
    The tIoU reward of temporal grounding RL ("Time-R1: Post-Training Large Vision Language Model for Temporal
    Video Grounding", first released as "TimeZero" (arXiv:2503.13377)).

    >>> temporal_iou(["<answer>[10, 20]</answer>", "<answer>15-25 s</answer>", "<answer>20 to 10</answer>"],
    ...              answer=[{"span": [10, 20]}] * 3)
    [1.0, 0.3333333333333333, 0.0]
    """
    span = answer.get("span") if isinstance(answer, dict) else None
    vals = [_finite(v) for v in span] if isinstance(span, (list, tuple)) and len(span) == 2 else [None]
    if any(v is None for v in vals) or vals[1] < vals[0]:
        return None
    pred = parse_span(answer_text(text))
    return 0.0 if pred is None else temporal_iou_of(pred, (vals[0], vals[1]))


@register("temporal_bonus", range=lambda alpha=0.3, **_: (0.0, max(0.0, float(alpha))))
@per_sample
def temporal_bonus(text: Any, temporal: Any, *, alpha: float = 0.3, mu: float = 0.8) -> float | None:
    """T-GRPO's temporal reward (Video-R1, arXiv:2503.21776). Range [0, α]; None = no contrast pass.

    r = α when the completion is correct and its prompt's accuracy on ordered frames p reaches μ·p̃, p̃ the
    accuracy on shuffled frames; else 0. The `temporal` column (`{"correct", "ordered_acc", "shuffled_acc"}`)
    comes from the `shuffle_frames` rollout pass. Defaults α = 0.3, μ = 0.8 (Video-R1's code).

    >>> temporal_bonus(["a", "b", "c"], temporal=[{"correct": True, "ordered_acc": 0.5, "shuffled_acc": 0.25},
    ...     {"correct": False, "ordered_acc": 0.5, "shuffled_acc": 0.25}, None])
    [0.3, 0.0, None]
    """
    t = temporal
    if not isinstance(t, dict) or not all(k in t for k in ("correct", "ordered_acc", "shuffled_acc")):
        return None
    ok = bool(t["correct"]) and _finite(t["ordered_acc"]) is not None and _finite(t["shuffled_acc"]) is not None \
        and float(t["ordered_acc"]) >= mu * float(t["shuffled_acc"])
    return float(alpha) if ok else 0.0
