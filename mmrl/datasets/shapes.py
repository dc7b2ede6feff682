"""Synthetic shape scenes: grounding (one or every matching object, distractors, salience), counting and
classification. Flat-coloured squares, circles and triangles on a grey canvas, never overlapping, drawn without
antialiasing so every answer can be measured back from the pixels. Registered in `mmrl.datasets.synthetic`."""

from __future__ import annotations

import random
import string
from typing import Any

from PIL import Image, ImageChops, ImageDraw

from mmrl.datasets import mcq
from mmrl.datasets.sample import Sample
from mmrl.datasets.tasks import TARGETS, TASKS, SyntheticTask, TargetFormat

# ------------------------------------------------------------------------------------------- grounding

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (128, 128, 128)
GAP = 2  # px of background kept between any two shapes' boxes
GROUNDING_PROMPT = (
    "Locate the {label}. Answer with its bounding box [x1, y1, x2, y2] inside <answer></answer>."
)


GROUNDING_ALL_PROMPT = (
    "Locate every {label}. Answer with the bounding boxes of all of them, [[x1, y1, x2, y2], ...], "
    "inside <answer></answer>."
)


def _draw_grounding(
    rng: random.Random, width: int = 112, height: int = 84, distractors: tuple[int, int] = (1, 3),
    targets: str = "one", max_targets: int = 3, salience: bool = False,
) -> tuple[Image.Image, str, dict]:
    """Target shape(s) plus distractors on a grey `width` x `height` canvas; find the target boxes.

    Shapes are squares, circles or (upward) triangles in red, green, blue or yellow; boxes never overlap (at
    least `GAP` px apart); no antialiasing: every shape pixel has exactly its colour. The number of
    distractors is drawn uniformly from `distractors` = (lo, hi), inclusive.
    - `targets="one"` (default; scored by `iou_sq` / `giou` …): the question names a (colour, shape) pair
      that appears exactly once ("Locate the red triangle."); distractors never share it.
    - `targets="all"` (multi-object grounding, scored by `det_f1` / `salience_iou`): the question names a
      colour only or a shape only ("Locate every red shape." / "Locate every circle."); 1..`max_targets`
      shapes (uniform; at least one, guaranteed) match it, distractors never do; boxes are listed in
      reading order (top to bottom, then left to right), each labelled with its full "colour shape" name.
    The answer `{"boxes": [[x1, y1, x2, y2], …], "labels": [...]}` is in original pixels, measured tightly on
    the drawn pixels, with **x2/y2 exclusive** (PIL's `getbbox` convention). With `salience`, the answer also
    holds `"salience"`: one weight per box, the box's share of all target pixels, w_j = a_j / Σ_k a_k with
    a_j the number of pixels shape j covers (so a larger shape weighs more; sums to 1 up to rounding) — the
    salience weights of GRiP's salience-weighted IoU ("Guiding the Inner Eye", arXiv:2511.22172;
    the paper's own weighting was not found, so this pixel share is our stand-in).
    """
    if min(width, height) < 24:
        raise ValueError(f"grounding: canvas {width}x{height} is too small (need >= 24 px each side)")
    lo, hi = _int_range("grounding", "distractors", distractors)
    if targets not in ("one", "all"):
        raise ValueError(f"grounding: targets must be 'one' or 'all', got {targets!r}")
    if max_targets < 1:
        raise ValueError(f"grounding: max_targets must be >= 1, got {max_targets}")
    if targets == "one":  # the original draw order, kept so default samples stay the same
        target = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) != target]
        objects = [target] + [rng.choice(pairs) for _ in range(rng.randint(lo, hi))]
        hits, prompt = [0], GROUNDING_PROMPT.format(label=f"{target[0]} {target[1]}")
    else:
        query, match, other = _query(rng)
        objects = [rng.choice(match) for _ in range(rng.randint(1, max_targets))]
        objects += [rng.choice(other) for _ in range(rng.randint(lo, hi))]
        rng.shuffle(objects)  # later slots tend to be smaller (rejection sampling): no size cue for targets
        hits, prompt = [k for k, o in enumerate(objects) if o in match], GROUNDING_ALL_PROMPT.format(label=query)
    slots = _place(rng, len(objects), width, height, task="grounding")  # [(x0, y0, side)]
    image = Image.new("RGB", (width, height), BACKGROUND)
    boxes = [_draw_shape(image, s, COLOURS[c], slot) for (c, s), slot in zip(objects, slots)]
    hits.sort(key=lambda k: (boxes[k][1], boxes[k][0]))  # reading order
    answer: dict[str, Any] = {"boxes": [boxes[k] for k in hits], "labels": [" ".join(objects[k]) for k in hits]}
    if salience:
        areas = [_pixel_count(image, boxes[k], COLOURS[objects[k][0]]) for k in hits]
        answer["salience"] = [round(a / sum(areas), 6) for a in areas]
    return image, prompt, answer


