"""Synthetic tasks: determinism, rotation labels, tight grounding boxes, target texts."""

from __future__ import annotations

import random
import re
from itertools import pairwise

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


# ------------------------------------------------------------------------------------------- new tasks


def test_grounding_defaults_are_unchanged():
    """Recorded answers of the default grounding task (drawn before the `targets` / `distractors` options)."""
    assert [s.answer for s in make("grounding", 3, seed=0)] == [
        {"boxes": [[62, 14, 76, 28]], "labels": ["blue triangle"]},
        {"boxes": [[43, 43, 64, 64]], "labels": ["blue circle"]},
        {"boxes": [[4, 37, 26, 59]], "labels": ["blue circle"]},
    ]


def _blobs(image: np.ndarray) -> list[tuple[str, str, list[int], int]]:
    """Every drawn shape, measured: (colour, shape, tight box [x1, y1, x2, y2) , pixel count)."""
    found = []
    for name, rgb in COLOURS.items():
        labels, _ = ndimage.label((image == rgb).all(axis=2))  # [H, W] component ids
        for k, sl in enumerate(ndimage.find_objects(labels)):
            blob = labels[sl] == k + 1
            box = [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]
            found.append((name, _shape_of(float(blob.mean())), box, int(blob.sum())))
    return found


def test_grounding_all_finds_every_match_and_salience_is_the_pixel_share():
    for s in make("grounding", 60, seed=2, targets="all", max_targets=4, distractors=(0, 2), salience=True):
        text = s.messages[0]["content"][1]["text"]
        query = re.match(r"Locate every (.+?)\. ", text).group(1)  # "red shape" or "circle"
        blobs = _blobs(np.asarray(_image(s)))
        by_colour = query.endswith(" shape")
        hits = sorted((box[1], box[0], box, f"{c} {sh}", n) for c, sh, box, n in blobs
                      if (c == query.split()[0] if by_colour else sh == query))
        assert 1 <= len(hits) <= 4 and 0 <= len(blobs) - len(hits) <= 2
        assert s.answer["boxes"] == [h[2] for h in hits]  # every match, in reading order, tight
        assert s.answer["labels"] == [h[3] for h in hits]
        total = sum(h[4] for h in hits)
        assert s.answer["salience"] == pytest.approx([h[4] / total for h in hits], abs=1e-6)


@pytest.mark.parametrize("kind", ["pair", "shape"])
def test_counting_answer_is_the_number_of_drawn_shapes_of_the_kind(kind):
    samples = make("counting", 60, seed=1, kind=kind, max_count=5, distractors=(1, 4))
    assert {s.answer["count"] for s in samples} == set(range(6)) and {s.task for s in samples} == {"counting"}
    for s in samples:
        text = s.messages[0]["content"][1]["text"]
        words = re.match(r"How many (.+?)s are there", text).group(1).split()  # ["red", "circle"] / ["circle"]
        assert len(words) == (2 if kind == "pair" else 1)
        blobs = _blobs(np.asarray(_image(s)))
        n = sum(sh == words[-1] and (len(words) == 1 or c == words[0]) for c, sh, _, _ in blobs)
        assert n == s.answer["count"] and 1 <= len(blobs) - n <= 4
        boxes = [b for _, _, b, _ in blobs]  # shapes never touch: their boxes are disjoint
        assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1] for i, a in enumerate(boxes)
                   for b in boxes[i + 1:])


def test_counting_that_cannot_be_placed_is_a_clear_error():
    with pytest.raises(ValueError, match="counting: cannot place"):
        make("counting", 1, seed=0, width=24, height=24, distractors=(40, 40))
    with pytest.raises(ValueError, match="distractors"):
        make("counting", 1, seed=0, distractors=(3, 1))


@pytest.mark.parametrize("label", ["shape", "colour", "both"])
def test_classify_label_is_the_drawn_shape(label):
    samples = make("classify", 40, seed=4, label=label)
    for s, same in zip(samples, make("classify", 40, seed=4)):
        assert _pixels([s]) == _pixels([same])  # the picture does not depend on what is asked
        ((colour, shape, _, _),) = _blobs(np.asarray(_image(s)))  # exactly one shape
        truth = {"shape": shape, "colour": colour, "both": f"{colour} {shape}"}[label]
        assert s.answer["label"] == truth and s.task == "classification"
        assert s.answer["synonyms"] == ([] if label == "colour" or shape != "circle" else
                                        [f"{colour} disc", f"{colour} disk"] if label == "both" else ["disc", "disk"])
    if label != "both":  # every class occurs
        assert len({s.answer["label"] for s in samples}) == {"shape": 3, "colour": 4}[label]


def test_classify_multiple_choice():
    for s in make("classify", 20, seed=0, label="both", choices=True):
        ((colour, shape, _, _),) = _blobs(np.asarray(_image(s)))
        gt = s.answer
        assert len(gt["options"]) == 4 and len(set(gt["options"])) == 4
        assert gt["options"]["ABCD".index(gt["choice"])] == f"{colour} {shape}"
        assert s.messages[0]["content"][1]["text"].splitlines()[1:5] == [
            f"{L}. {o}" for L, o in zip("ABCD", gt["options"])]


