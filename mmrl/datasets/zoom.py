"""The `zoom` task: find the region that holds an arrow, look closer at it, and say where the arrow points — the
"thinking with images" task of issue 19 (calibration: /work/shared/reference/thinking_with_images.md).

A square canvas is split into a `grid` × `grid` grid of regions, numbered 1 … grid² row by row (1 top-left, grid²
bottom-right). One region holds a red marker square with a large white arrow in it, turned by 0, 90, 180 or 270
degrees counter-clockwise from pointing up (PIL's convention, as the `rotation` puzzle: at 90 the arrow points left);
each other region holds, with probability `distractor_p`, a blue or green square of the same size range. With `tags`,
every region carries a Set-of-Mark tag in its outer corner: a square whose colour is fixed by the region's number
(`TAG_COLOURS`), the same in every sample, so that a policy can learn *where* a region is from its tag.

The prompt shows the whole canvas (the processor's pixel cap shows it small, where the arrow is hard to read); the
policy may write `<region>Q</region>` (call format `region`, tool `region` of `mmrl.tools.builtin`) to see region Q
enlarged, then answers `<answer>A</answer>`, A the angle (SFT targets: that answer turn, or both turns through the
tool loop, `TargetFormat.turns`). Reward `rotation_exact` scores the answer (it reads
`answer["angle"]`); `tool_grounding` (`mmrl.rewards.tools`) scores the call against `answer["boxes"]`.

Sizes are fractions of a region's side R: marker 0.60–0.72 R, arrow `arrow` = 0.4–0.6 R long (but at most 0.9 of
its marker), tag 0.25 R (28 px at the default 224 px, grid 2). The calibration found a 0.15–0.25 R arrow unreadable
even in the crop, hence the larger one. The marker's upper bound leaves the tag's corner free (a gap ≥ 0.03 R), and
markers and distractors are placed the same way with or without tags, so `tags` changes nothing else. Everything is
drawn without antialiasing and arrows are turned by exact pixel transposes, so every label can be measured back.
"""

from __future__ import annotations

import math
import random
from typing import Any

from PIL import Image, ImageDraw

from mmrl.datasets.sample import Sample
from mmrl.datasets.shapes import BACKGROUND, COLOURS
from mmrl.datasets.tasks import TARGETS, TASKS, SyntheticTask, TargetFormat

ANGLES = (0, 90, 180, 270)  # counter-clockwise from pointing up
MARKER = COLOURS["red"]
DISTRACTORS = (COLOURS["blue"], COLOURS["green"])
ARROW = (255, 255, 255)
TAG_COLOURS = (  # region 1, 2, …: fixed, distinct from the background, marker, distractors and arrow
    (255, 255, 0), (255, 0, 255), (0, 255, 255), (0, 0, 0), (255, 128, 0), (128, 0, 255), (128, 64, 0),
    (255, 160, 200), (0, 0, 128), (0, 128, 128), (128, 128, 0), (128, 0, 0), (0, 100, 0), (200, 200, 255),
    (255, 230, 170), (64, 64, 64),
)
MARKER_SIDE = (0.60, 0.72)  # of the region's side
TAG_SIDE = 0.25  # of the region's side
ARROW_CAP = 0.9  # an arrow is at most this share of its marker's side
MIN_REGION = 32  # px: below it the arrow is a few pixels

ZOOM_PROMPT = (
    "The image is split into a {g}x{g} grid of regions, numbered 1 to {n} row by row: 1 is the top-left region, "
    "{n} the bottom-right one.{tags} One region holds a red square with a white arrow in it. To look closer at a "
    "region, write <region>Q</region> with its number Q, and you will be shown that region enlarged. Then say where "
    "the arrow points, in degrees counter-clockwise from up (0 = up, 90 = left, 180 = down, 270 = right), inside "
    "<answer></answer>, e.g. <answer>90</answer>."
)
TAGS_SENTENCE = " Each region has a coloured tag in its outer corner."


