"""Synthetic, label-free or self-labelled tasks drawn on the spot, and their SFT target texts.

`make(task, n, seed=..., split=...)` draws samples whose images are PIL objects held in the message parts.
Sample i depends only on (task, seed, split, i): its generator is
`random.Random(f"{task}/{seed}/{split}/{i}")` (`random` hashes a string seed with SHA-512, never with
Python's salted `hash()`), so different splits draw different images and a subset or a restart draws
the same samples.

Target texts (`target_text`, `random_target_text`) are registered per `Sample.task` in `TARGETS`, so they also
serve loaded data sets of the same task (e.g. any "grounding" JSONL).

This module holds the registries, the rotation puzzle and the puzzle target formats; shape scenes (grounding,
counting, classification) live in `mmrl.datasets.shapes`, temporal tasks (motion, event, frame_order) in
`mmrl.datasets.temporal`; both register here when this module is imported.
"""

from __future__ import annotations

import inspect
import random
import string
from typing import Any, Callable

from PIL import Image, ImageDraw

from mmrl.datasets import mcq
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.datasets.tasks import TARGETS, TASKS, SyntheticTask, TargetFormat  # noqa: F401  (re-exported)
from mmrl.registry import closest


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
    """The SFT target for `sample`'s answer, dispatched on `sample.task`; boxes in `geometry`'s convention if given.
    A task without a registered format (a peer's data set: EasyR1 / HF records, task "") gets `answer_target`."""
    problem = _answer_problem(sample)
    if problem:
        raise BadSampleError(sample.id, f"no SFT target: {problem}")
    if sample.task in TARGETS:
        return TARGETS.get(sample.task).target(sample, geometry)
    return answer_target(sample.answer)


def random_target_text(sample: Sample, rng: random.Random, geometry: Any = None) -> str:
    """A target in the right format but with a random label (format-only SFT warm start); without a registered
    format, only a multiple-choice answer has one (a random option letter)."""
    if sample.task in TARGETS:
        return TARGETS.get(sample.task).random_target(sample, rng, geometry)
    problem = target_problem(sample, "random")
    if problem:
        raise BadSampleError(sample.id, f"no random SFT target: {problem}")
    return f"<answer>{rng.choice(string.ascii_uppercase[: len(sample.answer['options'])])}</answer>"


def answer_target(answer: Any) -> str:
    """The target the project's own tasks use, `<answer>…</answer>`, around a text or numeric answer, or around a
    multiple-choice answer's letter (`{"choice": "B", …}`).

    >>> answer_target("a rocket"), answer_target(3), answer_target({"choice": "B", "options": ["x", "y"]})
    ('<answer>a rocket</answer>', '<answer>3</answer>', '<answer>B</answer>')
    """
    return f"<answer>{answer['choice'] if isinstance(answer, dict) else answer}</answer>"


def _choices(answer: Any) -> int:
    """The number of options of a multiple-choice answer `{"choice": letter, "options": [...]}` (0: not one)."""
    ok = isinstance(answer, dict) and isinstance(answer.get("choice"), str) and isinstance(answer.get("options"), list)
    return min(len(answer["options"]), 26) if ok else 0


def _answer_problem(sample: Sample) -> str | None:
    """Why `sample.answer` gives no SFT target (None: `target_text` makes one)."""
    answer = sample.answer
    if answer is None:
        return "no `answer`, no assistant turn (a LLaVA gpt reply, `meta.response`)"
    if sample.task in TARGETS or _choices(answer):
        return None
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
        return (f"`answer` {answer!r:.60} is not text, a number or a choice, and task {sample.task!r} has no target"
                f" format (tasks with one: {', '.join(TARGETS.names())})")
    return None


def target_problem(sample: Sample, labels: str) -> str | None:
    """Why an SFT stage with `labels` (`true` | `random`) gets no target for `sample` (None: it gets one).

    `true`: the data set's own response (`meta.response`, e.g. a LLaVA gpt turn), else `target_text` of its
    answer. `random`: the task's registered format, or a multiple-choice answer (a random letter); free text has
    no format to draw a random label in.
    """
    if labels == "random":
        if sample.task in TARGETS or _choices(sample.answer):
            return None
        return (f"task {sample.task!r} has no random-label format (tasks with one: {', '.join(TARGETS.names())}, or"
                " a multiple-choice answer {choice, options}); use labels: true to train on the data's own targets")
    return None if isinstance(sample.meta.get("response"), str) else _answer_problem(sample)


def target_problems(sources: dict[str, list[Sample]], labels: str) -> list[str]:
    """One line per source (name → samples) holding samples that get no SFT target under `labels`, e.g.
    "data.train (x.parquet): records have no target: no `answer`, …" or "…: 3 of 10 records (first 'id') …"."""
    out = []
    for name, samples in sources.items():
        bad = [(s.id, p) for s in samples if (p := target_problem(s, labels))]
        if not bad:
            continue
        which = "records" if len(bad) == len(samples) else f"{len(bad)} of {len(samples)} records (first {bad[0][0]!r})"
        out.append(f"{name}: {which} have no target: {bad[0][1]}")
    return out


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


# jigsaw and position puzzles come from folders of images (mmrl.datasets.folder); their SFT targets live here
TARGETS.register("puzzle/jigsaw")(TargetFormat(_jigsaw_target, _jigsaw_random_target))

# (row, column) offset of a neighbour tile from the centre tile → its relation, as `relative_position` names it
POSITIONS = {
    (-1, -1): "top-left", (-1, 0): "above", (-1, 1): "top-right", (0, -1): "left", (0, 1): "right",
    (1, -1): "bottom-left", (1, 0): "below", (1, 1): "bottom-right",
}
TARGETS.register("puzzle/position")(TargetFormat(
    lambda sample, geometry=None: f"<answer>{sample.answer['relation']}</answer>",
    lambda sample, rng, geometry=None: f"<answer>{rng.choice(list(POSITIONS.values()))}</answer>",
))


# The task families register themselves on import (in the registries of mmrl.datasets.tasks).
from mmrl.datasets import shapes, temporal, zoom  # noqa: E402,F401
from mmrl.datasets.shapes import BACKGROUND, COLOURS, SHAPES  # noqa: E402,F401  (re-exported)
