"""Geometric rewards: IoU variants, GIoU, detection P/R/F1, VLM-R1 and Visual-RFT detection scores, union-IoU,
salience-weighted IoU, point-in-box, point distance, counting.

Common contract (DESIGN.md "Core types"): `fn(completions, *, answer, geometry=None, <options>, **kwargs)
-> list[float | None]`. Predictions are parsed from the last `<answer>` block (the whole text when there is
none) by `parse_objects` / `parse_points` / `parse_number`, capped at `max_answer_chars` and `max_boxes`
(boxes beyond the cap still count as false positives where a reward counts them), converted to original
pixels with each completion's `geometry.to_original` (no geometry: already original pixels) and never clipped
(a box reaching outside the image pays for its outside area). Ground truth is `answer["boxes"]` (original
pixels), `answer["points"]` or `answer["count"]`; `None` when the sample's answer lacks the field. Values are
finite and inside the stated range on any text. Empty-set conventions (VLM-R1): no GT box and no predicted box
→ 1.0; exactly one of them empty → 0.0. Wrap a call in `mmrl.rewards.parsing.parse_stats()` to count caps and
parse failures (`reward/<name>/truncated`, `reward/<name>/parse_fail`). Each reward is the score of one
completion made a reward by `per_sample`; the box rewards share one more stage, `_box_reward` (parse, convert,
empty-set conventions, clamp), and score only the objects.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

from mmrl.perception import boxes as B
from mmrl.rewards.parsing import MAX_ANSWER_CHARS, MAX_BOXES, Parsed, parse_number, parse_objects, parse_points
from mmrl.rewards.per_sample import per_sample
from mmrl.rewards.registry import register

Objects = list[dict[str, Any]]
BoxScore = Callable[..., float]  # score(objects, gt_boxes, parsed, answer, *, <option>=default, …) -> float


def _field(gt: Any, key: str) -> list[Any] | None:
    value = gt.get(key) if isinstance(gt, dict) else None
    return list(value) if isinstance(value, (list, tuple)) else None


def _to_original(geo: Any, rows: list[list[float]], points: bool = False) -> list[list[float]]:
    if geo is None or not rows:
        return rows
    try:
        return geo.points_to_original(rows) if points else geo.to_original(rows)
    except (ValueError, TypeError, OverflowError):
        return []


def _box_reward(score: BoxScore | None = None, *, check: Callable[..., None] | None = None):
    """Decorator: a box reward from `score(objects, gt_boxes, parsed, answer, *, <option>=default, …) -> float`.

    The stage between `per_sample` and `score`: parse the objects (capped by the options `max_answer_chars` and
    `max_boxes`), map them to original pixels with the sample's `geometry`, apply the empty-set conventions, and
    keep the value finite in [0, 1]. `score` sees at least one predicted and one ground-truth box; the reward's
    options are `score`'s keyword-only ones plus the two caps; `check` is `per_sample`'s.
    """
    if score is None:
        return functools.partial(_box_reward, check=check)

    @functools.wraps(score)
    def one(text, answer, geometry, *, max_answer_chars=MAX_ANSWER_CHARS, max_boxes=MAX_BOXES, **options):
        gt_boxes = _field(answer, "boxes")
        if gt_boxes is None:
            return None
        parsed = parse_objects(text, max_answer_chars=max_answer_chars, max_boxes=max_boxes)
        converted = _to_original(geometry, parsed.boxes)
        objects = [dict(o, box=b) for o, b in zip(parsed.objects, converted)]
        if not gt_boxes or not objects:
            return 1.0 if not gt_boxes and not objects else 0.0
        v = score(objects, gt_boxes, parsed, answer, **options)
        return min(max(v, 0.0), 1.0) if math.isfinite(v) else 0.0

    own = list(inspect.signature(one, follow_wrapped=False).parameters.values())[:-1]  # all but **options
    extra = [p for p in inspect.signature(score).parameters.values() if p.kind is p.KEYWORD_ONLY]
    one.__signature__ = inspect.Signature(own + extra)  # what `per_sample` reads: the caps and `score`'s options
    return per_sample(one, check=check)


def _first_iou(objects: Objects, gt_boxes: list[Any]) -> float:
    return max((B.iou(objects[0]["box"], g) for g in gt_boxes), default=0.0)


@register("iou_sq")
@_box_reward
def iou_sq(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any) -> float:
    """Squared IoU of the first predicted box with its best ground-truth box. Range [0, 1].

    r = (max_j IoU(b̂_1, b_j))² — sharper than IoU near a perfect box. Perception-R1 (Yu et al.,
    "Perception-R1: Pioneering Perception Policy with Reinforcement Learning", arXiv:2504.07954).

    >>> iou_sq(["<answer>[0, 0, 2, 2]</answer>"], answer=[{"boxes": [[0, 0, 2, 1]]}])
    [0.25]
    """
    return _first_iou(objects, gt_boxes) ** 2


@register("iou_thresh")
@_box_reward
def iou_thresh(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any, *, threshold: float = 0.5) -> float:
    """1.0 when the first predicted box reaches IoU ≥ `threshold` with some ground-truth box, else 0.0. Range {0, 1}.

    r = 1[max_j IoU(b̂_1, b_j) ≥ τ], τ = 0.5 (VLM-R1's commented-out variant uses IoU > 0.5; "VLM-R1: A
    Stable and Generalizable R1-style Large Vision-Language Model", arXiv:2504.07615).

    >>> iou_thresh(["[0, 0, 2, 2]", "[0, 0, 4, 4]"], answer=[{"boxes": [[0, 0, 2, 1]]}] * 2)
    [1.0, 0.0]
    """
    return float(_first_iou(objects, gt_boxes) >= threshold)


@register("giou")
@_box_reward
def giou(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any) -> float:
    """Generalized IoU of the first predicted box, **mapped to [0, 1]** as (GIoU + 1) / 2. Range [0, 1].

    r = (max_j GIoU(b̂_1, b_j) + 1) / 2, GIoU = IoU − |C \\ (b̂ ∪ b)| / |C| with C the enclosing box; unlike IoU
    it still ranks disjoint boxes by distance. An invalid predicted box scores 0. Rezatofighi et al.,
    "Generalized Intersection over Union", arXiv:1902.09630.

    >>> giou(["[0, 0, 1, 1]", "[2, 0, 3, 1]"], answer=[{"boxes": [[0, 0, 1, 1]]}] * 2)  # second: (−1/3 + 1)/2
    [1.0, 0.33333333333333337]
    """
    return (max(B.giou(objects[0]["box"], g) for g in gt_boxes) + 1) / 2


def _det_metric(*, metric: str, **_: Any) -> None:
    if metric not in ("f1", "precision", "recall"):
        raise ValueError(f"det_f1: metric must be 'f1', 'precision' or 'recall', got {metric!r}")


@register("det_f1")
@_box_reward(check=_det_metric)
def det_f1(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any, *, threshold: float = 0.5,
           metric: str = "f1") -> float:
    """Detection precision / recall / F1 at an IoU threshold with Hungarian matching. Range [0, 1].

    TP = the most one-to-one pairs with IoU ≥ τ (`boxes.match`: then the largest Σ IoU among them);
    P = TP / |pred|, R = TP / |GT|, F1 = 2PR / (P + R); `metric` picks one. Extra and duplicate predictions are
    false positives, including boxes beyond `max_boxes`. Matched-detection scoring as in Perception-R1 (Yu et
    al., arXiv:2504.07954, Hungarian) and VLM-R1 (arXiv:2504.07615).

    >>> det_f1(["[0, 0, 2, 2] [0, 0, 2, 2]"], answer=[{"boxes": [[0, 0, 2, 2]]}])  # duplicate: P 1/2, R 1
    [0.6666666666666666]
    """
    index = ("precision", "recall", "f1").index(metric)
    return B.precision_recall_f1([o["box"] for o in objects], gt_boxes, threshold, n_pred=parsed.n_found)[index]


def _label_ok(pred: Any, gt_label: Any) -> bool:
    return isinstance(pred, str) and isinstance(gt_label, str) and " ".join(pred.casefold().split()) == " ".join(
        gt_label.casefold().split())


def _vlmr1_weights(*, alpha: float, beta: float, gamma: float, **_: Any) -> None:
    if not all(math.isfinite(w) and w >= 0 for w in (alpha, beta, gamma)) or alpha + beta + gamma <= 0:
        raise ValueError("vlmr1_det: alpha, beta, gamma must be finite, non-negative and not all zero")


@register("vlmr1_det")
@_box_reward(check=_vlmr1_weights)
def vlmr1_det(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any, *, threshold: float = 0.5,
              alpha: float = 0.7, beta: float = 0.0, gamma: float = 0.3) -> float:
    """VLM-R1's detection score: position, label and completeness. Range [0, 1].

    r = (α·pos + β·label + γ·completeness) / (α + β + γ), with the pairs matched at IoU ≥ τ,
    pos = Σ_matched IoU / |GT| (a pair's IoU counts 0 when `answer["labels"]` exists and the labels differ),
    label = #label-correct pairs / |GT|, completeness = 1 − (miss_rate + false_alarm_rate) / 2,
    miss_rate = unmatched GT / |GT|, false_alarm_rate = unmatched predictions / |pred| (boxes beyond the cap
    included); defaults α = 0.7, β = 0, γ = 0.3, τ = 0.5. "VLM-R1: A Stable and Generalizable R1-style Large
    Vision-Language Model", arXiv:2504.07615 (`detection_score`, om-ai-lab/VLM-R1@90052f4786
    grpo_jsonl.py L418–560). VLM-R1 matches greedily by IoU; here matching is Hungarian.

    >>> r = vlmr1_det(["[0, 0, 2, 2] [5, 5, 6, 6]"], answer=[{"boxes": [[0, 0, 2, 2]]}])
    >>> round(r[0], 6)  # 0.7·1 + 0.3·(1 − (0 + 1/2) / 2)
    0.925
    """
    pairs = B.match([o["box"] for o in objects], gt_boxes, threshold)
    labels = _field(answer, "labels")
    pos = lab = 0.0
    for k, j, v in pairs:
        ok = labels is None or (j < len(labels) and _label_ok(objects[k]["label"], labels[j]))
        pos, lab = pos + (v if ok else 0.0), lab + (1.0 if labels is not None and ok else 0.0)
    n_pred = max(parsed.n_found, len(objects))
    miss, false_alarm = 1 - len(pairs) / len(gt_boxes), 1 - len(pairs) / n_pred
    completeness = 1 - (miss + false_alarm) / 2
    n_gt = len(gt_boxes)
    return (alpha * pos / n_gt + beta * lab / n_gt + gamma * completeness) / (alpha + beta + gamma)


@register("rft_det")
@_box_reward
def rft_det(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any, *, threshold: float = 0.5,
            missing_confidence: float = 1.0) -> float:
    """Visual-RFT's detection reward with confidences: (IoU reward + confidence reward) / 2. Range [0, 1].

    Predictions are matched one-to-one to GT (Hungarian on IoU; IoU_k = 0 when unmatched or below τ = 0.5);
    r_IoU = Σ_k IoU_k / max(|pred|, |GT|); r_conf = mean_k (c_k if IoU_k > 0 else (1 − IoU_k)(1 − c_k) = 1 − c_k),
    c_k ∈ [0, 1] the box's `confidence`/`score` (clamped; `missing_confidence` when absent). Visual-RFT sums the
    two ([0, 2]); here their mean. "Visual-RFT: Visual Reinforcement Fine-Tuning", arXiv:2503.01785
    (Liuziyu77/Visual-RFT@94866331ff grpo.py L109–212, `compute_reward_iou_v2` / `compute_reward_confidence`).
    Visual-RFT matches greedily in order of confidence, keeps IoU > τ (strict), and drops exact
    duplicate predictions first; here matching is Hungarian, IoU ≥ τ, and duplicates are false positives.

    >>> rft_det(['[{"bbox_2d": [0, 0, 2, 2], "confidence": 0.8}]'], answer=[{"boxes": [[0, 0, 2, 2]]}])
    [0.9]
    """
    ious = [0.0] * len(objects)
    for k, _, v in B.match([o["box"] for o in objects], gt_boxes, threshold):
        ious[k] = v
    n_pred = max(parsed.n_found, len(objects))
    r_iou = sum(ious) / max(n_pred, len(gt_boxes))
    conf = []
    for o, v in zip(objects, ious):
        c = o["score"] if o["score"] is not None else missing_confidence
        c = min(max(float(c), 0.0), 1.0) if math.isfinite(c) else 0.0
        conf.append(c if v > 0 else 1.0 - c)
    r_conf = sum(conf) / n_pred  # boxes beyond the cap earn no confidence reward
    return (r_iou + r_conf) / 2


@register("union_iou")
@_box_reward
def union_iou(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any) -> float:
    """IoU of the area union of the predicted boxes with the area union of the GT boxes. Range [0, 1].

    r = |∪_k b̂_k ∩ ∪_j b_j| / |∪_k b̂_k ∪ ∪_j b_j| (exact areas; order-free, robust to split or merged boxes,
    but does not penalise the box count). SATORI-R1, "Incentivizing Multimodal Reasoning with Spatial Grounding
    and Verifiable Rewards" (arXiv:2505.19094; justairr/SATORI-R1@8857b30f6a plugin.py, shapely
    `unary_union`).

    >>> union_iou(["[0, 0, 1, 1] [1, 0, 2, 1]"], answer=[{"boxes": [[0, 0, 2, 1]]}])
    [1.0]
    """
    return B.union_iou([o["box"] for o in objects], gt_boxes)


def _salience(gt: Any, gts: list[Any]) -> list[float]:
    """answer["salience"] when it is one finite non-negative weight per box with a positive sum, else box areas."""
    s = _field(gt, "salience")
    if s is not None and len(s) == len(gts):
        try:
            w = [float(v) for v in s]
            if all(math.isfinite(v) and v >= 0 for v in w) and sum(w) > 0:
                return w
        except (TypeError, ValueError, OverflowError):
            pass
    return [(v[2] - v[0]) * (v[3] - v[1]) if (v := B.valid_box(g)) else 0.0 for g in gts]


@register("salience_iou")
@_box_reward
def salience_iou(objects: Objects, gt_boxes: list[Any], parsed: Parsed, answer: Any, *,
                 extra_penalty: bool = True) -> float:
    """Salience-weighted IoU (GRiP): each GT box's matched IoU weighted by its salience. Range [0, 1].

    r = Σ_j s_j · IoU(b̂_π(j), b_j) / Σ_j s_j × (min(1, |GT| / |pred|) if `extra_penalty`), π the Hungarian
    assignment on IoU (unmatched GT contribute 0), s_j = `answer["salience"][j]` when given, else the area of
    b_j. The length penalty is VLM-R1's `odLength` factor; without it extra boxes would be free. GRiP, "Guiding
    the Inner Eye: A Framework for Hierarchical and Flexible Visual Grounded Reasoning" (arXiv:2511.22172). The
    paper's own weighting was not found; this one is the reference's proposal.

    >>> salience_iou(["[0, 0, 2, 2]"], answer=[{"boxes": [[0, 0, 2, 2], [5, 5, 6, 6]], "salience": [3, 1]}])
    [0.75]
    """
    w = _salience(answer, gt_boxes)
    total = sum(w)
    if not (total > 0 and math.isfinite(total)):
        return 0.0
    pairs = B.match([o["box"] for o in objects], gt_boxes, threshold=0.0, most_matches=False)
    got = sum(w[j] * v for _, j, v in pairs)
    n_pred = max(parsed.n_found, len(objects))
    return got / total * (min(1.0, len(gt_boxes) / n_pred) if extra_penalty else 1.0)


def _first_point(text: Any, geo: Any, max_answer_chars: int) -> list[float] | None:
    pts = _to_original(geo, parse_points(text, max_answer_chars=max_answer_chars, max_points=1).points, True)
    return pts[0] if pts and all(math.isfinite(v) for v in pts[0]) else None


@register("point_in_box")
@per_sample
def point_in_box(text: Any, answer: Any, geometry: Any, *, max_answer_chars: int = MAX_ANSWER_CHARS) -> float | None:
    """Fraction of GT boxes that contain the first predicted point `[x, y]` (1/0 for one box). Range [0, 1].

    r = (1/|GT|) Σ_j 1[p̂ ∈ b_j] (closed boxes); 0 when no point parses; None without `answer["boxes"]`
    (an empty list scores 0). Click/pointing accuracy as in GUI grounding (R1-V's AITZ, VLM-R1 arXiv:2504.07615).

    >>> point_in_box(["<answer>(1, 1)</answer>", "(9, 9)"], answer=[{"boxes": [[0, 0, 2, 2]]}] * 2)
    [1.0, 0.0]
    """
    gts = _field(answer, "boxes")
    if gts is None:
        return None
    p = _first_point(text, geometry, max_answer_chars)
    return sum(B.point_in_box(p, g) for g in gts) / len(gts) if p is not None and gts else 0.0


def _gt_points(gt: Any) -> list[list[float]] | None:
    pts = _field(gt, "points")
    if pts is None and _field(gt, "point") is not None:
        pts = [gt["point"]]
    if pts is None:
        return None
    good = []
    for p in pts:
        try:
            x, y = (float(v) for v in p)
        except (TypeError, ValueError, OverflowError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            good.append([x, y])
    return good


@register("point_dist")
@per_sample
def point_dist(text: Any, answer: Any, geometry: Any, *, diagonal: float | None = None,
               max_answer_chars: int = MAX_ANSWER_CHARS) -> float | None:
    """1 − min(1, d / D): d the distance from the first predicted point to the nearest GT point. Range [0, 1].

    D = the original image diagonal from `geometry`, else from `answer["size"] = [w, h]`, else the `diagonal`
    option (a ValueError when none is known). 0 when no point parses; None without `answer["points"]`/`["point"]`.
    Distance-shaped pointing reward (R1-V's AITZ click reward thresholds the same distance).

    >>> point_dist(["(3, 4)"], answer=[{"points": [[0, 0]], "size": [60, 80]}])  # 1 − 5/100
    [0.95]
    """
    gts = _gt_points(answer)
    if gts is None:
        return None
    diag = _diagonal(geometry, answer, diagonal)
    p = _first_point(text, geometry, max_answer_chars)
    if p is None or not gts:
        return 0.0
    d = min(math.hypot(p[0] - g[0], p[1] - g[1]) for g in gts)
    return 1.0 - min(1.0, d / diag) if math.isfinite(d) else 0.0


def _diagonal(geo: Any, gt: Any, diagonal: float | None) -> float:
    if geo is not None:
        return math.hypot(geo.orig_w, geo.orig_h)
    size = _field(gt, "size")
    try:
        if size is not None and len(size) == 2 and 0 < (d := math.hypot(float(size[0]), float(size[1]))) < math.inf:
            return d
    except (TypeError, ValueError, OverflowError):
        pass
    if diagonal is not None and math.isfinite(float(diagonal)) and float(diagonal) > 0:
        return float(diagonal)
    raise ValueError("point_dist needs the image size: pass geometry, answer['size'] = [w, h] or diagonal=…")


def _gt_count(gt: Any) -> float | None:
    c = gt.get("count") if isinstance(gt, dict) else None
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
        return None
    return float(c)


def _count_value(text: Any, answer: Any, max_answer_chars: int, score: Callable[[float, float], float]) -> float | None:
    """`score(predicted, true)` of the last number in the answer against `answer["count"]`, in [0, 1]."""
    target = _gt_count(answer)
    if target is None:
        return None
    pred, _ = parse_number(text, max_answer_chars=max_answer_chars)
    v = score(pred, target) if pred is not None else 0.0
    return min(max(v, 0.0), 1.0) if math.isfinite(v) else 0.0


@register("count_exact")
@per_sample
def count_exact(text: Any, answer: Any, *, max_answer_chars: int = MAX_ANSWER_CHARS) -> float | None:
    """1.0 when the last number in the `<answer>` block equals `answer["count"]`, else 0.0. Range {0, 1}.

    r = 1[p̂ = n]. Counting accuracy as in CLEVR counting (R1-V; TON, PAPO evaluations).

    >>> count_exact(["<answer>3</answer>", "<answer>three</answer>"], answer=[{"count": 3}] * 2)
    [1.0, 0.0]
    """
    return _count_value(text, answer, max_answer_chars, lambda p, n: float(p == n))


@register("count_rel")
@per_sample
def count_rel(text: Any, answer: Any, *, max_answer_chars: int = MAX_ANSWER_CHARS) -> float | None:
    """Relative counting error reward: max(0, 1 − |p̂ − n| / max(n, 1)). Range [0, 1].

    Video-R1's regression reward 1 − min(1, |ŷ − y| / |y|) ("Video-R1: Reinforcing Video Reasoning in MLLMs",
    tulerfeng/Video-R1@59d65c347e grpo.py), with the denominator floored at 1 so a zero count is defined.

    >>> count_rel(["<answer>3</answer>", "<answer>8</answer>"], answer=[{"count": 4}] * 2)
    [0.75, 0.0]
    """
    return _count_value(text, answer, max_answer_chars, lambda p, n: 1.0 - abs(p - n) / max(abs(n), 1.0))