def _draw_zoom(
    rng: random.Random, size: int = 224, grid: int = 2, arrow: tuple[float, float] = (0.4, 0.6), tags: bool = True,
    distractor_p: float = 0.67, prompt: str | None = None,
) -> tuple[Image.Image, str, dict]:
    """A `size` x `size` canvas of `grid` x `grid` regions, one holding the red marker with a white arrow at an angle
    in {0, 90, 180, 270} (counter-clockwise from up), the others a blue or green square with probability
    `distractor_p`, and with `tags` a fixed-colour tag in each region's outer corner (module docstring). `arrow`:
    the (lo, hi) range of the arrow's length as a fraction of the region's side; `prompt` replaces the question.

    The answer is `{"angle": A, "region": Q, "boxes": [[x1, y1, x2, y2]], "grid": grid, "size": [size, size]}`: the
    angle as an int, the 1-based region of the marker and the marker's box in the canvas's pixels (x2, y2
    exclusive, as `grounding`'s).
    """
    lo, hi = _check(size, grid, arrow, tags, distractor_p)
    angle, target = rng.choice(ANGLES), rng.randint(1, grid * grid)
    image = Image.new("RGB", (size, size), BACKGROUND)
    box: list[int] = []
    for q in range(1, grid * grid + 1):
        (x0, y0, x1, y1), corner = _cell(q, grid, size), _corner(q, grid)
        r = min(x1 - x0, y1 - y0)  # the region's side (cells differ by a pixel when grid does not divide size)
        side = rng.randint(math.ceil(MARKER_SIDE[0] * r), min(math.floor(MARKER_SIDE[1] * r), r - _tag_room(r)))
        x, y = _place(rng, (x1 - x0, y1 - y0), side, corner)
        if q == target:
            length = min(rng.uniform(lo, hi) * r, ARROW_CAP * side)
            marker = arrow_marker(side, length, head=rng.uniform(0.35, 0.5), width=rng.uniform(0.5, 0.7),
                                  shaft=rng.uniform(0.15, 0.25), angle=angle)
            image.paste(marker, (x0 + x, y0 + y))
            box = [x0 + x, y0 + y, x0 + x + side, y0 + y + side]
        elif rng.random() < distractor_p:
            image.paste(rng.choice(DISTRACTORS), (x0 + x, y0 + y, x0 + x + side, y0 + y + side))
    if tags:
        _draw_tags(image, grid)
    text = prompt or ZOOM_PROMPT.format(g=grid, n=grid * grid, tags=TAGS_SENTENCE if tags else "")
    return image, text, {"angle": angle, "region": target, "boxes": [box], "grid": grid, "size": [size, size]}


def _check(size: Any, grid: Any, arrow: Any, tags: Any, distractor_p: Any) -> tuple[float, float]:
    """The options checked (ValueError naming the option and what it accepts); returns the arrow's (lo, hi)."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"zoom: grid must be an int >= 1, got {grid!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size // grid < MIN_REGION:
        raise ValueError(f"zoom: size must be an int with size // grid >= {MIN_REGION} px (a region's side), "
                         f"got size={size!r}, grid={grid}")
    if not isinstance(tags, bool):
        raise ValueError(f"zoom: tags must be true or false, got {tags!r}")
    if tags and grid * grid > len(TAG_COLOURS):
        raise ValueError(f"zoom: tags have {len(TAG_COLOURS)} colours, so grid must be <= "
                         f"{math.isqrt(len(TAG_COLOURS))} with tags (got grid={grid}); set tags: false for more")
    real = (int, float)
    if isinstance(distractor_p, bool) or not isinstance(distractor_p, real) or not 0.0 <= distractor_p <= 1.0:
        raise ValueError(f"zoom: distractor_p must be a probability in [0, 1], got {distractor_p!r}")
    top = round(ARROW_CAP * MARKER_SIDE[1], 3)
    ok = isinstance(arrow, (list, tuple)) and len(arrow) == 2 and all(
        isinstance(v, real) and not isinstance(v, bool) for v in arrow) and 0.0 < arrow[0] <= arrow[1] <= top
    if not ok:
        raise ValueError(f"zoom: arrow must be a pair [lo, hi] with 0 < lo <= hi <= {top} (the arrow's length as a "
                         f"fraction of the region's side; it must fit inside the marker), got {arrow!r}")
    return float(arrow[0]), float(arrow[1])


def _cell(q: int, grid: int, size: int) -> tuple[int, int, int, int]:
    """Region q's whole pixels (x0, y0, x1, y1), x1 / y1 exclusive: inside its exact share [c·size/grid,
    (c+1)·size/grid), which is what the `region` tool cuts, even when `grid` does not divide `size`."""
    row, col = divmod(q - 1, grid)
    return (math.ceil(col * size / grid), math.ceil(row * size / grid),
            math.floor((col + 1) * size / grid), math.floor((row + 1) * size / grid))


def _corner(q: int, grid: int) -> tuple[bool, bool]:
    """(right, bottom): the region's outer corner — the one towards the canvas's nearest corner (a middle row or
    column of an odd grid counts as left / top)."""
    row, col = divmod(q - 1, grid)
    return 2 * col >= grid, 2 * row >= grid


def _tag_room(r: int) -> int:
    """The px a square must keep from a side of an r-px region to clear that side's tag: the tag and a gap."""
    return math.ceil(TAG_SIDE * r) + max(1, math.ceil(0.03 * r))


