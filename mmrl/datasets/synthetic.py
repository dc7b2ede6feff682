"""Synthetic, label-free or self-labelled tasks drawn on the spot, and their SFT target texts.

`make(task, n, seed=..., split=...)` draws samples whose images are PIL objects held in the message parts.
Sample i depends only on (task, seed, split, i): its generator is
`random.Random(f"{task}/{seed}/{split}/{i}")` (`random` hashes a string seed with SHA-512, never with
Python's salted `hash()`), so different splits draw different images and a subset or a restart draws
the same samples.

Target texts (`target_text`, `random_target_text`) are registered per `Sample.task` in `TARGETS`, so they also
serve loaded data sets of the same task (e.g. any "grounding" JSONL).
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image, ImageDraw

from mmrl.datasets import mcq
from mmrl.datasets.sample import Sample
from mmrl.registry import Registry, closest


@dataclass(frozen=True)
class SyntheticTask:
    """A generator: `draw(rng, **kwargs) -> (image or [frames], prompt, answer)`; `task` is the samples'
    `Sample.task`. A list of images becomes that many image parts, in order (a multi-frame prompt)."""

    task: str
    draw: Callable[..., tuple[Image.Image, str, Any]]


@dataclass(frozen=True)
class TargetFormat:
    """SFT target texts for one `Sample.task`: the true answer, or a random one in the same format."""

    target: Callable[..., str]  # (sample, geometry=None) -> str
    random_target: Callable[..., str]  # (sample, rng, geometry=None) -> str


TASKS: Registry[SyntheticTask] = Registry("synthetic task")
TARGETS: Registry[TargetFormat] = Registry("target format")


def make(task: str, n: int, *, seed: int, split: str = "train", **kwargs: Any) -> list[Sample]:
    """Draw `n` samples of a registered task; ids are `f"{task}-{split}-{i:06d}"`; kwargs go to the drawer."""
    spec = TASKS.get(task)
    _check_kwargs(task, spec.draw, kwargs)
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    samples = []
    for i in range(n):
        rng = random.Random(f"{task}/{seed}/{split}/{i}")
        image, prompt, answer = spec.draw(rng, **kwargs)
        samples.append(
            Sample(
                id=f"{task}-{split}-{i:06d}",
                messages=[{"role": "user", "content": [
                    *(_media_parts(image)),
                    {"type": "text", "text": prompt},
                ]}],
                answer=answer,
                task=spec.task,
                meta={"generator": task, "seed": seed, "split": split, "index": i},
            )
        )
    return samples


def _media_parts(media: Any) -> list[dict]:
    """An image, a list of frames (one image part each) or a `Clip` (one video part)."""
    from mmrl.perception.video import Clip

    if isinstance(media, Clip):
        return [{"type": "video", "video": media}]
    return [{"type": "image", "image": im} for im in (media if isinstance(media, list) else [media])]


def _check_kwargs(task: str, draw: Callable, kwargs: dict) -> None:
    """Unknown keyword arguments fail with the valid ones and a did-you-mean."""
    valid = [p for p in inspect.signature(draw).parameters if p != "rng"]
    for key in kwargs:
        if key not in valid:
            hint = closest(key, valid)
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise TypeError(
                f"synthetic task {task!r} has no option {key!r}{extra} (valid: {', '.join(valid)})"
            )


def target_text(sample: Sample, geometry: Any = None) -> str:
    """The SFT target for `sample`, dispatched on `sample.task`; boxes in `geometry`'s convention if given."""
    return TARGETS.get(sample.task).target(sample, geometry)


def random_target_text(sample: Sample, rng: random.Random, geometry: Any = None) -> str:
    """A target in the right format but with a random label (format-only SFT warm start)."""
    return TARGETS.get(sample.task).random_target(sample, rng, geometry)


# ------------------------------------------------------------------------------------------- rotation

ANGLES = ("0", "90", "180", "270")
ROTATION_PROMPT = (
    "In which direction has the arrow been rotated? Answer with 0, 90, 180 or 270 inside <answer></answer>."
)
_TRANSPOSE = {
    "0": None,
    "90": Image.Transpose.ROTATE_90,
    "180": Image.Transpose.ROTATE_180,
    "270": Image.Transpose.ROTATE_270,
}


