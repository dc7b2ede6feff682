"""Geometric rewards and the object/point parsers: hand-worked values, conventions, junk, caps, properties."""

from __future__ import annotations

import doctest
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import Qwen2VLImageProcessor

from mmrl.perception.geometry import Geometry
from mmrl.rewards import geometric, get
from mmrl.rewards.parsing import parse_number, parse_objects, parse_points, parse_stats

BOX_REWARDS = ["iou_sq", "iou_thresh", "giou", "det_f1", "vlmr1_det", "rft_det", "union_iou", "salience_iou"]
ALL = BOX_REWARDS + ["point_in_box", "point_dist", "count_exact", "count_rel"]
GT = {"boxes": [[10, 20, 50, 60]]}  # 40×40


def call(name, texts, answer, **kw):
    texts = [texts] if isinstance(texts, str) else texts
    return get(name)(texts, answer=[answer] * len(texts), **kw)


# ---- parsing --------------------------------------------------------------------------------------------------
def test_parse_objects_forms():
    p = parse_objects('<think>[0,0,1,1]?</think><answer>[{"bbox_2d": [1,2,3,4], "label": "cat", "score": 0.5},'
                      ' {"bbox_2d": [5,6,7,8]}]</answer>')
    assert p.objects == [{"box": [1, 2, 3, 4], "label": "cat", "score": 0.5},
                         {"box": [5, 6, 7, 8], "label": None, "score": None}]
    assert not p.truncated and not p.failed
    qwen2 = ("<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> and "
             "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(5, 6), (7, 8)<|box_end|>")
    assert [(o["label"], o["box"]) for o in parse_objects(qwen2).objects] == [("the cat", [1, 2, 3, 4]),
                                                                               ("dog", [5, 6, 7, 8])]
    prose = 'I see {"bbox_2d": [1, 2, 3, 4], "label": "a", "confidence": 0.7} and {"bbox": [[5,6,7,8]]}.'
    assert [(o["box"], o["label"], o["score"]) for o in parse_objects(prose).objects] == [
        ([1, 2, 3, 4], "a", 0.7), ([5, 6, 7, 8], None, None)]
    assert parse_objects("(1,2),(3,4) then [5, 6, 7, 8]").boxes == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_objects('{"Position": [1,2,3,4], "Confidence": 0.9}').objects[0]["score"] == 0.9  # Visual-RFT
    rft = "<answer>[{'Position': [254, 303, 291, 365], 'Confidence': 0.9}]</answer>"  # Visual-RFT's prompt example
    assert parse_objects(rft).objects == [{"box": [254, 303, 291, 365], "label": None, "score": 0.9}]
    assert parse_objects('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```').boxes == [[1, 2, 3, 4]]
    assert parse_objects('{"bbox_2d": [1,2,3,4], "score": NaN}').objects[0]["score"] is None


@pytest.mark.parametrize("junk", ["", "no boxes", "[1,2,3]", "[NaN,1,2,3]", "{", "[[[[", None, 12, "<answer></answer>",
                                  "[1e999, 0, 1, 1]", '{"bbox_2d": "x"}'])
def test_parse_junk_fails_softly(junk):
    for p in (parse_objects(junk), parse_points(junk)):
        assert p.objects == [] and p.failed
    if junk is None or not any(c.isdigit() for c in str(junk)):
        assert parse_number(junk)[0] is None


def test_parse_points_and_numbers():
    assert parse_points('{"point_2d": [5, 7]}').points == [[5, 7]]
    assert parse_points('[{"point_2d": [1, 2]}, {"point_2d": [3, 4]}]').points == [[1, 2], [3, 4]]
    assert parse_points("at (3, 4.5) or [1,2]").points == [[3, 4.5], [1, 2]]
    assert parse_points("[1, 2, 3, 4]").points == []  # a box is not a point
    assert parse_number("<answer>There are 12 apples</answer>")[0] == 12
    assert parse_number("I count 1, 2, 3 so 7")[0] == 7  # after reasoning: the last number


