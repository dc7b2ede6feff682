"""Built-in tools: `zoom_in` and `crop` (a region of an image, by a box in the model's own coordinates), `region` (one
cell of a grid laid over an image, by its number) and `rotate`.

Each returns a new image with its own `Geometry` and the `Frame` that places it in the original image, and cuts it
from the *original's* pixels: zooming into a zoom, or rotating one, resamples the original once and loses nothing.

The region of `zoom_in` / `crop`, from the policy's `bbox_2d` on image `image`:
1. mapped through that image's `Geometry` (the model's convention: relative 0–1000, the resized image's pixels, …)
   and `Frame` to the original's pixels; corners in either order;
2. clamped to the image it was drawn on (a box wholly outside it is an error the policy sees);
3. each side grown to at least `min_size` original pixels (around its centre, kept inside the image);
4. its short side grown until long / short ≤ `max_ratio` (then, if the image is too thin for that, its long side
   cut): Qwen's processors refuse aspect ratios of 200 and more; verl's zoom tool uses 100 and 28 px, as here.
Its size: `crop` keeps the region's original resolution, `zoom_in` shows it with as many pixels as the image it was
drawn on; both are then brought within the processor's [min_pixels, max_pixels] (`state.limits`).

`region` needs no coordinates at all: the policy names a cell Q (1-based, row by row) of a `grid` × `grid` grid laid
over image `image` as that image shows it, and sees that cell as `zoom_in` would show its box (the `zoom` task of
`mmrl.datasets.zoom`; call format `<region>Q</region>`).
"""

from __future__ import annotations

import math
from typing import Any

from mmrl.perception.frames import Frame
from mmrl.tools.registry import register
from mmrl.tools.types import ImageLimits, ToolArgumentError, ToolImage, ToolResult, TrajectoryState

_IMAGE_ARG = {"type": "integer", "description": "Index of the image the box is drawn on: 0 is the first image, "
                                               "-1 the latest. Default: the first image."}
_BOX_PARAMETERS = {
    "type": "object",
    "properties": {
        "bbox_2d": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                    "description": "The region as [x1, y1, x2, y2], in the coordinates you use for boxes."},
        "image": _IMAGE_ARG,
        "label": {"type": "string", "description": "What the region shows (optional; recorded, not used)."},
    },
    "required": ["bbox_2d"],
}


@register("zoom_in", description="Zoom in on a region of an image: returns the region enlarged.",
          parameters=_BOX_PARAMETERS)
def zoom_in(arguments: dict[str, Any], state: TrajectoryState, *, min_size: float = 28.0, max_ratio: float = 100.0,
            default_image: int = 0) -> ToolResult:
    """The region `bbox_2d` of image `image` shown with as many pixels as that image has (module docstring)."""
    return _cut(arguments, state, enlarge=True, min_size=min_size, max_ratio=max_ratio, default_image=default_image)


@register("crop", description="Crop a region of an image: returns the region at its own resolution.",
          parameters=_BOX_PARAMETERS)
def crop(arguments: dict[str, Any], state: TrajectoryState, *, min_size: float = 28.0, max_ratio: float = 100.0,
         default_image: int = 0) -> ToolResult:
    """The region `bbox_2d` of image `image` at its original resolution (module docstring)."""
    return _cut(arguments, state, enlarge=False, min_size=min_size, max_ratio=max_ratio, default_image=default_image)


@register("rotate", description="Rotate an image counter-clockwise by a multiple of 90 degrees.",
          parameters={"type": "object", "properties": {
              "angle": {"type": "integer", "description": "Degrees counter-clockwise: 90, 180, 270 (or -90 …)."},
              "image": {**_IMAGE_ARG, "description": "Index of the image to rotate: 0 is the first image, -1 the "
                                                     "latest. Default: the latest."}},
              "required": ["angle"]})
