"""Where a derived image's pixels lie in the image it was cut from: crops, zooms and quarter turns.

A `Frame` describes an image made from a source image in two steps: the source's region `box` (source pixels,
continuous coordinates: pixel i covers [i, i+1)) resized to the *unturned* size, then turned counter-clockwise by
`turns` × 90° (PIL's `Transpose.ROTATE_90`, as `mmrl.perception.perturb.rotate`). `size` is the final (width,
height). Every frame is axis-aligned, so a box maps to a box exactly, in both directions.

Crops of a derived image compose into one frame of the *source* (`crop`, `turned`), and `render` resamples the source
once: zooming into a zoom never loses resolution.

One counter-clockwise quarter turn of a w0 × h0 image sends the point (x, y) to (y, w0 − x) and makes it h0 × w0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

_TRANSPOSE = {1: 2, 2: 3, 3: 4}  # quarter turns counter-clockwise → PIL.Image.Transpose (ROTATE_90/180/270)


@dataclass(frozen=True)
class Frame:
    """The region `box` = (x1, y1, x2, y2) of a source image, resized, then turned `turns` × 90° counter-clockwise
    into an image of `size` = (width, height); see the module docstring."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    turns: int = 0

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"Frame.box must have x2 > x1 and y2 > y1, got {self.box!r}")
        if not all(isinstance(v, int) and v > 0 for v in self.size) or len(self.size) != 2:
            raise ValueError(f"Frame.size must be two positive ints, got {self.size!r}")
        if self.turns not in (0, 1, 2, 3):
            raise ValueError(f"Frame.turns must be 0, 1, 2 or 3, got {self.turns!r}")

    @classmethod
    def whole(cls, width: int, height: int) -> "Frame":
        """The source itself: its whole area, its own size, unturned."""
        return cls((0.0, 0.0, float(width), float(height)), (int(width), int(height)))

    @property
    def unturned_size(self) -> tuple[int, int]:
        """(w, h) of the resized region before the turns."""
        w, h = self.size
        return (h, w) if self.turns % 2 else (w, h)

    # ---- mapping ------------------------------------------------------------------------------------------
    def points_to_source(self, points: Sequence[Sequence[float]]) -> list[list[float]]:
        """Points [x, y] of this image → the source's pixels."""
        (w0, h0), (x1, y1, x2, y2) = self.unturned_size, self.box
        out = []
        for u, v in points:
            x, y = float(u), float(v)
            width, height = self.size
            for _ in range(self.turns):  # undo one quarter turn: (u, v) of a W × H image → (H − v, u), H × W
                x, y = height - y, x
                width, height = height, width
            out.append([x1 + x * (x2 - x1) / w0, y1 + y * (y2 - y1) / h0])
        return out

    def points_from_source(self, points: Sequence[Sequence[float]]) -> list[list[float]]:
        """Source pixels [x, y] → this image's pixels (points outside the region land outside the image)."""
        (w0, h0), (x1, y1, x2, y2) = self.unturned_size, self.box
        out = []
        for px, py in points:
            x, y = (float(px) - x1) * w0 / (x2 - x1), (float(py) - y1) * h0 / (y2 - y1)
            width, height = w0, h0
            for _ in range(self.turns):  # one quarter turn: (x, y) of a w × h image → (y, w − x), h × w
                x, y = y, width - x
                width, height = height, width
            out.append([x, y])
        return out

    def boxes_to_source(self, boxes: Sequence[Sequence[float]]) -> list[list[float]]:
        """Boxes [x1, y1, x2, y2] of this image → the source's pixels (corners re-ordered after a turn)."""
        return [_span(self.points_to_source([b[:2], b[2:]])) for b in boxes]

    def boxes_from_source(self, boxes: Sequence[Sequence[float]]) -> list[list[float]]:
        """Source-pixel boxes → this image's pixels."""
        return [_span(self.points_from_source([b[:2], b[2:]])) for b in boxes]

    # ---- composing ----------------------------------------------------------------------------------------
    def crop(self, box: Sequence[float], size: tuple[int, int]) -> "Frame":
        """The frame of this image's region `box` (this image's pixels) shown at `size`, as a frame of the source:
        the new image keeps this one's orientation."""
        x1, y1, x2, y2 = self.boxes_to_source([box])[0]
        return Frame((x1, y1, x2, y2), (int(size[0]), int(size[1])), self.turns)

    def turned(self, quarter_turns: int) -> "Frame":
        """This image turned a further `quarter_turns` × 90° counter-clockwise (negative: clockwise)."""
        k = quarter_turns % 4
        w, h = self.size
        return Frame(self.box, (h, w) if k % 2 else (w, h), (self.turns + k) % 4)

    def render(self, source: Any, resample: int | None = None) -> Any:
        """This frame's image cut from the PIL image `source`, resampled once (bicubic by default, antialiased when
        it shrinks; PIL's `resize(box=…)`), then turned by exact pixel transposes."""
        from PIL import Image

        resample = Image.Resampling.BICUBIC if resample is None else resample
        out = source.resize(self.unturned_size, resample, box=self.box)
        return out.transpose(Image.Transpose(_TRANSPOSE[self.turns])) if self.turns else out


def _span(corners: list[list[float]]) -> list[float]:
    (ax, ay), (bx, by) = corners
    return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