def _query(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    """A colour-only or shape-only query: (its words, the (colour, shape) pairs it matches, the others)."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if rng.random() < 0.5:
        colour = rng.choice(list(COLOURS))
        return f"{colour} shape", [p for p in pairs if p[0] == colour], [p for p in pairs if p[0] != colour]
    shape = rng.choice(SHAPES)
    return shape, [p for p in pairs if p[1] == shape], [p for p in pairs if p[1] != shape]


def _int_range(task: str, name: str, value: Any) -> tuple[int, int]:
    """An inclusive (lo, hi) count range (a tuple, or a list from YAML) checked: ints with 0 <= lo <= hi."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value) and 0 <= value[0] <= value[1]
    if not ok:
        raise ValueError(f"{task}: {name} must be a pair [lo, hi] of ints with 0 <= lo <= hi, got {value!r}")
    return int(value[0]), int(value[1])


def _pixel_count(image: Image.Image, box: list[int], fill: tuple[int, int, int]) -> int:
    """Pixels of colour `fill` inside `box` (boxes never overlap, so: the pixels of the shape drawn there)."""
    mask = Image.new("RGB", image.size, fill)
    diff = ImageChops.difference(image.crop(box), mask.crop(box)).convert("L")  # 0 exactly where colour == fill
    return diff.histogram()[0]


def _place(
    rng: random.Random, k: int, width: int, height: int, task: str = "grounding"
) -> list[tuple[int, int, int]]:
    """k non-overlapping square slots `(x0, y0, side)` (rejection sampling; restarts with smaller shapes)."""
    if k == 0:
        return []
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
    raise ValueError(f"{task}: cannot place {k} non-overlapping shapes on a {width}x{height} canvas "
                     "(ask for fewer shapes or a larger canvas)")


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
    """As many random boxes as the answer has (at least one), each 10-50 % of each side, fully inside the
    sample's (first) image."""
    width, height = _image_size(sample)
    gt = sample.answer.get("boxes") if isinstance(sample.answer, dict) else None
    boxes = []
    for _ in range(len(gt) if isinstance(gt, list) and gt else 1):
        w = rng.randint(max(1, width // 10), max(1, width // 2))
        h = rng.randint(max(1, height // 10), max(1, height // 2))
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        boxes.append([x, y, x + w, y + h])
    return _boxes_text(boxes, geometry)


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


# ------------------------------------------------------------------------------------------- counting

COUNTING_PROMPT = "How many {label} are there in the picture? Answer with the number inside <answer></answer>."


def _draw_counting(
    rng: random.Random, width: int = 112, height: int = 84, max_count: int = 6,
    distractors: tuple[int, int] = (1, 3), kind: str = "any",
) -> tuple[Image.Image, str, dict]:
    """Count the shapes of one kind among distractors (CLEVR-style counting, as in R1-V; reward `count_exact`).

    The asked kind is a (colour, shape) pair ("red circles", `kind="pair"`) or a shape of any colour
    ("circles", `kind="shape"`); `kind="any"` picks one of the two per sample. k, uniform in 0..`max_count`,
    shapes of that kind and a number of distractors uniform in `distractors` = (lo, hi) — shapes of any other
    kind (for a pair: the same colour or the same shape, never both) — are drawn on a grey `width` x `height`
    canvas in a random order, never overlapping (`_place`: at least `GAP` px apart, shapes shrink when
    crowded, ≥ 6 px; a ValueError when they cannot be placed). The answer is `{"count": k}`.
    """
    if kind not in ("any", "pair", "shape"):
        raise ValueError(f"counting: kind must be 'any', 'pair' or 'shape', got {kind!r}")
    if max_count < 0:
        raise ValueError(f"counting: max_count must be >= 0, got {max_count}")
    lo, hi = _int_range("counting", "distractors", distractors)
    by = rng.choice(("pair", "shape")) if kind == "any" else kind
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if by == "pair":
        match, label = [(colour, shape)], f"{colour} {shape}s"
    else:
        match, label = [p for p in pairs if p[1] == shape], f"{shape}s"
    k = rng.randint(0, max_count)
    objects = [rng.choice(match) for _ in range(k)]
    objects += [rng.choice([p for p in pairs if p not in match]) for _ in range(rng.randint(lo, hi))]
    rng.shuffle(objects)  # later slots tend to be smaller (rejection sampling): no size cue for the answer
    slots = _place(rng, len(objects), width, height, task="counting")
    image = Image.new("RGB", (width, height), BACKGROUND)
    for (c, s), slot in zip(objects, slots):
        _draw_shape(image, s, COLOURS[c], slot)
    return image, COUNTING_PROMPT.format(label=label), {"count": k}


TASKS.register("counting")(SyntheticTask(task="counting", draw=_draw_counting))
TARGETS.register("counting")(TargetFormat(
    lambda sample, geometry=None: f"<answer>{sample.answer['count']}</answer>",
    lambda sample, rng, geometry=None: f"<answer>{rng.randint(0, max(6, int(sample.answer['count'])))}</answer>",
))


# ------------------------------------------------------------------------------------------- classification

SYNONYMS = {"circle": ("disc", "disk")}  # only names of the same drawn thing ("rectangle" is broader: not one)
CLASSIFY_QUESTIONS = {  # the question; the open-ended prompt adds the vocabulary and the answer format
    "shape": ("What shape is drawn in the picture?", " Answer square, circle or triangle"),
    "colour": ("What colour is the shape in the picture?", " Answer red, green, blue or yellow"),
    "both": ("What is drawn in the picture?", (" Answer its colour (red, green, blue or yellow) and then its "
                                               "shape (square, circle or triangle), as two words,")),
}
CLASSIFY_INSTRUCTION = " inside <answer></answer>."


def _draw_classify(
    rng: random.Random, size: int = 56, label: str = "shape", choices: bool = False
) -> tuple[Image.Image, str, dict]:
    """Name the one shape on the canvas: image classification with a rule-based reward (CLS-RL, "Image
    Classification with Rule-Based Reinforcement Learning", arXiv:2503.16188; reward `cls_label`).

    One square, circle or triangle in red, green, blue or yellow, its side 30-80 % of the `size` x `size` grey
    canvas, at a random place. `label` picks what is asked: "shape", "colour" or "both" ("red circle"); the
    picture does not depend on it. The answer is `{"label": …, "synonyms": [...]}`, the synonyms being other
    names of the same thing only ("disc"/"disk" for a circle). With `choices`, the question is multiple choice
    (`mmrl.datasets.mcq`; reward `mc`) over the shapes, the colours, or the truth plus three other pairs, in a
    random order; the answer is then `{"choice": letter, "options": [...], "question": ...}`.
    """
    if label not in CLASSIFY_QUESTIONS:
        raise ValueError(f"classify: label must be one of {', '.join(CLASSIFY_QUESTIONS)}, got {label!r}")
    if size < 16:
        raise ValueError(f"classify: size={size} is too small (need >= 16 px)")
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    side = rng.randint(max(6, size * 3 // 10), size * 8 // 10)
    slot = (rng.randint(0, size - side), rng.randint(0, size - side), side)
    image = Image.new("RGB", (size, size), BACKGROUND)
    _draw_shape(image, shape, COLOURS[colour], slot)
    truth = {"shape": shape, "colour": colour, "both": f"{colour} {shape}"}[label]
    names = SYNONYMS.get(shape, ()) if label != "colour" else ()
    synonyms = [f"{colour} {n}" if label == "both" else n for n in names]
    question, vocabulary = CLASSIFY_QUESTIONS[label]
    if not choices:
        return image, question + vocabulary + CLASSIFY_INSTRUCTION, {"label": truth, "synonyms": synonyms}
    options = [o for o in _class_names(label) if o != truth]
    rng.shuffle(options)
    options = [truth] + options[:3]
    rng.shuffle(options)
    return image, mcq.render(question, options), {
        "choice": "ABCD"[options.index(truth)], "options": options, "question": question}


def _class_names(label: str) -> list[str]:
    """Every answer the `label` question can have."""
    if label == "shape":
        return list(SHAPES)
    if label == "colour":
        return list(COLOURS)
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def _classify_target(sample: Sample, geometry: Any = None) -> str:
    """`<answer>letter</answer>` for multiple choice, else `<answer>label</answer>` (a plain string answer too)."""
    gt = sample.answer if isinstance(sample.answer, dict) else {"label": sample.answer}
    return f"<answer>{gt['choice'] if 'choice' in gt else gt['label']}</answer>"


def _classify_random_target(sample: Sample, rng: random.Random, geometry: Any = None) -> str:
    """A random letter among the options, else a random name of the label's kind (shape, colour or both;
    any pair for a label this generator does not draw)."""
    gt = sample.answer if isinstance(sample.answer, dict) else {"label": sample.answer}
    if "choice" in gt:
        return f"<answer>{rng.choice(string.ascii_uppercase[:len(gt['options'])])}</answer>"
    kind = "shape" if gt["label"] in SHAPES else "colour" if gt["label"] in COLOURS else "both"
    return f"<answer>{rng.choice(_class_names(kind))}</answer>"


TASKS.register("classify")(SyntheticTask(task="classification", draw=_draw_classify))
TARGETS.register("classification")(TargetFormat(_classify_target, _classify_random_target))