def _draw_rotation(
    rng: random.Random, size: int = 56, prompt: str | None = None, choices: bool = False
) -> tuple[Image.Image, str, Any]:
    """The label-free rotation puzzle of Puzzle Curriculum GRPO (PC-GRPO) and SSL4RL.

    A light up-pointing arrow (shaft + triangular head, 40-90 % of the canvas tall, grey level 200-255) is
    drawn centred on a dark (grey level 0-30) `size` x `size` canvas and turned by an angle drawn uniformly
    from {0, 90, 180, 270} degrees,
    *counter-clockwise* (PIL's convention: at "90" the arrow points left). The answer is the angle as a
    string; `prompt` replaces the default question (`ROTATION_PROMPT`). With `choices`, the question is multiple
    choice over the four angles in a random order (`mmrl.datasets.mcq`), and the answer is
    `{"choice": letter, "options": [...], "question": ...}`. The arrow is mirror-symmetric but has no rotational symmetry, so the four answers are
    distinguishable; rotations are exact pixel transposes, so no interpolation hints at the angle.
    """
    if size < 16:
        raise ValueError(f"rotation: size={size} is too small (need >= 16 px)")
    angle = rng.choice(ANGLES)
    length = rng.uniform(0.4, 0.9) * size  # arrow height
    head_h = rng.uniform(0.35, 0.5) * length  # triangular head height
    head_w = rng.uniform(0.5, 0.7) * length  # head base width
    shaft_w = rng.uniform(0.15, 0.25) * length
    # Random grey levels make held-out images pixel-distinct from training ones (shapes alone rasterise to
    # only a few thousand images); position jitter was tried too and slowed learning a lot, so none.
    fg, bg = rng.randint(200, 255), rng.randint(0, 30)
    c = cx = (size - 1) / 2  # canvas centre in pixel-centre coordinates
    top, bottom, neck = c - length / 2, c + length / 2, c - length / 2 + head_h
    arrow = [  # 7-point outline, clockwise from the tip
        (cx, top), (cx + head_w / 2, neck), (cx + shaft_w / 2, neck), (cx + shaft_w / 2, bottom),
        (cx - shaft_w / 2, bottom), (cx - shaft_w / 2, neck), (cx - head_w / 2, neck),
    ]
    image = Image.new("RGB", (size, size), (bg, bg, bg))
    ImageDraw.Draw(image).polygon(arrow, fill=(fg, fg, fg))
    if _TRANSPOSE[angle] is not None:
        image = image.transpose(_TRANSPOSE[angle])
    if choices:
        options = list(ANGLES)
        rng.shuffle(options)
        question = prompt or "By how many degrees (counter-clockwise) has the arrow been rotated?"
        letter = "ABCD"[options.index(angle)]
        return image, mcq.render(question, options), {"choice": letter, "options": options, "question": question}
    return image, prompt or ROTATION_PROMPT, angle


def _rotation_target(sample: Sample, geometry: Any = None) -> str:
    gt = sample.answer
    return f"<answer>{gt['choice'] if isinstance(gt, dict) else gt}</answer>"


def _rotation_random_target(sample: Sample, rng: random.Random, geometry: Any = None) -> str:
    return f"<answer>{rng.choice('ABCD' if isinstance(sample.answer, dict) else ANGLES)}</answer>"


TASKS.register("rotation")(SyntheticTask(task="puzzle/rotation", draw=_draw_rotation))
TARGETS.register("puzzle/rotation")(TargetFormat(_rotation_target, _rotation_random_target))


def _jigsaw_target(sample: Sample, geometry: Any = None) -> str:
    return f"<answer>{sample.answer['order']}</answer>"


def _jigsaw_random_target(sample: Sample, rng: random.Random, geometry: Any = None) -> str:
    order = list(range(len(sample.answer["order"])))
    rng.shuffle(order)
    return f"<answer>{order}</answer>"


# jigsaw puzzles come from folders of images (mmrl.datasets.folder); their SFT targets live with the others
TARGETS.register("puzzle/jigsaw")(TargetFormat(_jigsaw_target, _jigsaw_random_target))


# ------------------------------------------------------------------------------------------- grounding

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (128, 128, 128)
GAP = 2  # px of background kept between any two shapes' boxes
GROUNDING_PROMPT = (
    "Locate the {label}. Answer with its bounding box [x1, y1, x2, y2] inside <answer></answer>."
)


