"""Pure box and point geometry for rewards: IoU, GIoU, Hungarian matching, P/R/F1, union area.

Boxes are `[x1, y1, x2, y2]` in one coordinate frame (rewards use original pixels). A box is *valid* when its
four numbers are finite and x2 > x1, y2 > y1; invalid boxes (degenerate, inverted, NaN/inf, wrong arity, not
numbers) have IoU 0 with everything and never raise. Areas are continuous (no VLM-R1-style +1 pixel).
Every function returns finite floats.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

Box = Sequence[float]


def valid_box(box: Any) -> tuple[float, float, float, float] | None:
    """The box as four floats when finite with positive width and height, else None.

    >>> valid_box([0, 0, 2, 1]), valid_box([2, 0, 0, 1]), valid_box("abcd")
    ((0.0, 0.0, 2.0, 1.0), None, None)
    """
    try:
        if len(box) != 4:
            return None
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    if not math.isfinite((x2 - x1) * (y2 - y1)):  # huge boxes whose area overflows
        return None
    return x1, y1, x2, y2


def _finite01(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return min(max(v, lo), hi) if math.isfinite(v) else lo


def iou(a: Box, b: Box) -> float:
    """|a ∩ b| / |a ∪ b| in [0, 1]; 0.0 when either box is invalid.

    >>> iou([0, 0, 2, 2], [1, 1, 3, 3])  # 1 / (4 + 4 - 1)
    0.14285714285714285
    """
    va, vb = valid_box(a), valid_box(b)
    if va is None or vb is None:
        return 0.0
    iw = min(va[2], vb[2]) - max(va[0], vb[0])
    ih = min(va[3], vb[3]) - max(va[1], vb[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (va[2] - va[0]) * (va[3] - va[1]) + (vb[2] - vb[0]) * (vb[3] - vb[1]) - inter
    return _finite01(inter / union) if union > 0 else 0.0


def giou(a: Box, b: Box) -> float:
    """Generalized IoU = IoU − |C \\ (a ∪ b)| / |C|, C the smallest box enclosing both; in [−1, 1].

    Rezatofighi et al., "Generalized Intersection over Union", arXiv:1902.09630. −1.0 (the minimum) when
    either box is invalid.

    >>> giou([0, 0, 1, 1], [2, 0, 3, 1])  # disjoint: 0 − (3 − 2) / 3
    -0.3333333333333333
    """
    va, vb = valid_box(a), valid_box(b)
    if va is None or vb is None:
        return -1.0
    i = iou(va, vb)
    area_a, area_b = (va[2] - va[0]) * (va[3] - va[1]), (vb[2] - vb[0]) * (vb[3] - vb[1])
    iw = max(0.0, min(va[2], vb[2]) - max(va[0], vb[0]))
    ih = max(0.0, min(va[3], vb[3]) - max(va[1], vb[1]))
    union = area_a + area_b - iw * ih
    hull = (max(va[2], vb[2]) - min(va[0], vb[0])) * (max(va[3], vb[3]) - min(va[1], vb[1]))
    if not (math.isfinite(hull) and hull > 0 and math.isfinite(union)):
        return -1.0
    return _finite01(i - (hull - union) / hull, -1.0, 1.0)


def iou_matrix(pred: Sequence[Box], gt: Sequence[Box]) -> np.ndarray:
    """M[k, j] = IoU(pred_k, gt_j), shape [len(pred), len(gt)], vectorized; invalid boxes give 0 rows/columns."""
    p, g = _as_array(pred), _as_array(gt)  # [K, 4], [J, 4] (invalid boxes as NaN)
    if len(p) == 0 or len(g) == 0:
        return np.zeros((len(p), len(g)))
    iw = np.minimum(p[:, None, 2], g[None, :, 2]) - np.maximum(p[:, None, 0], g[None, :, 0])  # [K, J]
    ih = np.minimum(p[:, None, 3], g[None, :, 3]) - np.maximum(p[:, None, 1], g[None, :, 1])
    with np.errstate(all="ignore"):
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
        area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
        m = inter / (area_p[:, None] + area_g[None, :] - inter)
    return np.clip(np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)


def _as_array(boxes: Sequence[Box]) -> np.ndarray:
    rows = [valid_box(b) or (math.nan,) * 4 for b in boxes]
    return np.asarray(rows, dtype=float).reshape(-1, 4)


def match(pred: Sequence[Box], gt: Sequence[Box], threshold: float = 0.5, *,
          most_matches: bool = True) -> list[tuple[int, int, float]]:
    """One-to-one matching with the most pairs at IoU ≥ `threshold` (and IoU > 0), and among those the largest total
    IoU: a Hungarian assignment (`scipy.optimize.linear_sum_assignment`) on weights `n + IoU` for eligible pairs and 0
    for the rest, n = min(|pred|, |gt|) + 1 > any total IoU, so one more match always outweighs any IoU sum.
    (Maximising the total IoU first and dropping the pairs below the threshold afterwards can trade one valid match
    for two invalid ones.) `most_matches=False`: the largest total IoU over eligible pairs, however many (for rewards
    that sum IoUs).

    Returns `(pred_index, gt_index, iou)` by gt index. A duplicate prediction can match at most one ground-truth box.

    >>> match([[0, 0, 2, 2], [0, 0, 2, 2], [10, 10, 12, 12]], [[0, 0, 2, 2]])
    [(0, 0, 1.0)]
    """
    m = iou_matrix(pred, gt)  # [K, J]
    if m.size == 0:
        return []
    eligible = (m > 0) & (m >= threshold)
    bonus = min(m.shape) + 1 if most_matches else 0
    rows, cols = linear_sum_assignment(np.where(eligible, bonus + m, 0.0), maximize=True)
    pairs = [(int(k), int(j), float(m[k, j])) for k, j in zip(rows, cols) if eligible[k, j]]
    return sorted(pairs, key=lambda t: t[1])


def precision_recall_f1(
    pred: Sequence[Box], gt: Sequence[Box], threshold: float = 0.5, *, n_pred: int | None = None
) -> tuple[float, float, float]:
    """(P, R, F1) with TP = Hungarian pairs at IoU ≥ threshold; P = TP/|pred|, R = TP/|gt|, F1 = 2PR/(P+R).

    `n_pred` overrides |pred| (boxes dropped by a cap still count as false positives). Conventions: both empty →
    (1, 1, 1); exactly one empty → (0, 0, 0).

    >>> precision_recall_f1([[0, 0, 2, 2], [5, 5, 6, 6]], [[0, 0, 2, 2]])
    (0.5, 1.0, 0.6666666666666666)
    """
    n_p = len(pred) if n_pred is None else max(int(n_pred), len(pred))
    if n_p == 0 and len(gt) == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0 or len(gt) == 0:
        return 0.0, 0.0, 0.0
    tp = len(match(pred, gt, threshold))
    p, r = tp / n_p, tp / len(gt)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def point_in_box(point: Sequence[float], box: Box) -> bool:
    """Whether `[x, y]` lies in the closed box; False for invalid boxes or non-finite points.

    >>> point_in_box([1, 1], [0, 0, 2, 2]), point_in_box([2, 3], [0, 0, 2, 2])
    (True, False)
    """
    vb = valid_box(box)
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError, OverflowError):
        return False
    if vb is None or not (math.isfinite(x) and math.isfinite(y)):
        return False
    return vb[0] <= x <= vb[2] and vb[1] <= y <= vb[3]


def union_box(boxes: Sequence[Box]) -> list[float] | None:
    """The smallest box enclosing all valid boxes, or None when there is none.

    >>> union_box([[0, 0, 1, 1], [2, 3, 4, 5], [9, 9, 0, 0]])
    [0.0, 0.0, 4.0, 5.0]
    """
    valid = [v for v in map(valid_box, boxes) if v is not None]
    if not valid:
        return None
    return [min(v[0] for v in valid), min(v[1] for v in valid), max(v[2] for v in valid), max(v[3] for v in valid)]


def union_iou(a: Sequence[Box], b: Sequence[Box]) -> float:
    """IoU of the *area unions* ∪a and ∪b (exact, by coordinate compression), in [0, 1].

    Overlapping boxes within a set are not double-counted; invalid boxes are ignored. Both sets empty → 0.0.

    >>> union_iou([[0, 0, 1, 1], [1, 0, 2, 1]], [[0, 0, 2, 1]])  # split box = merged box
    1.0
    """
    pa, pb = _as_array(a), _as_array(b)
    pa, pb = pa[~np.isnan(pa).any(1)], pb[~np.isnan(pb).any(1)]
    if len(pa) == 0 or len(pb) == 0:
        return 0.0
    both = np.concatenate([pa, pb])
    xs, ys = np.unique(both[:, [0, 2]]), np.unique(both[:, [1, 3]])  # grid lines
    cov_a, cov_b = _coverage(pa, xs, ys), _coverage(pb, xs, ys)  # [X-1, Y-1] bool
    with np.errstate(all="ignore"):
        cell = np.diff(xs)[:, None] * np.diff(ys)[None, :]  # [X-1, Y-1]
        inter, union = float(cell[cov_a & cov_b].sum()), float(cell[cov_a | cov_b].sum())
    return _finite01(inter / union) if union > 0 and math.isfinite(union) else 0.0


def _coverage(boxes: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which grid cells the boxes cover, via a 2-D difference array (O(boxes + cells))."""
    diff = np.zeros((len(xs), len(ys)), dtype=np.int64)
    i1, i2 = np.searchsorted(xs, boxes[:, 0]), np.searchsorted(xs, boxes[:, 2])
    j1, j2 = np.searchsorted(ys, boxes[:, 1]), np.searchsorted(ys, boxes[:, 3])
    np.add.at(diff, (i1, j1), 1)
    np.add.at(diff, (i2, j1), -1)
    np.add.at(diff, (i1, j2), -1)
    np.add.at(diff, (i2, j2), 1)
    return diff.cumsum(0).cumsum(1)[:-1, :-1] > 0