def test_caps_engage_and_are_counted():
    many = "[0,0,1,1] " * 5000
    with parse_stats() as st_:
        p = parse_objects(many)
        parse_objects("x" * 70000 + "[0,0,1,1]")
        parse_objects("junk")
        parse_objects("[0,0,1,1]", max_boxes=5)
    # the scan stops a little past the cap (10 × 100 + 10 boxes seen), not after all 5,000: bounded work
    assert len(p.objects) == 100 and p.truncated and p.n_found == 1010
    assert (st_.calls, st_.truncated, st_.failed) == (4, 2, 2)
    assert st_.as_metrics() == {"truncated": 0.5, "parse_fail": 0.5}
    assert parse_objects("[0,0,1,1] " * 10, max_boxes=3).n_found == 10


# ---- hand-worked rewards --------------------------------------------------------------------------------------
def test_single_box_rewards_hand_worked():
    half = "<answer>[10, 20, 30, 60]</answer>"  # IoU 1/2
    assert call("iou_sq", half, GT) == [0.25]
    assert call("iou_thresh", half, GT) == [1.0]
    assert call("iou_thresh", half, GT, threshold=0.6) == [0.0]
    assert call("giou", half, GT) == [0.75]  # GIoU = IoU when one box contains the other
    assert call("giou", "[60, 20, 100, 60]", GT) == pytest.approx([(0 - (90 * 40 - 3200) / (90 * 40) + 1) / 2])


