"""The `zoom` synthetic task (`mmrl.datasets.zoom`): determinism, the marker's box in its region, the arrow per angle,
the fixed-colour tags, distractors, option checks, target texts, and a sample through the real tiny processor."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from mmrl.datasets.synthetic import TARGETS, make, random_target_text, target_text
from mmrl.datasets.zoom import ANGLES, ARROW, BACKGROUND, DISTRACTORS, MARKER, TAG_COLOURS, arrow_marker, tag_box
from mmrl.rewards import get

_TURN = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _image(sample) -> Image.Image:
    (image,) = sample.media("image")
    return image


def _cell(q: int, grid: int, size: int) -> tuple[float, float, float, float]:
    """Region q as the `region` tool cuts it: its exact share of the canvas."""
    row, col = divmod(q - 1, grid)
    return col * size / grid, row * size / grid, (col + 1) * size / grid, (row + 1) * size / grid


def test_deterministic_from_the_seed_and_split():
    a = make("zoom", 6, seed=3)
    same = make("zoom", 6, seed=3)
    assert [_image(s).tobytes() for s in a] == [_image(s).tobytes() for s in same]
    assert [s.answer for s in a] == [s.answer for s in same]
    assert [_image(s).tobytes() for s in make("zoom", 9, seed=3)][:6] == [_image(s).tobytes() for s in a]
    others = {_image(s).tobytes() for s in make("zoom", 6, seed=4) + make("zoom", 6, seed=3, split="eval")}
    assert not others & {_image(s).tobytes() for s in a}
    assert a[0].task == "zoom" and a[0].id == "zoom-train-000000"


def test_the_sample_its_answer_and_prompt():
    [s] = make("zoom", 1, seed=0)
    assert [p["type"] for p in s.messages[0]["content"]] == ["image", "text"]
    assert _image(s).size == (224, 224) and _image(s).mode == "RGB"
    gt = s.answer
    assert set(gt) == {"angle", "region", "boxes", "grid", "size"} and gt["grid"] == 2 and gt["size"] == [224, 224]
    assert gt["angle"] in ANGLES and 1 <= gt["region"] <= 4 and len(gt["boxes"]) == 1
    text = s.messages[0]["content"][1]["text"]
    for words in ("numbered 1 to 4", "<region>Q</region>", "<answer></answer>", "counter-clockwise", "0 = up"):
        assert words in text


@pytest.mark.parametrize("size, grid", [(224, 2), (100, 3), (225, 4), (448, 2)])
def test_the_marker_box_lies_in_the_answer_region_and_holds_only_the_marker(size, grid):
    for s in make("zoom", 12, seed=1, size=size, grid=grid):
        gt = s.answer
        x1, y1, x2, y2 = gt["boxes"][0]
        cx1, cy1, cx2, cy2 = _cell(gt["region"], grid, size)
        assert cx1 <= x1 < x2 <= cx2 and cy1 <= y1 < y2 <= cy2, (gt, (cx1, cy1, cx2, cy2))
        side = x2 - x1
        r = size // grid
        assert y2 - y1 == side and 0.6 * (r - 1) <= side <= 0.72 * (r + 1)
        pixels = np.asarray(_image(s))
        crop = pixels[y1:y2, x1:x2].reshape(-1, 3)
        colours = {tuple(int(c) for c in p) for p in np.unique(crop, axis=0)}
        assert colours == {MARKER, ARROW}
        border = np.concatenate([pixels[y1, x1:x2], pixels[y2 - 1, x1:x2], pixels[y1:y2, x1], pixels[y1:y2, x2 - 1]])
        assert (border == MARKER).all(axis=1).mean() > 0.8  # the arrow stays inside: mostly red all round
        if x2 < size:
            assert not (pixels[y1:y2, x2] == MARKER).all(axis=1).any()  # the box is tight


def test_the_four_angles_are_four_pictures_a_quarter_turn_apart():
    markers = {a: np.asarray(arrow_marker(60, 40, head=0.4, width=0.6, shaft=0.2, angle=a)) for a in ANGLES}
    assert len({m.tobytes() for m in markers.values()}) == 4
    for a in ANGLES:
        turned = np.rot90(markers[a])  # numpy's rot90 is counter-clockwise, as the angles
        assert np.array_equal(turned, markers[(a + 90) % 360])
    up = markers[0]
    white = (up == ARROW).all(axis=2)
    rows = white.sum(axis=1)
    assert rows.argmax() < 30  # the head (the widest row) is at the top: at 0 the arrow points up
    xs = np.nonzero(white.any(axis=0))[0]
    assert abs(xs.min() + xs.max() - 59) <= 1  # centred on its axis (up to a pixel of rasterisation)


def test_each_sample_s_arrow_points_as_its_angle_says_and_is_large():
    seen = set()
    for s in make("zoom", 24, seed=2):
        gt = s.answer
        x1, y1, x2, y2 = gt["boxes"][0]
        crop = _image(s).crop((x1, y1, x2, y2))
        if gt["angle"]:  # turn it back to pointing up
            crop = crop.transpose(_TURN[360 - gt["angle"]])
        white = (np.asarray(crop) == ARROW).all(axis=2)
        ys, xs = np.nonzero(white)
        assert white.sum(axis=1).argmax() < (y2 - y1) / 2, gt  # the head is at the top
        assert abs((xs.min() + xs.max()) - (x2 - x1 - 1)) <= 1  # centred across
        length = ys.max() - ys.min() + 1
        assert length >= 0.4 * 112 - 2, (gt, length)  # large: at least 0.4 of the region
        seen.add(gt["angle"])
    assert seen == set(ANGLES)


def test_tags_sit_in_each_region_s_outer_corner_in_fixed_colours():
    samples = make("zoom", 5, seed=7)
    assert tag_box(1, 2, 224) == (0, 0, 28, 28) and tag_box(4, 2, 224) == (196, 196, 224, 224)
    assert tag_box(2, 2, 224) == (196, 0, 224, 28) and tag_box(3, 2, 224) == (0, 196, 28, 224)
    for s in samples:
        pixels = np.asarray(_image(s))
        for q in range(1, 5):
            x0, y0, x1, y1 = tag_box(q, 2, 224)
            assert (pixels[y0:y1, x0:x1] == TAG_COLOURS[q - 1]).all(), q
    assert len(set(TAG_COLOURS)) == len(TAG_COLOURS)
    assert not set(TAG_COLOURS) & {MARKER, ARROW, BACKGROUND, *DISTRACTORS}
    plain = make("zoom", 5, seed=7, tags=False)
    for s, t in zip(plain, samples):
        pixels = np.asarray(_image(s))
        assert not any((pixels == c).all(axis=2).any() for c in TAG_COLOURS[:4])
        assert s.answer == t.answer  # tags change nothing else
        assert "tag" not in s.messages[0]["content"][1]["text"]


def test_distractors_follow_their_probability():
    def squares(sample) -> int:
        pixels = np.asarray(_image(sample))
        return sum(int(any((pixels[int(c[1]):int(c[3]), int(c[0]):int(c[2])] == d).all(axis=2).any()
                           for d in DISTRACTORS)) for c in (_cell(q, 2, 224) for q in range(1, 5)))

    assert all(squares(s) == 0 for s in make("zoom", 8, seed=0, distractor_p=0.0))
    assert all(squares(s) == 3 for s in make("zoom", 8, seed=0, distractor_p=1.0))
    counts = [squares(s) for s in make("zoom", 60, seed=0)]
    assert 0.5 < sum(counts) / (3 * len(counts)) < 0.85  # about 0.67


@pytest.mark.parametrize("kwargs, says", [
    ({"grid": 0}, "grid must be an int >= 1"),
    ({"grid": 2.0}, "grid must be an int >= 1"),
    ({"grid": 5}, "grid must be <= 4 with tags"),
    ({"size": 60}, "size // grid >= 32"),
    ({"size": "224"}, "size must be an int"),
    ({"arrow": (0.5, 0.4)}, "arrow must be a pair"),
    ({"arrow": (0.4, 0.8)}, "it must fit inside the marker"),
    ({"arrow": 0.5}, "arrow must be a pair"),
    ({"distractor_p": 1.5}, "distractor_p must be a probability"),
    ({"tags": "yes"}, "tags must be true or false"),
])
def test_options_are_checked_with_clear_errors(kwargs, says):
    with pytest.raises(ValueError, match=says):
        make("zoom", 1, seed=0, **kwargs)


def test_an_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match="did you mean 'grid'"):
        make("zoom", 1, seed=0, gird=3)
    assert len(make("zoom", 2, seed=0, grid=5, tags=False)) == 2  # more regions without tags


def test_targets_are_the_answer_turn_and_the_accuracy_reward_scores_them():
    samples = make("zoom", 8, seed=5)
    targets = [target_text(s) for s in samples]
    assert targets == [f"<answer>{s.answer['angle']}</answer>" for s in samples]
    assert get("rotation_exact")(targets, answer=[s.answer for s in samples]) == [1.0] * 8
    rng = random.Random(0)
    randoms = {random_target_text(samples[0], rng) for _ in range(40)}
    assert randoms == {f"<answer>{a}</answer>" for a in ANGLES}


def test_turns_are_the_region_call_then_the_answer():
    fmt = TARGETS.get("zoom")
    for s in make("zoom", 6, seed=5, grid=3):
        assert fmt.turns(s, None) == [f"<region>{s.answer['region']}</region>", target_text(s)]
    s = make("zoom", 1, seed=5, grid=3)[0]
    rng = random.Random(1)
    drawn = [fmt.turns(s, rng) for _ in range(200)]
    assert {t[0] for t in drawn} == {f"<region>{q}</region>" for q in range(1, 10)}
    assert {t[1] for t in drawn} == {f"<answer>{a}</answer>" for a in ANGLES}


def test_a_sample_goes_through_the_tiny_zoo_processor(zoo_cache):
    from mmrl.config import ModelConfig
    from mmrl.model.policy import Policy

    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    prompt = policy.encode(make("zoom", 1, seed=0)[0])
    grid = prompt.tensors["image_grid_thw"]
    assert grid.shape == (1, 3) and int(grid.prod()) > 0
    image_tokens = int((prompt.tensors["input_ids"] == policy.hf.config.image_token_id).sum())
    assert image_tokens == int(grid.prod()) // 4  # 2 x 2 patches merge into one token
    [geometry] = prompt.geometry
    assert (geometry.orig_w, geometry.orig_h) == (224, 224)
