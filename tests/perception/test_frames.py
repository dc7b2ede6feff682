"""Frames of derived images (`mmrl.perception.frames`): mapping both ways, composing, rendering from the source."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from mmrl.perception.frames import Frame


def _coded(w: int, h: int) -> Image.Image:
    """Every pixel's colour is its own (x, y): (x, y, 0)."""
    im = Image.new("RGB", (w, h))
    im.putdata([(x, y, 0) for y in range(h) for x in range(w)])
    return im


FRAMES = {
    "whole": Frame.whole(60, 40),
    "crop": Frame.whole(60, 40).crop([10, 5, 40, 25], (30, 20)),
    "crop-turned": Frame.whole(60, 40).crop([10, 5, 40, 25], (30, 20)).turned(1),
    "turned-crop": Frame.whole(60, 40).turned(3).crop([4, 8, 24, 38], (20, 30)),
    "half-turn": Frame.whole(60, 40).turned(2),
}


@pytest.mark.parametrize("name", FRAMES)
def test_every_rendered_pixel_is_the_source_pixel_its_centre_maps_to(name):
    frame, source = FRAMES[name], _coded(60, 40)
    out = frame.render(source, Image.Resampling.NEAREST)
    assert out.size == frame.size
    rng = random.Random(0)
    for _ in range(300):
        u, v = rng.randrange(out.width), rng.randrange(out.height)
        [[x, y]] = frame.points_to_source([[u + 0.5, v + 0.5]])
        assert out.getpixel((u, v)) == (int(x), int(y), 0), (u, v, x, y)
        [[bu, bv]] = frame.points_from_source([[x, y]])
        assert bu == pytest.approx(u + 0.5) and bv == pytest.approx(v + 0.5)


def test_boxes_map_both_ways_and_stay_ordered_after_turns():
    frame = FRAMES["crop-turned"]  # 20 × 30: the 30 × 20 crop of (10, 5)-(40, 25) turned a quarter
    [box] = frame.boxes_to_source([[0, 0, 20, 30]])
    assert box == pytest.approx([10, 5, 40, 25])
    [[x1, y1, x2, y2]] = frame.boxes_to_source([[2, 3, 6, 9]])
    assert x1 < x2 and y1 < y2
    assert frame.boxes_from_source([[x1, y1, x2, y2]])[0] == pytest.approx([2, 3, 6, 9])


def test_a_crop_of_a_crop_is_one_frame_of_the_source():
    outer = Frame.whole(100, 100).crop([20, 20, 60, 60], (80, 80))  # 2× zoom
    inner = outer.crop([0, 0, 40, 40], (80, 80))  # its top-left quarter, 2× again
    assert inner.box == pytest.approx((20, 20, 40, 40)) and inner.size == (80, 80)


def test_quarter_turns_compose_and_bad_frames_fail():
    f = Frame.whole(60, 40)
    assert f.turned(1).turned(3) == f and f.turned(-1) == f.turned(3) and f.turned(1).size == (40, 60)
    for bad in (dict(box=(5, 0, 5, 10), size=(1, 1)), dict(box=(0, 0, 1, 1), size=(0, 1)),
                dict(box=(0, 0, 1, 1), size=(1, 1), turns=4)):
        with pytest.raises(ValueError):
            Frame(**bad)
