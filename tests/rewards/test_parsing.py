"""extract_answer / parse_boxes: the forms models emit, junk, and adversarial inputs."""

from __future__ import annotations

import doctest

from hypothesis import given, settings
from hypothesis import strategies as st

import mmrl.rewards.parsing as parsing
from mmrl.rewards.parsing import MAX_CHARS, extract_answer, parse_boxes


def test_extract_answer_last_block():
    assert extract_answer("<answer>a</answer> then <answer> b \n</answer>") == "b"
    assert extract_answer("<think>x</think><answer></answer>") == ""
    assert extract_answer("<answer>unterminated") is None
    assert extract_answer("</answer><answer>") is None
    assert extract_answer("") is None
    assert extract_answer(None) is None  # type: ignore[arg-type]


def test_box_forms():
    assert parse_boxes("[10, 20, 30.5, 40]") == [[10, 20, 30.5, 40]]
    assert parse_boxes("[[1,2,3,4],[5,6,7,8]]") == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_boxes('{"bbox_2d": [1, 2, 3, 4], "label": "dog"}') == [[1, 2, 3, 4]]
    assert parse_boxes('[{"label": "a", "bbox_2d": [1,2,3,4]}, {"bbox_2d": [5,6,7,8]}]') == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_boxes('{"Position": [1,2,3,4], "Confidence": 0.9}') == [[1, 2, 3, 4]]  # Visual-RFT
    assert parse_boxes("<|box_start|>(342,308),(670,766)<|box_end|>") == [[342, 308, 670, 766]]  # Qwen2-VL
    assert parse_boxes("The cat is at [ 12 , -3, 4e1, 5. ] I think.") == [[12, -3, 40, 5]]
    assert parse_boxes('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```') == [[1, 2, 3, 4]]


def test_keyed_boxes_win_over_other_lists():
    text = '{"scores": [0.1, 0.2, 0.3, 0.4], "bbox_2d": [1, 2, 3, 4]}'
    assert parse_boxes(text) == [[1, 2, 3, 4]]


def test_junk_and_partial():
    for junk in ["", "no boxes", "[1, 2, 3]", "[1, 2, 3, 4, 5]", "[a, b, c, d]", "{", "[[[[", "[true,1,2,3]", "null"]:
        assert parse_boxes(junk) == [], junk
    assert parse_boxes(None) == []  # type: ignore[arg-type]
    assert parse_boxes("[1,2,3,4]", max_boxes=0) == []


def test_non_finite_and_huge_numbers_dropped():
    assert parse_boxes("[NaN, 1, 2, 3]") == []
    assert parse_boxes("[1e999, 1, 2, 3] [1, 2, 3, 4]") == [[1, 2, 3, 4]]
    assert parse_boxes("[%s, 1, 2, 3]" % ("9" * 5000)) == []
    assert parse_boxes('[Infinity, 1, 2, 3]') == []
    assert parse_boxes("[-1e308, 0, 1e308, 1]") == [[-1e308, 0, 1e308, 1]]


def test_max_boxes_and_length_cap():
    assert len(parse_boxes("[0,0,1,1] " * 500)) == 100
    assert len(parse_boxes("[0,0,1,1] " * 500, max_boxes=3)) == 3
    late = " " * MAX_CHARS + "[1, 2, 3, 4]"
    assert parse_boxes(late) == []  # beyond the 64 KiB cap


def test_adversarial_inputs_are_fast_enough():
    # each of these is linear for the regex; a quadratic pattern would take minutes here
    long_inputs = ["[" + "1" * MAX_CHARS, "[" * MAX_CHARS, "[1," * 20000, "(1,2)," * 10000, "[" + " " * 60000]
    for text in long_inputs + ["1." * 30000]:
        parse_boxes(text)


BOXY = st.text(alphabet=st.sampled_from(list("[](){},.:-+eE0123456789 \"abx_2dNnIf")), max_size=200)


@settings(max_examples=100, deadline=None)
@given(BOXY | st.text(max_size=200))
def test_never_raises(text):
    boxes = parse_boxes(text)
    assert all(len(b) == 4 and all(isinstance(v, float) and abs(v) < float("inf") for v in b) for b in boxes)
    extract_answer(text)


def test_doctests():
    assert doctest.testmod(parsing).failed == 0
