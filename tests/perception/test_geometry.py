"""Geometry: processed sizes against the real Qwen2-VL image processor, and conversions per convention."""

from __future__ import annotations

import doctest
import warnings

import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

import mmrl.perception.geometry as geometry_module
from mmrl.perception.geometry import CONVENTIONS, Geometry, convention_for, processed_size

SIZES = [(97, 61), (300, 41), (1000, 333), (61, 97), (57, 57), (1, 3)]


@pytest.fixture(scope="module", params=["torchvision", "pil", "fast_alias", "qwen3_patch16"])
def processor(request):
    kw = dict(min_pixels=56 * 56, max_pixels=224 * 224)
    if request.param == "torchvision":
        return Qwen2VLImageProcessor(**kw)
    if request.param == "pil":
        return Qwen2VLImageProcessorPil(**kw)
    if request.param == "fast_alias":  # deprecated name kept by transformers 5.x
        import transformers

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return transformers.Qwen2VLImageProcessorFast(**kw)
    return Qwen2VLImageProcessor(patch_size=16, merge_size=2, **kw)  # Qwen3-VL's settings


def _grid_size(ip, w: int, h: int) -> tuple[int, int]:
    out = ip(images=Image.new("RGB", (w, h), (120, 30, 200)), return_tensors="pt")
    _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    return gw * ip.patch_size, gh * ip.patch_size


@pytest.mark.parametrize("w,h", SIZES)
def test_processed_size_matches_processor_output(processor, w, h):
    geo = Geometry.for_image(processor, w, h, "qwen2_5_vl")
    assert (geo.proc_w, geo.proc_h) == _grid_size(processor, w, h)
    assert (geo.orig_w, geo.orig_h) == (w, h)


def test_processor_wrapper_and_subclass_are_understood():
    ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)

    class Wrapper:  # a ProcessorMixin exposes `.image_processor`
        image_processor = ip

    class MyIP(Qwen2VLImageProcessor):  # defined outside transformers: smart_resize found through the MRO
        pass

    assert processed_size(Wrapper(), 300, 41) == _grid_size(ip, 300, 41)
    sub = MyIP(min_pixels=56 * 56, max_pixels=224 * 224)
    assert processed_size(sub, 1000, 333) == _grid_size(ip, 1000, 333)


def test_processed_size_fallbacks():
    class Fixed:
        size = {"height": 224, "width": 336}

    assert processed_size(Fixed(), 97, 61) == (336, 224)
    assert processed_size(object(), 97, 61) == (97, 61)


def test_identity_and_convention_for():
    g = Geometry.identity(97, 61)
    assert g == Geometry(97, 61, 97, 61, "pixel")
    assert g.to_original([[1.5, 2, 3, 4]]) == [[1.5, 2.0, 3.0, 4.0]]
    assert g.from_original([[1.5, 2.49, 3, 60.5]]) == [[2, 2, 3, 61]]
    assert convention_for("qwen2_vl") == "qwen2_vl"
    assert convention_for("qwen2_5_vl") == "qwen2_5_vl"
    assert convention_for("qwen3_vl") == "qwen3_vl"
    assert convention_for("llava") == "pixel"


def test_validation():
    with pytest.raises(ValueError, match="convention"):
        Geometry(10, 10, 10, 10, "qwen25")
    with pytest.raises(ValueError, match="orig_w"):
        Geometry(0, 10, 10, 10, "pixel")
    with pytest.raises(ValueError, match="4 coordinates"):
        Geometry.identity(10, 10).to_original([[1, 2, 3]])
    with pytest.raises(ValueError, match="non-finite"):
        Geometry.identity(10, 10).from_original([[1, 2, 3, float("nan")]])


def test_hand_worked_conversions():
    # 97x61 image resized to 84x56 by Qwen2-VL with max_pixels=224*224
    q25 = Geometry(97, 61, 84, 56, "qwen2_5_vl")
    assert q25.to_original([[42, 28, 84, 56]])[0] == pytest.approx([48.5, 30.5, 97, 61])
    assert q25.from_original([[48.5, 30.5, 97, 61]]) == [[42, 28, 84, 56]]
    q2 = Geometry(97, 61, 84, 56, "qwen2_vl")
    assert q2.to_original([[500, 500, 999, 1000]])[0] == pytest.approx([48.5, 30.5, 96.903, 61.0])
    assert q2.from_original([[48.5, 30.5, 97, 61]]) == [[500, 500, 999, 999]]  # [0, 1000): clamped to 999
    q3 = Geometry(97, 61, 84, 56, "qwen3_vl")
    assert q3.from_original([[-5, 30.5, 97, 70]]) == [[0, 500, 1000, 1000]]  # [0, 1000]: clamped
    nrm = Geometry(97, 61, 84, 56, "norm")
    assert nrm.to_original([[0.5, 0.5, 1, 1]])[0] == pytest.approx([48.5, 30.5, 97, 61])
    assert nrm.from_original([[48.5, 30.5, 200, 61]]) == [[0.5, 0.5, 1.0, 1.0]]
    assert q2.points_to_original([[500, 1000]])[0] == pytest.approx([48.5, 61.0])
    assert q25.points_from_original([[48.5, 30.5]]) == [[42, 28]]
    assert q25.to_original([[2000, -10, 3, 4]])[0][0] > 97  # to_original never clamps


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("w,h", SIZES)
def test_round_trip_every_convention(convention, w, h):
    ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    geo = Geometry.for_image(ip, w, h, convention)
    boxes = [[0.0, 0.0, w * 0.37, h * 0.81], [w * 0.1, h * 0.2, float(w), float(h)], [w / 3, h / 7, w / 2, h / 2]]
    back = geo.to_original(geo.from_original(boxes))
    # one quantisation step of the model's grid, in original pixels
    sx, sy = {
        "qwen2_vl": (w / 1000, h / 1000),
        "qwen3_vl": (w / 1000, h / 1000),
        "qwen2_5_vl": (w / geo.proc_w, h / geo.proc_h),
        "pixel": (1.0, 1.0),
        "norm": (w * 1e-6, h * 1e-6),
    }[convention]
    for b0, b1 in zip(boxes, back):
        for j, (u, v) in enumerate(zip(b0, b1)):
            step = sx if j % 2 == 0 else sy
            assert abs(u - v) <= step + 1e-9, (convention, b0, b1)
    pts = [[w / 2, h / 3]]
    assert geo.points_to_original(geo.points_from_original(pts))[0] == pytest.approx(pts[0], abs=max(sx, sy) + 1e-9)


@pytest.mark.parametrize("convention", ["qwen2_vl", "qwen3_vl", "norm"])
def test_relative_from_original_stays_in_range(convention):
    geo = Geometry(1000, 333, 364, 112, convention)
    hi = {"qwen2_vl": 999, "qwen3_vl": 1000, "norm": 1.0}[convention]
    for row in geo.from_original([[-50, -1, 5000, 334], [0, 0, 1000, 333]]):
        assert all(0 <= v <= hi for v in row)


def test_doctests():
    assert doctest.testmod(geometry_module).failed == 0
