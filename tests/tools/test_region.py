"""The built-in `region` tool (`mmrl.tools.builtin.region`) and its call format `<region>Q</region>`: the cell is cut
from the original's pixels, its box in `info` is in original pixels, its size follows `zoom_in`'s rule, a grid on a
crop is the crop's, and bad numbers are errors the policy sees."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from mmrl.tools import FORMATS, ImageLimits, ToolCall, Toolbox, TrajectoryState, make_tool, parse_calls


def _coded(w: int = 224, h: int = 160) -> Image.Image:
    """Every pixel's colour is its own (x, y): (x, y, 0)."""
    im = Image.new("RGB", (w, h))
    im.putdata([(x, y, 0) for y in range(h) for x in range(w)])
    return im


def _state(image: Image.Image, *, max_pixels: int = 16384 * 28 * 28) -> TrajectoryState:
    return TrajectoryState.start([image], limits=ImageLimits("pixel", 28 * 28, max_pixels))


@pytest.fixture(scope="module")
def box():
    with Toolbox([make_tool("region"), make_tool("region", name="region3", kwargs={"grid": 3}),
                  make_tool("zoom_in")], fmt="region") as tools:
        yield tools


@pytest.mark.parametrize("q, cell", [(1, (0, 0, 112, 80)), (2, (112, 0, 224, 80)), (3, (0, 80, 112, 160)),
                                     (4, (112, 80, 224, 160))])
def test_each_region_is_its_quarter_of_the_original_pixels(box, q, cell):
    image = _coded()
    result = box.run(ToolCall("region", {"region": q}), _state(image, max_pixels=112 * 80))
    assert result.error is None, result.text
    [shown] = result.images
    assert result.info == {"image": 0, "origin": 0, "box": list(map(float, cell)), "region": q}
    assert shown.origin == 0 and shown.frame.box == tuple(map(float, cell)) and shown.frame.turns == 0
    assert shown.image.size == (112, 80)  # the pixel cap holds it at the quarter's own resolution: an exact copy
    assert np.array_equal(np.asarray(shown.image), np.asarray(image.crop(cell)))
    assert result.text == f"Image 1 shows region {q} of image 0."


def test_a_region_is_shown_with_as_many_pixels_as_its_image_like_zoom_in(box):
    image = _coded()
    state = _state(image)
    result = box.run(ToolCall("region", {"region": 4}), state)
    [shown] = result.images
    assert shown.image.size == (224, 160)  # the quarter enlarged 2x: as many pixels as the image it was laid over
    expected = image.resize((224, 160), Image.Resampling.BICUBIC, box=(112, 80, 224, 160))
    assert np.array_equal(np.asarray(shown.image), np.asarray(expected))
    zoom = box.run(ToolCall("zoom_in", {"bbox_2d": [112, 80, 224, 160]}), state)
    assert zoom.info["box"] == result.info["box"] and zoom.images[0].image.size == shown.image.size
    assert shown.geometry.proc_w == 224 and shown.geometry.convention == "pixel"
    [[x, y]] = shown.points_to_origin([[0, 0]])  # the cell's corner maps back to the original's
    assert (x, y) == pytest.approx((112, 80))


def test_the_processor_limits_bound_the_region():
    with Toolbox([make_tool("region")]) as tools:
        result = tools.run(ToolCall("region", {"region": 1}), _state(_coded(), max_pixels=40 * 40))
    [shown] = result.images
    assert shown.image.width * shown.image.height <= 40 * 40
    assert shown.image.width / shown.image.height == pytest.approx(112 / 80, rel=0.05)


def test_a_3x3_grid_and_a_grid_on_a_crop(box):
    image = _coded(240, 150)
    result = box.run(ToolCall("region3", {"region": 6}), _state(image))  # row 2, column 3
    assert result.info["box"] == [160.0, 50.0, 240.0, 100.0]
    state = _state(image).after(box.run(ToolCall("zoom_in", {"bbox_2d": [40, 30, 200, 130]}), _state(image)))
    with Toolbox([make_tool("region", kwargs={"image": -1})]) as tools:
        inner = tools.run(ToolCall("region", {"region": 2}), state)  # the crop's top-right quarter
    assert inner.error is None and inner.info["image"] == 1 and inner.info["origin"] == 0
    assert inner.info["box"] == pytest.approx([120, 30, 200, 80], abs=0.01)
    assert inner.images[0].frame.box == pytest.approx((120, 30, 200, 80), abs=0.01)  # a frame of the original