def _draw_grounding(rng: random.Random, width: int = 112, height: int = 84) -> tuple[Image.Image, str, dict]:
    """One target shape plus 1-3 distractors on a grey `width` x `height` canvas; find the target's box.

    Shapes are squares, circles or (upward) triangles in red, green, blue or yellow; the target's
    (colour, shape) pair appears once on the canvas, distractors never share it. Shapes' boxes never overlap
    (at least `GAP` px apart). No antialiasing: every shape pixel has exactly its colour.
    The answer `{"boxes": [[x1, y1, x2, y2]], "labels": ["red triangle"]}` is in original pixels, measured
    tightly on the drawn pixels, with **x2/y2 exclusive** (the box covers columns x1..x2-1, rows y1..y2-1;
    PIL's `getbbox` convention).
    """
    if min(width, height) < 24:
        raise ValueError(f"grounding: canvas {width}x{height} is too small (need >= 24 px each side)")
    target = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) != target]
    objects = [target] + [rng.choice(pairs) for _ in range(rng.randint(1, 3))]
    slots = _place(rng, len(objects), width, height)  # [(x0, y0, side)]
    image = Image.new("RGB", (width, height), BACKGROUND)
    boxes = [_draw_shape(image, s, COLOURS[c], slot) for (c, s), slot in zip(objects, slots)]
    label = f"{target[0]} {target[1]}"  # objects[0] is the target
    return image, GROUNDING_PROMPT.format(label=label), {"boxes": [boxes[0]], "labels": [label]}


def _place(rng: random.Random, k: int, width: int, height: int) -> list[tuple[int, int, int]]:
    """k non-overlapping square slots `(x0, y0, side)` (rejection sampling; restarts with smaller shapes)."""
    short = min(width, height)
    for scale in (1.0, 0.8, 0.6, 0.45):
        lo, hi = max(6, int(0.15 * short * scale)), max(6, int(0.3 * short * scale))
        slots: list[tuple[int, int, int]] = []
        for _ in range(200):
            side = rng.randint(lo, hi)
            x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
            if all(_apart((x0, y0, side), other) for other in slots):
                slots.append((x0, y0, side))
                if len(slots) == k:
                    return slots
    raise ValueError(f"grounding: cannot place {k} shapes on a {width}x{height} canvas")


def _apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """True when the square slots a and b are at least GAP px apart (no overlap)."""
    (ax, ay, aside), (bx, by, bside) = a, b
    apart_x = ax + aside + GAP <= bx or bx + bside + GAP <= ax
    apart_y = ay + aside + GAP <= by or by + bside + GAP <= ay
    return apart_x or apart_y


def _draw_shape(
    image: Image.Image, shape: str, fill: tuple[int, int, int], slot: tuple[int, int, int]
) -> list[int]:
    """Draw one shape inside its slot; return its tight pixel box [x1, y1, x2, y2] (x2, y2 exclusive)."""
    x0, y0, side = slot
    x1, y1 = x0 + side - 1, y0 + side - 1  # inclusive corners, as ImageDraw takes them
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    if shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    else:  # triangle, apex up
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=255)
    image.paste(fill, mask=mask)
    return list(mask.getbbox())


def _grounding_target(sample: Sample, geometry: Any = None) -> str:
    """`<answer>[x1, y1, x2, y2]</answer>`; several boxes are written as a list of boxes."""
    return _boxes_text(sample.answer["boxes"], geometry)