def _place(rng: random.Random, cell: tuple[int, int], side: int, corner: tuple[bool, bool]) -> tuple[int, int]:
    """The top-left (x, y), within a cell `cell` = (w, h) px, of a `side`-px square that leaves the tag's corner
    free: one axis (drawn at random) keeps it past the tag, the other may be anywhere."""
    xy = [rng.randint(0, cell[0] - side), rng.randint(0, cell[1] - side)]
    axis = rng.randrange(2)
    xy[axis] = rng.randint(_tag_room(min(cell)), cell[axis] - side)  # counted from the tag's side
    if corner[axis]:  # the tag is on the right (bottom): count from there
        xy[axis] = cell[axis] - side - xy[axis]
    return xy[0], xy[1]


def tag_box(q: int, grid: int, size: int) -> tuple[int, int, int, int]:
    """Region q's tag (x0, y0, x1, y1) in the canvas's pixels, x1 / y1 exclusive."""
    x0, y0, x1, y1 = _cell(q, grid, size)
    t = math.ceil(TAG_SIDE * min(x1 - x0, y1 - y0))
    right, bottom = _corner(q, grid)
    tx, ty = (x1 - t if right else x0), (y1 - t if bottom else y0)
    return tx, ty, tx + t, ty + t


def _draw_tags(image: Image.Image, grid: int) -> None:
    """Each region's fixed-colour tag in its outer corner."""
    for q in range(1, grid * grid + 1):
        image.paste(TAG_COLOURS[q - 1], tag_box(q, grid, image.width))


def arrow_marker(side: int, length: float, *, head: float, width: float, shaft: float, angle: int) -> Image.Image:
    """A `side`-px red square with a white arrow `length` px long centred in it, turned `angle` degrees
    counter-clockwise from up by an exact pixel transpose. `head`, `width`, `shaft`: the head's height, the head's
    base and the shaft's width as fractions of `length`. The arrow is mirror-symmetric about its axis (up to a pixel of
    rasterisation) but has no rotational symmetry, so the four angles give four different pictures."""
    c = (side - 1) / 2  # the centre in pixel-centre coordinates
    top, bottom, neck = c - length / 2, c + length / 2, c - length / 2 + head * length
    hw, sw = width * length / 2, shaft * length / 2
    outline = [(c, top), (c + hw, neck), (c + sw, neck), (c + sw, bottom), (c - sw, bottom), (c - sw, neck),
               (c - hw, neck)]
    marker = Image.new("RGB", (side, side), MARKER)
    ImageDraw.Draw(marker).polygon(outline, fill=ARROW)
    turns = {0: None, 90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    if angle not in turns:
        raise ValueError(f"arrow_marker: angle must be one of {ANGLES}, got {angle!r}")
    return marker if turns[angle] is None else marker.transpose(turns[angle])


def _zoom_target(sample: Sample, geometry: Any = None) -> str:
    """The answer turn: `<answer>A</answer>`, A the angle in degrees."""
    gt = sample.answer
    return f"<answer>{gt['angle'] if isinstance(gt, dict) else gt}</answer>"


def _zoom_random_target(sample: Sample, rng: random.Random, geometry: Any = None) -> str:
    return f"<answer>{rng.choice(ANGLES)}</answer>"


def _zoom_turns(sample: Sample, rng: random.Random | None, geometry: Any = None) -> list[str]:
    """The policy's turns through the tool loop: the call `<region>Q</region>`, then `<answer>A</answer>` — the true
    region and angle (`rng` None), or a random region and a random angle (the calibration's format warm start)."""
    gt = sample.answer if isinstance(sample.answer, dict) else {}
    if rng is None:
        return [f"<region>{gt['region']}</region>", _zoom_target(sample)]
    grid = gt.get("grid", 2)
    return [f"<region>{rng.randint(1, grid * grid)}</region>", _zoom_random_target(sample, rng)]


TASKS.register("zoom")(SyntheticTask(task="zoom", draw=_draw_zoom))
TARGETS.register("zoom")(TargetFormat(_zoom_target, _zoom_random_target, turns=_zoom_turns))