def test_a_rotated_view_keeps_its_orientation(box):
    image = _coded()
    with Toolbox([make_tool("rotate"), make_tool("region", kwargs={"image": -1})]) as tools:
        state = _state(image)
        turned = tools.run(ToolCall("rotate", {"angle": 90, "image": 0}), state)  # 160 x 224
        assert turned.error is None, turned.text
        state = dataclasses.replace(state.after(turned), limits=ImageLimits("pixel", 28 * 28, 112 * 80))
        result = tools.run(ToolCall("region", {"region": 1}), state)
    # the turned view's top-left quarter is the original's top-right quarter, still turned
    assert result.info["box"] == [112.0, 0.0, 224.0, 80.0]
    [shown] = result.images
    assert shown.frame.turns == 1 and shown.image.size == (80, 112)
    expected = image.crop((112, 0, 224, 80)).transpose(Image.Transpose.ROTATE_90)
    assert np.array_equal(np.asarray(shown.image), np.asarray(expected))


@pytest.mark.parametrize("value", ["3", " 3 ", "3.0", 3.0, 3])
def test_a_numeric_string_or_integral_float_is_a_region_number(box, value):
    result = box.run(ToolCall("region", {"region": value}), _state(_coded()))
    assert result.error is None and result.info["region"] == 3


@pytest.mark.parametrize("value", [0, 5, -1, 2.5, "three", "", True, False, None, [1], float("nan"), "1e400",
                                   "9" * 50])
def test_a_bad_region_number_is_an_error_naming_the_valid_range(box, value):
    result = box.run(ToolCall("region", {"region": value}), _state(_coded()))
    assert result.error is not None and not result.images
    assert "from 1 to 4" in result.text and result.text.startswith("Error:")


def test_arguments_and_options_the_tool_does_not_take(box):
    assert "needs the argument 'region'" in box.run(ToolCall("region", {}), _state(_coded())).text
    assert "has no argument 'regoin'" in box.run(ToolCall("region", {"regoin": 1}), _state(_coded())).text
    assert "from 1 to 9" in box.run(ToolCall("region3", {"region": 10}), _state(_coded())).text
    with Toolbox([make_tool("region", kwargs={"grid": 0})]) as tools:
        assert "grid must be an int >= 1" in tools.run(ToolCall("region", {"region": 1}), _state(_coded())).text
    with Toolbox([make_tool("region", kwargs={"image": 3})]) as tools:
        assert "image must be an integer index" in tools.run(ToolCall("region", {"region": 1}), _state(_coded())).text


def test_the_region_call_format():
    assert FORMATS["region"].tool == "region"
    calls = parse_calls("I look closer: <region>3</region> then <region> 2 </region><region>top</region>", "region")
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("region", {"region": 3}, None), ("region", {"region": 2}, None), ("region", {"region": "top"}, None)]
    assert parse_calls("<answer>90</answer>", "region") == []


def test_the_schema_the_policy_is_shown(box):
    [schema] = [s for s in box.schemas() if s["function"]["name"] == "region"]
    assert schema["function"]["parameters"]["required"] == ["region"]
    assert schema["function"]["parameters"]["properties"]["region"]["type"] == "integer"


def test_the_caption_is_the_default_line_none_or_the_given_text():
    """`caption`: true gives "Image k shows region …", false the crop alone, a string that text after the crop (e.g.
    the question again); anything else is an error naming the option."""
    image = _coded()
    texts = {}
    for caption in (True, False, "Arrow?"):
        with Toolbox([make_tool("region", kwargs={"caption": caption})], fmt="region") as tools:
            result = tools.run(ToolCall("region", {"region": 2}), _state(image))
        assert result.error is None and len(result.images) == 1
        texts[caption] = result.text
    assert texts == {True: "Image 1 shows region 2 of image 0.", False: "", "Arrow?": "Arrow?"}
    with Toolbox([make_tool("region", kwargs={"caption": 1})], fmt="region") as tools:
        result = tools.run(ToolCall("region", {"region": 2}), _state(image))
    assert result.error is not None and "caption must be true, false or a string" in result.text
