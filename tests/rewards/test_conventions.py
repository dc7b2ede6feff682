"""Box conventions end to end against each family's real processor (as the zoo saves it) on odd-sized images:
the processed size equals the processor's own `image_grid_thw`, and a box written the way that family writes it
scores IoU 1 once `Geometry` maps it back to original pixels."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from transformers import AutoProcessor

from mmrl.model import zoo
from mmrl.perception.geometry import Geometry, convention_for
from mmrl.rewards import get

SIZES = [(333, 97), (97, 333), (61, 61), (251, 149)]
GT = [[30.0, 10.0, 60.0, 50.0], [5.0, 40.0, 57.0, 59.0]]  # original pixels, inside every size above


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def family_processor(request, zoo_cache):
    processor = AutoProcessor.from_pretrained(zoo.resolve(f"zoo:{request.param}"))
    return request.param, processor


def _grid(processor, image: Image.Image) -> tuple[int, int]:
    """(width, height) of the resized image, from the processor's own output."""
    out = processor(text=[f"look {processor.image_token}"], images=[image], return_tensors="pt")
    _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    patch = processor.image_processor.patch_size
    return gw * patch, gh * patch


def _as_model_writes(family: str, box: list[float], w: int, h: int, pw: int, ph: int) -> list[float]:
    """Hand-written per family (not through Geometry): what a trained model of that family emits."""
    x1, y1, x2, y2 = box
    if family == "qwen2_vl":  # integers in [0, 1000) relative to the image
        return [round(x1 / w * 1000), round(y1 / h * 1000), round(x2 / w * 1000), round(y2 / h * 1000)]
    if family == "qwen2_5_vl":  # absolute pixels of the resized image
        return [x1 * pw / w, y1 * ph / h, x2 * pw / w, y2 * ph / h]
    return [x1 / w * 1000, y1 / h * 1000, x2 / w * 1000, y2 / h * 1000]  # qwen3_vl: [0, 1000] relative


@pytest.mark.parametrize("w,h", SIZES)
def test_family_convention_against_its_processor(family_processor, w, h):
    family, processor = family_processor
    image = Image.new("RGB", (w, h), (200, 40, 90))
    convention = convention_for(family)
    geo = Geometry.for_image(processor, w, h, convention)
    pw, ph = _grid(processor, image)
    assert (geo.proc_w, geo.proc_h) == (pw, ph)
    objs = [{"bbox_2d": _as_model_writes(family, b, w, h, pw, ph), "label": "thing"} for b in GT]
    text = f"<think>two things</think><answer>{json.dumps(objs)}</answer>"
    answer = {"boxes": GT}
    tolerance = 0.9 if family == "qwen2_vl" else 0.999  # qwen2_vl rounds to 1/1000 of the side
    for name in ("iou", "det_f1", "union_iou"):
        [value] = get(name)([text], answer=[answer], geometry=[geo])
        assert value >= tolerance, (family, name, value)
    resized = abs(pw / w - 1) > 0.15 or abs(ph / h - 1) > 0.15
    if family != "qwen2_5_vl" or resized:  # the classic mistake: reading the model's numbers as original pixels
        wrong = Geometry(w, h, pw, ph, "pixel")
        [confused] = get("det_f1")([text], answer=[answer], geometry=[wrong])
        assert confused < 0.5