def _grounding_random_target(sample: Sample, rng: random.Random, geometry: Any = None) -> str:
    """A random box of 10-50 % of each side, fully inside the sample's (first) image."""
    width, height = _image_size(sample)
    w = rng.randint(max(1, width // 10), max(1, width // 2))
    h = rng.randint(max(1, height // 10), max(1, height // 2))
    x, y = rng.randint(0, width - w), rng.randint(0, height - h)
    return _boxes_text([[x, y, x + w, y + h]], geometry)


def _boxes_text(boxes: list[list[float]], geometry: Any) -> str:
    """Boxes in original pixels → the answer text, converted by `geometry.from_original` when given."""
    if geometry is not None:
        boxes = geometry.from_original([list(b) for b in boxes])
    texts = ["[" + ", ".join(_number(v) for v in box) + "]" for box in boxes]
    body = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return f"<answer>{body}</answer>"


def _number(v: float) -> str:
    """Integers as integers (1000-grid and pixel conventions), other floats with at most 4 decimals."""
    return str(int(round(v))) if float(v).is_integer() else f"{float(v):.4f}".rstrip("0").rstrip(".")


def _image_size(sample: Sample) -> tuple[int, int]:
    """(width, height) of the sample's first image: a PIL object, or a path read from its header only."""
    images = sample.media("image")
    if not images:
        raise ValueError(f"sample {sample.id!r} has no image to draw a random box in")
    image = images[0]
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image) as im:  # lazy: reads the header only
        return im.size


TASKS.register("grounding")(SyntheticTask(task="grounding", draw=_draw_grounding))
TARGETS.register("grounding")(TargetFormat(_grounding_target, _grounding_random_target))


# ------------------------------------------------------------------------------------------- motion (frames)

MOTION_PROMPT = "The images are frames in time order. Which way does the dot move: left or right?"


def _draw_motion(
    rng: random.Random, size: int = 28, frames: int = 3, prompt: str | None = None
) -> tuple[list[Image.Image], str, str]:
    """A multi-frame temporal task whose answer depends on the frames' order (the setting of Video-R1's T-GRPO).

    A light dot (radius 3-5 px, grey 200-255) on a dark canvas (0-30) moves horizontally by a constant step
    across `frames` frames of `size` x `size`, at a random height; the answer is its direction, "left" or
    "right"; `prompt` replaces the default question. Shown in shuffled order, the frames no longer determine
    the answer.
    """
    if frames < 2 or size < 16:
        raise ValueError(f"motion: need frames >= 2 and size >= 16, got {frames}, {size}")
    direction = rng.choice(("left", "right"))
    r = rng.randint(3, 5)
    fg, bg = rng.randint(200, 255), rng.randint(0, 30)
    y = rng.uniform(r + 1, size - r - 2)
    span = size - 2 * r - 3
    xs = [r + 1 + span * k / (frames - 1) for k in range(frames)]
    if direction == "left":
        xs = xs[::-1]
    images = []
    for x in xs:
        im = Image.new("RGB", (size, size), (bg, bg, bg))
        ImageDraw.Draw(im).ellipse([x - r, y - r, x + r, y + r], fill=(fg, fg, fg))
        images.append(im)
    return images, prompt or MOTION_PROMPT, direction


TASKS.register("motion")(SyntheticTask(task="temporal/motion", draw=_draw_motion))
TARGETS.register("temporal/motion")(TargetFormat(
    lambda sample, geometry=None: f"<answer>{sample.answer}</answer>",
    lambda sample, rng, geometry=None: f"<answer>{rng.choice(('left', 'right'))}</answer>",
))


# ------------------------------------------------------------------------------------------- event (video)

EVENT_PROMPT = "When is the red square shown? Answer [start, end] in seconds inside <answer></answer>."


def _draw_event(rng: random.Random, frames: int = 16, fps: float = 4.0, size: int = 56,
                prompt: str | None = None) -> tuple[Any, str, dict]:
    """Temporal grounding of an event in a video (Time-R1 / TimeZero-style tIoU tasks): a dark clip of `frames`
    frames at `fps` in which a red square is shown from frame a to frame b − 1 (at least 2 frames, a random
    place and size); the answer is `{"span": [a / fps, b / fps]}` in seconds. In-memory as a `Clip`; written
    to a real MPEG-4 file by `mmrl data make event` (PyAV)."""
    from mmrl.perception.video import Clip

    if frames < 4 or fps <= 0:
        raise ValueError(f"event: need frames >= 4 and fps > 0, got {frames}, {fps}")
    a = rng.randint(0, frames - 2)
    b = rng.randint(a + 2, frames)
    side = rng.randint(size // 4, size // 2)
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    bg = rng.randint(0, 40)
    images = []
    for k in range(frames):
        im = Image.new("RGB", (size, size), (bg, bg, bg))
        if a <= k < b:
            ImageDraw.Draw(im).rectangle([x, y, x + side - 1, y + side - 1], fill=(230, 20, 20))
        images.append(im)
    clip = Clip(images, [k / fps for k in range(frames)], float(fps), frames / fps, "synthetic")
    return clip, prompt or EVENT_PROMPT, {"span": [a / fps, b / fps]}


TASKS.register("event")(SyntheticTask(task="temporal/event", draw=_draw_event))
TARGETS.register("temporal/event")(TargetFormat(
    lambda sample, geometry=None: f"<answer>[{sample.answer['span'][0]:g}, {sample.answer['span'][1]:g}]</answer>",
    lambda sample, rng, geometry=None: "<answer>[{:g}, {:g}]</answer>".format(*sorted(
        round(rng.uniform(0, 4), 1) for _ in range(2))),
))