def rotate(arguments: dict[str, Any], state: TrajectoryState, *, default_image: int = -1) -> ToolResult:
    """Image `image` turned counter-clockwise by `angle` (a multiple of 90°; exact pixel transposes of the original's
    pixels as that image shows them)."""
    angle = arguments.get("angle")
    if isinstance(angle, float) and angle.is_integer():
        angle = int(angle)
    if isinstance(angle, bool) or not isinstance(angle, int) or angle % 90:
        raise ToolArgumentError(f"angle must be a multiple of 90 degrees (90, 180, 270, -90), got {angle!r}")
    i, view = state.image(arguments.get("image", default_image))
    origin = state.origin_of(i)
    source = state.images[origin].image
    frame = (view.frame or Frame.whole(*source.size)).turned(angle // 90)
    out = frame.render(source)
    n = len(state.images)
    return ToolResult(text=f"Image {n} is image {i} rotated by {angle % 360} degrees counter-clockwise.",
                      images=(ToolImage(out, state.limits.geometry(*out.size), origin, frame),),
                      info={"image": i, "origin": origin, "angle": angle % 360})


_REGION_PARAMETERS = {
    "type": "object",
    "properties": {"region": {"type": "integer", "minimum": 1,
                              "description": "The region's number: 1 is the top-left one, numbered row by row."}},
    "required": ["region"],
}


@register("region", description="Look closer at one region of the image (regions are numbered row by row, 1 top-left):"
                                " returns the region enlarged.", parameters=_REGION_PARAMETERS)
def region(arguments: dict[str, Any], state: TrajectoryState, *, grid: int = 2, image: int = 0,
           caption: bool | str = True) -> ToolResult:
    """Cell `region` (1 … grid², row by row) of a `grid` × `grid` grid laid over image `image` (as that image shows
    it: a crop's grid is the crop's), cut from the original's pixels and shown with as many pixels as image `image`
    has, within the processor's limits — `zoom_in` of the cell's box. `info["box"]`: the cell in the original's
    pixels, as `zoom_in`'s; `info["region"]`: the number. `caption: false` returns the image alone (no "Image k
    shows …" line: a small model reads the image it answers from better without text between them); a string is
    returned as the text after the image instead (e.g. the question again, as a single-turn prompt puts it)."""
    if not isinstance(caption, (bool, str)):
        raise ValueError(f"region: caption must be true, false or a string, got {caption!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"region: grid must be an int >= 1, got {grid!r}")
    q = _region_number(arguments.get("region"), grid * grid)
    i, view = state.image(image)
    origin = state.origin_of(i)
    source = state.images[origin].image
    view_frame = view.frame or Frame.whole(*source.size)
    w, h = view.image.size
    row, col = divmod(q - 1, grid)
    cell = [col * w / grid, row * h / grid, (col + 1) * w / grid, (row + 1) * h / grid]  # image i's own pixels
    box = view_frame.boxes_to_source([cell])[0]  # the original's pixels
    size = _fit(box[2] - box[0], box[3] - box[1], w * h, state.limits)  # unturned, as the cell lies in the original
    frame = Frame(tuple(box), size[::-1] if view_frame.turns % 2 else size, view_frame.turns)
    out = frame.render(source)
    text = caption if isinstance(caption, str) else (
        f"Image {len(state.images)} shows region {q} of image {i}." if caption else "")
    return ToolResult(text=text,
                      images=(ToolImage(out, state.limits.geometry(*out.size), origin, frame),),
                      info={"image": i, "origin": origin, "box": [round(v, 2) for v in box], "region": q})


def _region_number(value: Any, n: int) -> int:
    """The policy's region number as an int in [1, n]: an int, an integral float or a numeric string ("3", "3.0");
    anything else is a `ToolArgumentError` naming the valid range."""
    q = value
    if isinstance(q, str) and len(q) <= 32:
        try:
            q = float(q.strip())
        except ValueError:
            pass
    if isinstance(q, float) and q.is_integer():
        q = int(q)
    if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= n:
        raise ToolArgumentError(f"region must be a whole number from 1 to {n} (numbered row by row, 1 top-left), "
                                f"got {value!r:.40}")
    return q


# ---------------------------------------------------------------------------------------------- the region
def _cut(arguments: dict[str, Any], state: TrajectoryState, *, enlarge: bool, min_size: float, max_ratio: float,
         default_image: int) -> ToolResult:
    box = _box(arguments.get("bbox_2d"))
    i, view = state.image(arguments.get("image", default_image))
    origin = state.origin_of(i)
    source = state.images[origin].image
    view_frame = view.frame or Frame.whole(*source.size)
    area = view_frame.box  # the image the box was drawn on, in the original's pixels
    region = _region(view.boxes_to_origin([box])[0], area, min_size=min_size, max_ratio=max_ratio, image=i)
    w, h = region[2] - region[0], region[3] - region[1]
    target = view.image.width * view.image.height if enlarge else w * h
    size = _fit(w, h, target, state.limits)
    frame = Frame(region, size[::-1] if view_frame.turns % 2 else size, view_frame.turns)
    out = frame.render(source)
    shown = view.geometry.from_original(view_frame.boxes_from_source([region]))[0]  # what it got, as it asked
    n = len(state.images)
    return ToolResult(text=f"Image {n} shows the region {shown} of image {i}.",
                      images=(ToolImage(out, state.limits.geometry(*out.size), origin, frame),),
                      info={"image": i, "origin": origin, "box": [round(v, 2) for v in region]})


def _box(value: Any) -> tuple[float, float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise ToolArgumentError(f"bbox_2d must be four numbers [x1, y1, x2, y2], got {str(value)[:80]}")
    return tuple(float(v) for v in value)


def _region(box: list[float], area: tuple[float, float, float, float], *, min_size: float, max_ratio: float,
            image: int) -> tuple[float, float, float, float]:
    """`box` (original pixels) clamped to `area`, each side at least `min_size`, long / short at most `max_ratio`."""
    x1, x2 = sorted(box[0::2])
    y1, y2 = sorted(box[1::2])
    ax1, ay1, ax2, ay2 = area
    if x2 < ax1 or x1 > ax2 or y2 < ay1 or y1 > ay2:
        raise ToolArgumentError(f"bbox_2d lies outside image {image}")
    x1, x2 = _grow(max(x1, ax1), min(x2, ax2), min_size, ax1, ax2)
    y1, y2 = _grow(max(y1, ay1), min(y2, ay2), min_size, ay1, ay2)
    w, h = x2 - x1, y2 - y1
    if w > h * max_ratio:  # too wide: grow the height, then cut the width if the image is too thin
        y1, y2 = _grow(y1, y2, w / max_ratio, ay1, ay2)
        x1, x2 = _grow(x1, x2, min(w, (y2 - y1) * max_ratio), ax1, ax2, shrink=True)
    elif h > w * max_ratio:
        x1, x2 = _grow(x1, x2, h / max_ratio, ax1, ax2)
        y1, y2 = _grow(y1, y2, min(h, (x2 - x1) * max_ratio), ay1, ay2, shrink=True)
    return x1, y1, x2, y2


def _grow(lo: float, hi: float, size: float, a: float, b: float, *, shrink: bool = False) -> tuple[float, float]:
    """[lo, hi] made `size` long around its centre (only longer, unless `shrink`), at most [a, b], moved inside it."""
    if hi - lo >= size and not shrink:
        return lo, hi
    size = min(size, b - a)
    mid = (lo + hi) / 2
    lo = min(max(mid - size / 2, a), b - size)
    return lo, lo + size


def _fit(w: float, h: float, target: float, limits: ImageLimits) -> tuple[int, int]:
    """(W, H) in the proportions w : h with W·H near `target`, within [min_pixels, max_pixels]."""
    target = min(max(target, limits.min_pixels), limits.max_pixels)
    s = math.sqrt(target / (w * h))
    size = max(1, round(w * s)), max(1, round(h * s))
    if size[0] * size[1] > limits.max_pixels:
        size = max(1, math.floor(w * s)), max(1, math.floor(h * s))
    elif size[0] * size[1] < limits.min_pixels:
        size = math.ceil(w * s), math.ceil(h * s)
    return size
