"""Synthetic temporal tasks: a multi-frame prompt (`motion`) and videos (`event` temporal grounding,
`frame_order`), held in memory as `Clip`s for training and written to real MPEG-4 files by `mmrl data make`.
Registered in `mmrl.datasets.synthetic`."""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

from mmrl.datasets.shapes import COLOURS
from mmrl.datasets.tasks import TARGETS, TASKS, SyntheticTask, TargetFormat

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


# ------------------------------------------------------------------------------------------- frame order (video)

FRAME_ORDER_PROMPT = (
    "The frames of this video were shuffled. Frame 1 is the first frame shown, frame 2 the second, and so on. "
    "In the original video a bar grows by the same step in every frame. List the shown frame numbers in their "
    "true time order, like <answer>{example}</answer>."
)


def _draw_frame_order(rng: random.Random, frames: int = 4, fps: float = 2.0, size: int = 56,
                      prompt: str | None = None) -> tuple[Any, str, dict]:
    """Restore the time order of shuffled video frames (temporal reasoning as in Video-R1, arXiv:2503.21776;
    reward `frame_order`, Kendall τ mapped to [0, 1]).

    A bar of a random colour (red, green, blue or yellow) and thickness on a dark canvas grows from one
    canvas edge (random: left, right, top or bottom) by a constant step s ≥ 3 px per frame: at true time t its
    length is l0 + t·s, so the order is unambiguous (a bar that only grows has no mirror solution). The
    `frames` frames (`size` x `size`) are shown in a deranged order (`perturb.derangement`: never the true
    one) as a `Clip` at `fps`; shown frame i (1-based) is true frame perm[i − 1]. The answer is
    `{"order": [i_0, i_1, …]}`, the shown numbers listed by true time (i_t = perm⁻¹(t) + 1, ints);
    `prompt` replaces the question. Needs `frames` >= 3 (two frames have a single derangement). Written to a
    real MPEG-4 file by `mmrl data make frame_order`.
    """
    from mmrl.perception import perturb
    from mmrl.perception.video import Clip

    if frames < 3 or fps <= 0:  # 2 frames have one derangement only: the answer would never change
        raise ValueError(f"frame_order: need frames >= 3 and fps > 0, got {frames}, {fps}")
    if size < 16 or (size - 8) // (frames - 1) < 3:
        raise ValueError(f"frame_order: size={size} is too small for {frames} frames (need a step of >= 3 px: "
                         f"size >= max(16, 3 * (frames - 1) + 8))")
    step = rng.randint(3, (size - 8) // (frames - 1))
    start = rng.randint(4, size - 4 - step * (frames - 1))  # l0: the first frame's length
    thick = rng.randint(6, max(6, size // 3))
    offset = rng.randint(0, size - thick)  # where the bar lies across its length
    edge = rng.choice(("left", "right", "top", "bottom"))
    fill, bg = COLOURS[rng.choice(list(COLOURS))], rng.randint(0, 40)
    truth = []
    for t in range(frames):
        n = start + t * step  # the bar's length at true time t
        box = {"left": (0, offset, n, offset + thick), "right": (size - n, offset, size, offset + thick),
               "top": (offset, 0, offset + thick, n), "bottom": (offset, size - n, offset + thick, size)}[edge]
        im = Image.new("RGB", (size, size), (bg, bg, bg))
        ImageDraw.Draw(im).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=fill)  # x2/y2 exclusive
        truth.append(im)
    perm = perturb.derangement(frames, rng.getrandbits(63))  # shown i = true perm[i]
    clip = Clip([truth[j] for j in perm], [k / fps for k in range(frames)], float(fps), frames / fps, "synthetic")
    order = [perm.index(t) + 1 for t in range(frames)]
    example = ", ".join(str(k) for k in range(frames, 0, -1))
    return clip, prompt or FRAME_ORDER_PROMPT.format(example=example), {"order": order}


TASKS.register("frame_order")(SyntheticTask(task="temporal/frame_order", draw=_draw_frame_order))
TARGETS.register("temporal/frame_order")(TargetFormat(
    lambda sample, geometry=None: "<answer>{}</answer>".format(", ".join(map(str, sample.answer["order"]))),
    lambda sample, rng, geometry=None: "<answer>{}</answer>".format(", ".join(map(str, rng.sample(
        sorted(sample.answer["order"]), len(sample.answer["order"]))))),
))