def test_detection_rewards_hand_worked():
    gt = {"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "labels": ["cat", "dog"]}
    text = ('[{"bbox_2d": [0, 0, 10, 10], "label": "cat", "confidence": 0.9},'
            ' {"bbox_2d": [0, 0, 10, 10], "label": "cat", "confidence": 0.6},'
            ' {"bbox_2d": [20, 0, 30, 5], "label": "dog", "confidence": 0.3}]')
    # matches: (p0, g0) IoU 1, (p2, g1) IoU 0.5; p1 is a duplicate → false positive
    assert call("det_f1", text, gt) == pytest.approx([2 * (2 / 3) * 1 / (2 / 3 + 1)])
    assert call("det_f1", text, gt, metric="precision") == pytest.approx([2 / 3])
    assert call("det_f1", text, gt, metric="recall", threshold=0.6) == pytest.approx([0.5])
    # pos = 1.5/2, completeness = 1 − (0 + 1/3)/2
    assert call("vlmr1_det", text, gt) == pytest.approx([0.7 * 0.75 + 0.3 * (1 - 1 / 6)])
    wrong = text.replace('"dog"', '"cow"')  # wrong label zeroes that pair's IoU; label term counts 1 of 2
    assert call("vlmr1_det", wrong, gt, beta=1.0) == pytest.approx([(0.7 * 0.5 + 0.5 + 0.3 * (1 - 1 / 6)) / 2])
    # r_iou = 1.5/3; r_conf = (0.9 + (1 − 0.6) + 0.3)/3
    assert call("rft_det", text, gt) == pytest.approx([(1.5 / 3 + 1.6 / 3) / 2])
    assert call("union_iou", "[0, 0, 10, 10] [20, 0, 30, 5]", gt) == pytest.approx([150 / 200])
    low = '[{"bbox_2d": [0, 0, 10, 3], "confidence": 0.8}]'  # IoU 0.3 < τ: a miss, confidence reward 1 − 0.8
    assert call("rft_det", low, gt) == pytest.approx([(0 + 0.2) / 2])
    assert call("rft_det", low, gt, threshold=0.25) == pytest.approx([(0.3 / 2 + 0.8) / 2])


def test_salience_weights_and_area_fallback():
    gt = {"boxes": [[0, 0, 10, 10], [20, 0, 22, 2]]}  # areas 100 and 4
    text = "[0, 0, 10, 10]"
    assert call("salience_iou", text, gt) == pytest.approx([100 / 104])
    assert call("salience_iou", text, dict(gt, salience=[1, 3])) == pytest.approx([0.25])
    assert call("salience_iou", text, dict(gt, salience=[1, "x"])) == pytest.approx([100 / 104])  # bad → area
    spam = "[0, 0, 10, 10] [20, 0, 22, 2] " + "[50, 50, 60, 60] " * 2
    assert call("salience_iou", spam, gt) == pytest.approx([0.5])  # length penalty 2/4
    assert call("salience_iou", spam, gt, extra_penalty=False) == pytest.approx([1.0])


def test_point_and_count_rewards():
    gt = {"boxes": [[0, 0, 10, 10], [5, 5, 20, 20]]}
    assert call("point_in_box", ["(7, 7)", "(2, 2)", "(50, 50)", "none"], gt) == [1.0, 0.5, 0.0, 0.0]
    pts = {"points": [[0, 0], [100, 100]], "size": [60, 80]}
    assert call("point_dist", ["(3, 4)", "(1000, 1000)", "no"], pts) == pytest.approx([0.95, 0.0, 0.0])
    geo = Geometry(60, 80, 60, 80, "qwen2_vl")  # relative [0, 1000): (50, 50) → (3, 4)
    assert call("point_dist", ["(50, 50)"], pts, geometry=[geo]) == pytest.approx([0.95])
    with pytest.raises(ValueError, match="image size"):
        call("point_dist", "(1, 1)", {"points": [[0, 0]]})
    assert call("point_dist", "(3, 4)", {"point": [0, 0]}, diagonal=10) == pytest.approx([0.5])
    c = {"count": 4}
    texts = ["<answer>4</answer>", "<answer>5</answer>", "<answer>many</answer>", "<answer>-1e999</answer>", "4"]
    assert call("count_exact", texts, c) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert call("count_rel", texts, c) == [1.0, 0.75, 0.0, 0.0, 1.0]
    assert call("count_rel", "<answer>2</answer>", {"count": 0}) == [0.0]  # |2 − 0| / max(0, 1) = 2 → 0
    assert call("count_rel", "<answer>1e308</answer>", c) == [0.0]


def test_not_applicable_and_empty_conventions():
    for name in ALL:
        assert call(name, ["[0,0,1,1]", ""], {"choice": "B"}, diagonal=10) == [None, None]
        assert get(name)(["x"], answer=None, diagonal=10) == [None]
    for name in BOX_REWARDS:
        assert call(name, ["no box", "[0,0,1,1]"], {"boxes": []}) == [1.0, 0.0], name  # VLM-R1 conventions
        assert call(name, ["", "no box"], GT) == [0.0, 0.0], name
    with pytest.raises(ValueError, match="column"):
        get("iou_sq")(["a", "b"], answer=[GT])


@pytest.mark.parametrize("bad", ["[50, 60, 10, 20]", "[10, 20, 10, 60]", "[NaN, 20, 50, 60]",
                                 "[1e308, 20, -1e308, 60]", "[-1e308, -1e308, 1e308, 1e308]",
                                 "[1000, 1000, 1100, 1100]", "[-100, -100, -50, -50]"])
def test_degenerate_inverted_huge_and_outside_boxes(bad):
    for name in BOX_REWARDS:
        v = call(name, f"<answer>{bad}</answer>", GT)[0]
        assert v is not None and math.isfinite(v) and 0.0 <= v <= 1.0
        assert v == 0.0 or name == "rft_det" or name == "giou", (name, bad, v)  # rft: confidence term; giou: shape


def test_duplicates_do_not_double_count():
    dup = "[10, 20, 50, 60] " * 4
    gt2 = {"boxes": [[10, 20, 50, 60], [100, 100, 140, 140]]}
    assert call("det_f1", dup, gt2, metric="recall") == [0.5]
    assert call("det_f1", dup, gt2, metric="precision") == [0.25]
    assert call("salience_iou", dup, gt2, extra_penalty=False) == pytest.approx([0.5])


def test_thousands_of_boxes_are_capped():
    text = "<answer>" + "[10, 20, 50, 60] " * 3000 + "</answer>"
    with parse_stats() as st_:
        f1 = call("det_f1", text, GT, metric="precision")
    assert st_.truncated == 1
    assert 0 < f1[0] <= 1 / 100  # the boxes beyond the cap are false positives too
    huge = "<think>" + "[1, 2, 3, 4] (5, 6) {\"bbox_2d\": [" * 30000 + "</think>"  # ≈ 1 MB
    for name in ALL:
        with parse_stats() as st_:
            values = get(name)([text, huge], answer=[ANSWERS] * 2)
        assert all(0.0 <= v <= 1.0 for v in values), name
        # one parse per completion, and the 1 MB one cut at the length cap (the 3,000 boxes at the box cap for
        # box rewards): what is parsed is bounded, whatever the completion's size
        assert (st_.calls, st_.truncated) == (2, 2 if name in BOX_REWARDS else 1), name


# ---- coordinate conventions -----------------------------------------------------------------------------------
def test_qwen2_vl_relative_box_tokens():
    geo = Geometry(333, 97, 333, 97, "qwen2_vl")  # odd size; relative ints in [0, 1000)
    gt = {"boxes": [[33.3, 19.4, 166.5, 77.6]]}
    model = geo.from_original(gt["boxes"])[0]  # [100, 200, 500, 800]
    text = (f"<answer><|object_ref_start|>cat<|object_ref_end|><|box_start|>({model[0]},{model[1]}),"
            f"({model[2]},{model[3]})<|box_end|></answer>")
    assert call("iou_sq", text, gt, geometry=[geo]) == pytest.approx([1.0])
    assert call("iou_sq", text, gt)[0] < 0.1  # without geometry the numbers are read as pixels


def test_qwen2_5_vl_resized_pixels_with_real_processor():
    ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    geo = Geometry.for_image(ip, 333, 97, "qwen2_5_vl")
    assert (geo.proc_w, geo.proc_h) != (333, 97)  # the processor really resized
    gt = {"boxes": [[30.0, 10.0, 200.0, 80.0], [250.0, 5.0, 330.0, 90.0]]}
    sx, sy = geo.proc_w / 333, geo.proc_h / 97
    objs = [{"bbox_2d": [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy], "label": "x"} for b in gt["boxes"]]
    import json

    text = f"<think>look</think><answer>{json.dumps(objs)}</answer>"
    for name in BOX_REWARDS:
        assert call(name, text, gt, geometry=[geo]) == pytest.approx([1.0]), name
    pts = {"points": [[100.0, 50.0]]}
    assert call("point_dist", f"({100 * sx}, {50 * sy})", pts, geometry=[geo]) == pytest.approx([1.0])
    assert call("point_in_box", f"({100 * sx}, {50 * sy})", gt, geometry=[geo]) == [0.5]


# ---- properties and positive controls -------------------------------------------------------------------------
ANSWERS = {"boxes": [[10, 20, 50, 60], [5, 5, 8, 9]], "labels": ["a", "b"], "salience": [2, 1],
           "points": [[3, 4]], "size": [64, 48], "count": 3}
NOISY = st.text(alphabet=st.sampled_from(list("[](){},.:-+eE0123456789 \"<>/|_abxoxNnIf")) , max_size=300)
TAGS = st.sampled_from(["<answer>", "</answer>", "<think>", "<|box_start|>", "<|box_end|>", '{"bbox_2d":',
                        "<|object_ref_start|>", "<|object_ref_end|>", "NaN", "1e999", "\u202e", "🙂"])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(NOISY | st.text(max_size=100) | TAGS, max_size=8).map("".join))
