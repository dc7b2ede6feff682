"""Pure box geometry: IoU, GIoU, Hungarian matching, P/R/F1, points, unions — hand-worked values and junk."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmrl.perception.boxes as boxes_module
from mmrl.perception.boxes import (
    giou,
    iou,
    iou_matrix,
    match,
    point_in_box,
    precision_recall_f1,
    union_box,
    union_iou,
    valid_box,
)

NAN, INF = float("nan"), float("inf")
BAD = [[10, 0, 0, 10], [0, 10, 10, 0], [5, 5, 5, 10], [0, 0, NAN, 1], [0, 0, INF, 1], [1, 2, 3], "abcd", None,
       [0, 0, "x", 1], [-1e308, 0, 1e308, 1], [True, 0, 1, 1.5]]


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0.5, 0.5, 1.5, 2.5], [1, 1, 2, 2], 0.5 / 2.5),
    ],
)
def test_iou_hand_worked_and_matrix_agree(a, b, expected):
    assert iou(a, b) == pytest.approx(expected) == iou(b, a)
    assert iou_matrix([a], [b])[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("bad", BAD)
def test_invalid_boxes_score_zero_and_never_raise(bad):
    assert iou(bad, [0, 0, 10, 10]) == 0.0 and iou([0, 0, 10, 10], bad) == 0.0
    assert giou(bad, [0, 0, 10, 10]) == -1.0
    assert valid_box(bad) is None
    m = iou_matrix([bad, [0, 0, 10, 10]], [[0, 0, 10, 10]])
    assert np.isfinite(m).all() and m[1, 0] == 1.0
    assert not point_in_box([1, 1], bad)


def test_giou_hand_worked():
    assert giou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert giou([0, 0, 1, 1], [2, 0, 3, 1]) == pytest.approx(-1 / 3)  # hull 3, union 2
    assert giou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7 - (9 - 7) / 9)
    assert giou([0, 0, 1, 1], [1e6, 1e6, 1e6 + 1, 1e6 + 1]) == pytest.approx(-1, abs=1e-9)  # far apart → −1


def test_hungarian_beats_greedy_and_does_not_double_count():
    # greedy (highest IoU first) takes p0→g0 (0.6) and leaves g1 unmatched; the optimal assignment matches both
    gt = [[0, 0, 10, 10], [6, 0, 16, 10]]
    pred = [[3, 0, 13, 10], [0, 0, 8, 10]]
    pairs = match(pred, gt, threshold=0.3)
    assert sorted((k, j) for k, j, _ in pairs) == [(0, 1), (1, 0)]
    dup = [[0, 0, 10, 10]] * 5
    assert match(dup, [[0, 0, 10, 10]]) == [(0, 0, 1.0)]
    assert precision_recall_f1(dup, [[0, 0, 10, 10]]) == pytest.approx((0.2, 1.0, 2 * 0.2 / 1.2))


def test_match_keeps_the_most_matches_at_the_threshold():
    """The largest Σ IoU pairs p0↔g1 (0.457) and p1↔g0 (0.269), both below 0.5; the valid p0↔g0 (0.508) must win."""
    pred, gt = [[17, 4, 28, 13], [17, 3, 28, 7]], [[16, 2, 24, 13], [20, 6, 29, 12]]
    assert np.round(iou_matrix(pred, gt), 3).tolist() == [[0.508, 0.457], [0.269, 0.089]]
    assert [(k, j) for k, j, _ in match(pred, gt, 0.5)] == [(0, 0)]
    assert precision_recall_f1(pred, gt, 0.5)[2] == pytest.approx(0.5)  # was 0.0
    assert [(k, j) for k, j, _ in match(pred, gt, 0.0, most_matches=False)] == [(1, 0), (0, 1)]  # Σ IoU 0.726


def _brute_force(m: np.ndarray, threshold: float) -> tuple[int, float]:
    """(most pairs at IoU ≥ threshold and > 0, the largest Σ IoU among them) over every one-to-one assignment."""
    k, j = m.shape
    best = (0, 0.0)
    small, large = (k, j) if k <= j else (j, k)
    for perm in itertools.permutations(range(large), small):
        pairs = [(a, b) if k <= j else (b, a) for a, b in enumerate(perm)]
        ok = [m[a, b] for a, b in pairs if m[a, b] > 0 and m[a, b] >= threshold]
        best = max(best, (len(ok), sum(ok)), key=lambda t: (t[0], round(t[1], 9)))
    return best


SMALL_BOXES = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(1, 8), st.integers(1, 8)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(SMALL_BOXES, SMALL_BOXES, st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_match_against_brute_force(pred, gt, thr):
    m = iou_matrix(pred, gt)
    pairs = match(pred, gt, thr)
    want = _brute_force(m, thr) if m.size else (0, 0.0)
    assert (len(pairs), round(sum(v for _, _, v in pairs), 9)) == (want[0], round(want[1], 9))


def test_precision_recall_f1_conventions_and_threshold():
    assert precision_recall_f1([], []) == (1.0, 1.0, 1.0)
    assert precision_recall_f1([], [[0, 0, 1, 1]]) == (0.0, 0.0, 0.0)
    assert precision_recall_f1([[0, 0, 1, 1]], []) == (0.0, 0.0, 0.0)
    half = [[0, 0, 10, 10]], [[5, 0, 15, 10]]  # IoU 1/3
    assert precision_recall_f1(*half, threshold=0.5) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(*half, threshold=0.3) == (1.0, 1.0, 1.0)
    assert precision_recall_f1([[0, 0, 1, 1]], [[0, 0, 1, 1]], n_pred=4) == (0.25, 1.0, 0.4)  # capped extras


def test_points_and_union_box():
    assert point_in_box([0, 0], [0, 0, 1, 1]) and point_in_box([1, 1], [0, 0, 1, 1])  # closed
    assert not point_in_box([NAN, 0], [0, 0, 1, 1]) and not point_in_box("xy", [0, 0, 1, 1])
    assert union_box([]) is None and union_box([[3, 3, 1, 1]]) is None
    assert union_box([[0, 0, 1, 1], [5, -1, 6, 0.5]]) == [0, -1, 6, 1]


def test_union_iou_exact_areas():
    assert union_iou([[0, 0, 1, 1], [1, 0, 2, 1]], [[0, 0, 2, 1]]) == 1.0
    # overlapping predictions are not double-counted: ∪pred = 3 (two 2×1 boxes overlapping by 1)
    assert union_iou([[0, 0, 2, 1], [1, 0, 3, 1]], [[0, 0, 3, 1]]) == pytest.approx(1.0)
    assert union_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]]) == pytest.approx(1 / 7)
    # L-shaped GT union (area 3) vs its bounding square (area 4): the bounding box would wrongly give 1.0
    assert union_iou([[0, 0, 2, 2]], [[0, 0, 2, 1], [0, 1, 1, 2]]) == pytest.approx(3 / 4)
    assert union_iou([], [[0, 0, 1, 1]]) == 0.0 and union_iou([[1, 1, 0, 0]], [[0, 0, 1, 1]]) == 0.0


def test_thousands_of_boxes():
    """2,000 overlapping boxes: a 4,000 × 4,000 compressed grid (the difference array keeps it O(boxes + cells))."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (2000, 2))
    many = np.concatenate([xy, xy + rng.uniform(1, 50, (2000, 2))], 1).tolist()
    p, r, f = precision_recall_f1(many[:300], many[:300])
    assert (p, r, f) == (1.0, 1.0, 1.0)
    assert union_iou(many, many[::-1]) == pytest.approx(1.0, abs=1e-12)  # the same union, listed backwards
    assert union_iou(many[:300], [[x0 + 2000, y0, x1 + 2000, y1] for x0, y0, x1, y1 in many[:300]]) == 0.0  # apart


FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6)
BOXES = st.lists(st.lists(FLOATS, min_size=4, max_size=4), max_size=6)


@settings(max_examples=150, deadline=None)
@given(BOXES, BOXES, st.floats(0, 1))
def test_property_ranges(pred, gt, thr):
    for a in pred:
        for b in gt:
            assert 0.0 <= iou(a, b) <= 1.0 and -1.0 <= giou(a, b) <= 1.0
    m = iou_matrix(pred, gt)
    assert np.isfinite(m).all() and ((0 <= m) & (m <= 1)).all()
    pairs = match(pred, gt, thr)
    assert len({k for k, _, _ in pairs}) == len(pairs) == len({j for _, j, _ in pairs})
    assert all(0.0 <= v <= 1.0 for v in precision_recall_f1(pred, gt, thr))
    u = union_iou(pred, gt)
    assert 0.0 <= u <= 1.0 and math.isfinite(u)


def test_doctests():
    assert doctest.testmod(boxes_module).failed == 0