def _bar_length(frame, background: np.ndarray) -> tuple[int, int]:
    """(longest horizontal run, longest vertical run) of pixels clearly off the background: the bar's extents."""
    mask = (np.abs(np.asarray(frame, dtype=float) - background).max(axis=2) > 60)  # [H, W]
    return int(mask.sum(axis=1).max()), int(mask.sum(axis=0).max())


def test_frame_order_in_memory_clip():
    from mmrl.perception.video import Clip

    for s in make("frame_order", 30, seed=0, frames=5):
        (clip,) = s.media("video")
        assert isinstance(clip, Clip) and len(clip.frames) == 5 and clip.fps == 2.0 and s.task == "temporal/frame_order"
        assert clip.timestamps == [0.0, 0.5, 1.0, 1.5, 2.0]
        order = s.answer["order"]
        assert sorted(order) == [1, 2, 3, 4, 5] and order != [1, 2, 3, 4, 5]  # shown shuffled, never in order
        # [3] the darkest corner: the bar never reaches the far edge, and every bar colour is brighter
        bg = min((np.asarray(clip.frames[0])[y, x].astype(float) for y in (0, -1) for x in (0, -1)), key=sum)
        extents = [_bar_length(clip.frames[k - 1], bg) for k in order]  # in true time order
        axis = 0 if len({e[0] for e in extents}) > 1 else 1  # the growing side; the other is the thickness
        lengths = [e[axis] for e in extents]
        steps = {b - a for a, b in pairwise(lengths)}
        assert len(steps) == 1 and steps.pop() >= 3  # grows by one constant step per frame
        assert len({e[1 - axis] for e in extents}) == 1


def test_frame_order_video_file_decodes_in_order(tmp_path):
    """The MPEG-4 file `mmrl data make` writes (write_jsonl, as for `event`), decoded and unshuffled."""
    import json

    from mmrl.datasets.jsonl import write_jsonl
    from mmrl.perception.video import load_video

    samples = make("frame_order", 12, seed=1, frames=4, size=40)
    path = write_jsonl(samples, tmp_path / "fo.jsonl")
    for s, line in zip(samples, path.read_text().splitlines()):
        (part,) = [p for p in json.loads(line)["messages"][0]["content"] if p["type"] == "video"]
        assert part["video"].endswith(".mp4")
        decoded = load_video(tmp_path / part["video"], sample_id=s.id, fps=None)
        assert len(decoded.frames) == 4
        shown = s.media("video")[0].frames
        bg = min((np.asarray(shown[0])[y, x].astype(float) for y in (0, -1) for x in (0, -1)), key=sum)
        want = [_bar_length(f, bg) for f in shown]
        got = [_bar_length(f, bg) for f in decoded.frames]  # lossy: edges blur by a pixel or so
        assert all(abs(a - b) <= 2 for w, g in zip(want, got) for a, b in zip(w, g)), (s.id, want, got)
        axis = 0 if len({w[0] for w in want}) > 1 else 1
        lengths = [got[k - 1][axis] for k in s.answer["order"]]  # decoded frames unshuffled by the answer
        assert all(b > a for a, b in pairwise(lengths)), (s.id, lengths)


def test_frame_order_bad_options():
    with pytest.raises(ValueError, match="too small"):
        make("frame_order", 1, seed=0, frames=20, size=40)
    with pytest.raises(ValueError, match="frames >= 3"):
        make("frame_order", 1, seed=0, frames=2)


REWARDED = [  # (task, options, reward): the target text scores 1, a random one less on average
    ("grounding", {}, "iou_sq"),
    ("grounding", {"targets": "all"}, "det_f1"),
    ("grounding", {"targets": "all", "salience": True}, "salience_iou"),
    ("counting", {}, "count_exact"),
    ("classify", {}, "cls_label"),
    ("classify", {"label": "both"}, "cls_label"),
    ("classify", {"label": "colour", "choices": True}, "mc"),
    ("frame_order", {}, "frame_order"),
]


@pytest.mark.parametrize("task,options,reward", REWARDED)
def test_targets_score_one_and_random_targets_less(task, options, reward):
    from mmrl.rewards import registry

    fn = registry.get(reward)
    samples = make(task, 40, seed=0, **options)
    answers = [s.answer for s in samples]
    assert fn([target_text(s) for s in samples], answer=answers) == [1.0] * 40
    rng = random.Random(0)
    scores = fn([random_target_text(s, rng) for s in samples], answer=answers)
    assert np.mean(scores) < 0.75


def test_frame_order_reversed_scores_zero():
    from mmrl.rewards.puzzles import frame_order

    for s in make("frame_order", 10, seed=0, frames=6):
        reversed_text = "<answer>{}</answer>".format(", ".join(map(str, s.answer["order"][::-1])))
        assert frame_order([reversed_text], answer=[s.answer]) == [0.0]


@pytest.mark.parametrize("task", ["counting", "classify", "frame_order"])
def test_new_tasks_are_deterministic(task):
    def pixels(samples):
        return [b"".join(f.tobytes() for f in (s.media("image") or s.media("video")[0].frames)) for s in samples]

    a = make(task, 5, seed=3)
    assert pixels(a) == pixels(make(task, 5, seed=3)) and [s.answer for s in a] == [s.answer for s in make(task, 5, seed=3)]
    assert pixels(make(task, 8, seed=3))[:5] == pixels(a)
    assert pixels(a) != pixels(make(task, 5, seed=3, split="eval"))