def test_never_raises_and_stays_in_range(text):
    for name in ALL:
        for v in get(name)([text], answer=[ANSWERS]):
            assert v is not None and math.isfinite(v) and 0.0 <= v <= 1.0, (name, text, v)


CORRECT = {
    "boxes": '[{"bbox_2d": [10, 20, 50, 60], "label": "a", "confidence": 1.0},'
             ' {"bbox_2d": [5, 5, 8, 9], "label": "b", "confidence": 1.0}]',
    "point": "(20, 40)",
    "count": "3",
}
NOISE = ["", "blah [1, 2, 3, 4] (5,6)", "<answer>[0,0,1,1]</answer>", '{"bbox_2d": [0,0,1,1]}', "🙂\u202e" * 50,
         "<think>[[[[ 12 13 {</think>", "x" * 5000]


@pytest.mark.parametrize("noise", NOISE)
def test_positive_controls_in_noise(noise):
    gt = {"boxes": [[10, 20, 50, 60], [5, 5, 8, 9]], "labels": ["a", "b"], "count": 3,
          "points": [[20, 40]], "size": [64, 48]}
    for name in BOX_REWARDS:
        text = f"{noise}<think>{noise}</think><answer>{CORRECT['boxes']}</answer>{noise[:40].replace('<', '')}"  # no later <answer>
        assert call(name, text, gt) == pytest.approx([1.0]), (name, noise)
    point = f"{noise}<answer>{CORRECT['point']}</answer>"
    assert call("point_in_box", point, {"boxes": [[10, 20, 50, 60]]}) == [1.0]
    assert call("point_dist", point, gt) == [1.0]
    for name in ("count_exact", "count_rel"):
        assert call(name, f"{noise}<answer>{CORRECT['count']}</answer>", gt) == [1.0]


def test_doctests():
    assert doctest.testmod(geometric).failed == 0
