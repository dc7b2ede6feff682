"""Synthetic tasks: determinism, rotation labels, tight grounding boxes, target texts."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mmrl.datasets import synthetic
from mmrl.datasets.synthetic import COLOURS, make, random_target_text, target_text
from mmrl.registry import UnknownNameError


def _image(sample) -> Image.Image:
    (image,) = sample.media("image")
    return image


def _pixels(samples) -> list[bytes]:
    return [_image(s).tobytes() for s in samples]


@pytest.mark.parametrize("task", ["rotation", "grounding"])
def test_deterministic_per_index_and_split(task):
    a = make(task, 6, seed=3)
    assert _pixels(a) == _pixels(make(task, 6, seed=3))
    assert [s.answer for s in a] == [s.answer for s in make(task, 6, seed=3)]
    assert _pixels(make(task, 10, seed=3))[:6] == _pixels(a)  # sample i does not depend on n
    assert not set(_pixels(a)) & set(_pixels(make(task, 6, seed=3, split="eval")))
    assert _pixels(a) != _pixels(make(task, 6, seed=4))
    assert [s.id for s in a[:2]] == [f"{task}-train-000000", f"{task}-train-000001"]
    assert a[1].meta == {"generator": task, "seed": 3, "split": "train", "index": 1}


def test_samples_are_one_user_message_image_then_text():
    (s,) = make("rotation", 1, seed=0)
    (msg,) = s.messages
    assert msg["role"] == "user"
    assert [p["type"] for p in msg["content"]] == ["image", "text"]
    assert isinstance(msg["content"][0]["image"], Image.Image)
    assert msg["content"][1]["text"] == synthetic.ROTATION_PROMPT


def _undo(image: Image.Image, angle: str) -> Image.Image:
    """Turn a rotated puzzle back upright (the angle is counter-clockwise)."""
    return image.rotate(-int(angle)) if angle != "0" else image


def test_rotation_labels_and_the_four_rotations_differ():
    samples = make("rotation", 60, seed=0, size=40)
    assert {s.answer for s in samples} == set(synthetic.ANGLES)
    assert {s.task for s in samples} == {"puzzle/rotation"}
    for s in samples:
        image = _image(s)
        assert image.size == (40, 40)
        levels = np.unique(np.asarray(image))
        assert len(levels) == 2 and levels[0] <= 30 and levels[1] >= 200  # a light arrow on a dark canvas
        white = np.asarray(_undo(image, s.answer))[:, :, 0] >= 200  # [H, W] upright arrow mask
        widths = white.sum(axis=1)  # [H] white pixels per row
        rows = np.flatnonzero(widths)
        assert 0.4 * 40 - 2 <= len(rows) <= 0.9 * 40 + 2  # arrow height 40-90 % of the canvas
        assert np.argmax(widths) < 20  # the widest row (the head) is on top: the label is right
        turns = [np.rot90(white, k).tobytes() for k in range(4)]
        assert len(set(turns)) == 4  # the same arrow under the four rotations: pairwise different


def test_grounding_box_is_tight_around_the_target():
    width, height = 97, 61  # odd, non-square canvas
    for s in make("grounding", 40, seed=5, width=width, height=height):
        image = np.asarray(_image(s))  # [H, W, 3]
        assert image.shape == (height, width, 3)
        (box,), (label,) = s.answer["boxes"], s.answer["labels"]
        colour_name, shape = label.split()
        assert shape in synthetic.SHAPES and s.task == "grounding"
        assert s.messages[0]["content"][1]["text"].startswith(f"Locate the {label}.")
        x1, y1, x2, y2 = box  # x2, y2 exclusive
        assert all(isinstance(v, int) for v in box) and 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        hits = (image[y1:y2, x1:x2] == COLOURS[colour_name]).all(axis=2)  # [y2-y1, x2-x1]
        assert hits[0].any() and hits[-1].any() and hits[:, 0].any() and hits[:, -1].any()  # tight
        drawn = (image != synthetic.BACKGROUND).any(axis=2)  # [H, W] any shape pixel
        ring = np.zeros_like(drawn)  # the 1-px frame just outside the box, clipped to the image
        ring[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = True
        ring[y1:y2, x1:x2] = False
        assert not drawn[ring].any()
        assert drawn.sum() > drawn[y1:y2, x1:x2].sum()  # distractors are drawn elsewhere


def _shape_of(fill_ratio: float) -> str:
    """Classify a solid blob by the share of its box it fills (square 1, circle ~0.8, triangle ~0.5)."""
    return "square" if fill_ratio > 0.95 else "circle" if fill_ratio > 0.625 else "triangle"


def test_grounding_target_pair_is_unique_on_the_canvas():
    for s in make("grounding", 40, seed=9):
        image = np.asarray(_image(s))  # [H, W, 3]
        colour_name, shape = s.answer["labels"][0].split()
        blobs, _ = ndimage.label((image == COLOURS[colour_name]).all(axis=2))  # [H, W] component ids
        boxes = ndimage.find_objects(blobs)
        shapes = [_shape_of(float((blobs[sl] == k + 1).mean())) for k, sl in enumerate(boxes)]
        assert shapes.count(shape) == 1, (s.id, shapes)


def test_unknown_names_fail_with_a_suggestion():
    with pytest.raises(UnknownNameError, match="did you mean 'rotation'"):
        make("rotaton", 1, seed=0)
    with pytest.raises(TypeError, match="did you mean 'width'"):
        make("grounding", 1, seed=0, widht=50)
    with pytest.raises(ValueError, match="too small"):
        make("rotation", 1, seed=0, size=8)


class _Grid1000:
    """A stand-in Geometry: original pixels of a 112x84 image → [0, 1000) relative ints."""

    def from_original(self, boxes):
        scale = (1000 / 112, 1000 / 84, 1000 / 112, 1000 / 84)
        return [[round(v * s) for v, s in zip(box, scale)] for box in boxes]


def test_target_texts():
    rot = make("rotation", 4, seed=0)
    for s in rot:
        assert target_text(s) == f"<answer>{s.answer}</answer>"
    (g,) = make("grounding", 1, seed=0)
    x1, y1, x2, y2 = g.answer["boxes"][0]
    assert target_text(g) == f"<answer>[{x1}, {y1}, {x2}, {y2}]</answer>"
    (converted,) = _Grid1000().from_original([[x1, y1, x2, y2]])
    assert target_text(g, geometry=_Grid1000()) == "<answer>[{}, {}, {}, {}]</answer>".format(*converted)
    g.answer = {"boxes": [[1, 2, 3, 4], [5, 6, 7, 8]], "labels": ["a", "b"]}
    assert target_text(g) == "<answer>[[1, 2, 3, 4], [5, 6, 7, 8]]</answer>"


def test_random_target_texts_have_the_format_and_stay_inside():
    rng = random.Random(0)
    answers = {random_target_text(s, rng) for s in make("rotation", 40, seed=0)}
    assert answers == {f"<answer>{a}</answer>" for a in synthetic.ANGLES}
    for s in make("grounding", 20, seed=0):
        text = random_target_text(s, rng)
        match = re.fullmatch(r"<answer>\[(\d+), (\d+), (\d+), (\d+)\]</answer>", text)
        assert match, text
        x1, y1, x2, y2 = map(int, match.groups())
        assert 0 <= x1 < x2 <= 112 and 0 <= y1 < y2 <= 84
    (g,) = make("grounding", 1, seed=0)
    assert random_target_text(g, random.Random(7)) == random_target_text(g, random.Random(7))


def test_rotation_held_out_images_are_pixel_distinct_from_training():
    import hashlib

    digest = lambda s: hashlib.sha1(_image(s).tobytes()).hexdigest()  # noqa: E731
    train = {digest(s) for s in make("rotation", 2048, seed=0, split="train")}
    held_out = [digest(s) for s in make("rotation", 256, seed=1, split="eval")]
    assert len(set(held_out)) == 256 and not train & set(held_out)
