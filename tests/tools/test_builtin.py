"""The built-in tools (`mmrl.tools.builtin`): boxes in the model's own convention, clamping, minimum size, aspect
ratio, the processor's pixel limits, crops from the original's pixels, rotation — and the geometry round trip."""

from __future__ import annotations

import pytest
from PIL import Image

from mmrl.perception.geometry import Geometry
from mmrl.tools import ImageLimits, ToolCall, Toolbox, TrajectoryState, make_tool


class _FixedSize:
    """A processor that shows every image at 168 × 112 (`processed_size`'s fixed-size branch): the processed size of
    a crop then differs from its own, as with a real processor."""

    size = {"height": 112, "width": 168}


def _coded(w: int = 240, h: int = 160) -> Image.Image:
    """Every pixel's colour is its own (x, y): (x, y, 0)."""
    im = Image.new("RGB", (w, h))
    im.putdata([(x, y, 0) for y in range(h) for x in range(w)])
    return im


def _state(convention: str, *, image: Image.Image | None = None, min_pixels: int = 28 * 28,
           max_pixels: int = 240 * 160) -> TrajectoryState:
    image = image or _coded()
    geometry = Geometry(image.width, image.height, 224, 140, convention)
    return TrajectoryState.start([image], [geometry], ImageLimits(convention, min_pixels, max_pixels, _FixedSize()))


@pytest.fixture(scope="module")
def box():
    with Toolbox([make_tool("zoom_in"), make_tool("crop"), make_tool("rotate"),
                  make_tool("zoom_in", name="strict_zoom", kwargs={"max_ratio": 4.0})]) as tools:
        yield tools


def _run(box: Toolbox, state: TrajectoryState, name: str, **arguments):
    result = box.run(ToolCall(name, arguments), state)
    return result, state.after(result)


@pytest.mark.parametrize("convention", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "norm"])
def test_a_point_in_the_zoom_maps_back_to_the_right_original_pixel(box, convention):
    state = _state(convention)
    region = [60.0, 40.0, 150.0, 100.0]  # original pixels
    model_box = state.images[0].geometry.from_original([region])[0]  # as the policy writes it
    result, state = _run(box, state, "zoom_in", bbox_2d=model_box)
    assert result.error is None, result.text
    zoom = state.images[1]
    assert zoom.origin == 0 and zoom.geometry.proc_w == 168 and zoom.geometry.convention == convention
    assert result.info["box"] == pytest.approx(region, abs=0.6)  # the model convention's rounding
    assert zoom.image.width * zoom.image.height == pytest.approx(240 * 160, rel=0.02)  # as large as its source
    for point in ([100.0, 70.0], [61.0, 41.0], [149.0, 99.0]):
        own = zoom.frame.points_from_source([point])  # where the point is in the zoom's pixels …
        model = zoom.geometry.points_from_original(own)  # … and in the model's words about the zoom
        [[x, y]] = zoom.points_to_origin(model)  # back to the original
        assert [x, y] == pytest.approx(point, abs=0.5)
        r, g, _ = zoom.image.getpixel((min(int(own[0][0]), zoom.image.width - 1), int(own[0][1])))
        assert abs(r - point[0]) <= 2 and abs(g - point[1]) <= 2  # the zoom's pixel there is the original's


def test_zooming_a_zoom_cuts_the_original_pixels_once(box):
    state = _state("qwen2_5_vl", max_pixels=480 * 320)
    _, state = _run(box, state, "zoom_in", bbox_2d=[56, 35, 168, 105])  # model pixels: 224 × 140 shows 240 × 160
    first = state.images[1]
    inner = first.geometry.from_original(first.frame.boxes_from_source([[90, 60, 130, 90]]))[0]
    result, state = _run(box, state, "zoom_in", bbox_2d=inner, image=-1)
    second = state.images[2]
    assert result.error is None and second.origin == 0  # a frame of the original, not of the first zoom
    assert second.frame.box == pytest.approx((90, 60, 130, 90), abs=1.5)
    assert second.image.width > 4 * 40  # magnified, from the original's pixels
    u, v = second.image.width // 2, second.image.height // 2
    [[x, y]] = second.frame.points_to_source([[u + 0.5, v + 0.5]])
    r, g, _ = second.image.getpixel((u, v))
    assert abs(r - x) <= 1.5 and abs(g - y) <= 1.5


def test_a_box_is_clamped_to_its_image_and_one_outside_is_an_error(box):
    state = _state("pixel")
    result, _ = _run(box, state, "crop", bbox_2d=[-50, -20, 100, 60])
    assert result.info["box"] == [0, 0, 100, 60]
    result, _ = _run(box, state, "crop", bbox_2d=[100, 60, 20, 10])  # corners in either order
    assert result.info["box"] == [20, 10, 100, 60]
    result, _ = _run(box, state, "crop", bbox_2d=[300, 10, 400, 50])
    assert result.error == "Error: bbox_2d lies outside image 0" and result.text == result.error


def test_small_boxes_grow_to_the_minimum_size_inside_the_image(box):
    state = _state("pixel")
    result, _ = _run(box, state, "crop", bbox_2d=[100, 70, 102, 71])
    x1, y1, x2, y2 = result.info["box"]
    assert (x2 - x1, y2 - y1) == (28, 28) and (x1 + x2) / 2 == 101 and (y1 + y2) / 2 == 70.5
    result, _ = _run(box, state, "crop", bbox_2d=[0, 0, 3, 3])  # at a corner: moved inside, not cut
    assert result.info["box"] == [0, 0, 28, 28]


def test_thin_boxes_grow_their_short_side_to_the_maximum_aspect_ratio(box):
    state = _state("pixel")
    result, _ = _run(box, state, "strict_zoom", bbox_2d=[0, 70, 240, 100])
    x1, y1, x2, y2 = result.info["box"]
    assert (x2 - x1) / (y2 - y1) == pytest.approx(4.0) and y1 < 70 and y2 > 100
    thin = _state("pixel", image=_coded(240, 20))
    result, _ = _run(box, thin, "strict_zoom", bbox_2d=[0, 0, 240, 20])  # too thin to grow: the long side is cut
    x1, y1, x2, y2 = result.info["box"]
    assert (y1, y2) == (0, 20) and x2 - x1 == pytest.approx(80) and (x1 + x2) / 2 == pytest.approx(120)


def test_sizes_stay_within_the_processors_pixel_limits(box):
    state = _state("pixel", min_pixels=60 * 60, max_pixels=120 * 80)
    small, _ = _run(box, state, "crop", bbox_2d=[0, 0, 40, 30])  # 1200 px: enlarged to min_pixels
    large, _ = _run(box, state, "crop", bbox_2d=[0, 0, 240, 160])  # 38400 px: shrunk to max_pixels
    zoom, _ = _run(box, state, "zoom_in", bbox_2d=[0, 0, 40, 30])  # the source's size, capped at max_pixels
    sizes = [r.images[0].image.size for r in (small, large, zoom)]
    assert 60 * 60 <= sizes[0][0] * sizes[0][1] <= 61 * 61
    assert sizes[1] == (120, 80) and sizes[2][0] * sizes[2][1] <= 120 * 80
    native, _ = _run(box, _state("pixel"), "crop", bbox_2d=[10, 10, 90, 70])
    assert native.images[0].image.size == (80, 60)  # within the limits: the region's own resolution


def test_rotate_turns_exactly_and_maps_points_back(box):
    state = _state("pixel")
    result, state = _run(box, state, "rotate", angle=90)
    turned = state.images[1]
    assert turned.image.tobytes() == _coded().transpose(Image.Transpose.ROTATE_90).tobytes()
    [[x, y]] = turned.points_to_origin([[10.5, 20.5]])
    assert turned.image.getpixel((10, 20)) == (int(x), int(y), 0)
    result, state = _run(box, state, "rotate", angle=-90)  # the latest image, back upright, from the original
    assert state.images[2].image.tobytes() == _coded().tobytes() and state.images[2].origin == 0
    for bad in (45, "90", None, True):
        result, _ = _run(box, state, "rotate", angle=bad)
        assert result.error is not None and "multiple of 90" in result.error


def test_bad_arguments_are_errors_the_policy_sees(box):
    state = _state("qwen2_5_vl")
    cases = {
        "bbox_2d must be four numbers": dict(bbox_2d=[1, 2, 3]),
        "image must be an integer index": dict(bbox_2d=[1, 2, 30, 40], image=5),
        "has no argument 'bbox'; did you mean 'bbox_2d'?": dict(bbox=[1, 2, 30, 40]),
        "needs the argument 'bbox_2d'": dict(image=0),
    }
    for says, arguments in cases.items():
        result, _ = _run(box, state, "zoom_in", **arguments)
        assert result.error is not None and says in result.error, result.error
    assert box.metrics.pop()["tool/zoom_in/errors"] >= len(cases)


def test_a_real_qwen_processor_gives_the_zoom_its_geometry():
    transformers = pytest.importorskip("transformers")
    processor = transformers.Qwen2VLImageProcessor()
    limits = ImageLimits.from_processor(processor, "qwen2_5_vl")
    assert (limits.min_pixels, limits.max_pixels) == (56 * 56, 28 * 28 * 1280)
    image = _coded()
    state = TrajectoryState.start([image], [Geometry.for_image(processor, 240, 160, "qwen2_5_vl")], limits)
    with Toolbox([make_tool("zoom_in")]) as tools:
        result = tools.run(ToolCall("zoom_in", {"bbox_2d": [50, 30, 130, 90]}), state)
    zoom = result.images[0]
    assert zoom.geometry == Geometry.for_image(processor, *zoom.image.size, "qwen2_5_vl")
    assert zoom.geometry.proc_w % 28 == 0 and zoom.geometry.proc_h % 28 == 0
