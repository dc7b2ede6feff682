"""The records tools read and return: a trajectory's images (`ToolImage`, each with its `Geometry`), its state
(`TrajectoryState`), the processor's image limits (`ImageLimits`) and a call's result (`ToolResult`).

Every image of a trajectory carries a `Geometry` (model coordinates ↔ its own pixels, `mmrl.perception.geometry`);
an image cut from another one also carries the `Frame` that places its pixels in the original image's
(`mmrl.perception.frames`) and that original's index, `origin`. A model's box on any image therefore maps to the
original image's pixels: `state.images[i].boxes_to_origin(boxes)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from mmrl.perception.frames import Frame
from mmrl.perception.geometry import Geometry, pixel_limits


class ToolArgumentError(ValueError):
    """The policy called a tool with arguments it cannot use; the message is the observation the policy sees."""


@dataclass(frozen=True)
class ImageLimits:
    """What the policy's processor accepts, for images a tool makes: their pixel count must lie in [min_pixels,
    max_pixels] (built-ins resize into it; a plug-in's image beyond `max_pixels` is an error), and their `Geometry`
    is computed by the processor's own resize (`processor`; None: an image is seen at its own size) in the model's box
    `convention`. The defaults are Qwen2-VL's image processor's (56·56 and 16384·28·28 pixels)."""

    convention: str = "pixel"
    min_pixels: int = 56 * 56
    max_pixels: int = 16384 * 28 * 28
    processor: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise ValueError(f"ImageLimits needs 1 <= min_pixels <= max_pixels, got {self.min_pixels}, "
                             f"{self.max_pixels}")

    @classmethod
    def from_processor(cls, processor: Any, convention: str) -> "ImageLimits":
        """The limits a Qwen-style processor resizes into (`size.shortest_edge` / `longest_edge`, or `min_pixels` /
        `max_pixels`), falling back to the defaults for a processor that has neither."""
        lo, hi = pixel_limits(processor)
        return cls(convention, int(lo or cls.min_pixels), int(hi or cls.max_pixels), processor)

    def geometry(self, width: int, height: int) -> Geometry:
        """The `Geometry` of a `width` × `height` image as the policy's processor sees it."""
        if self.processor is None:
            return Geometry(int(width), int(height), int(width), int(height), self.convention)
        return Geometry.for_image(self.processor, int(width), int(height), self.convention)


@dataclass(frozen=True)
class ToolImage:
    """One image of a trajectory. `origin`: the index of the original image this one was cut from (None: it is an
    original, a prompt's image or a picture a tool drew); `frame`: where its pixels lie in that original's."""

    image: Any  # PIL.Image.Image
    geometry: Geometry
    origin: int | None = None
    frame: Frame | None = None

    def boxes_to_origin(self, boxes: Sequence[Sequence[float]]) -> list[list[float]]:
        """Boxes in the model's convention on this image → the pixels of its original (`origin`, else its own)."""
        own = self.geometry.to_original(boxes)
        return own if self.frame is None else self.frame.boxes_to_source(own)

    def points_to_origin(self, points: Sequence[Sequence[float]]) -> list[list[float]]:
        """Points in the model's convention on this image → the pixels of its original."""
        own = self.geometry.points_to_original(points)
        return own if self.frame is None else self.frame.points_to_source(own)


@dataclass(frozen=True)
class ToolResult:
    """What one call returns. `text` and `images` are the observation the policy sees next; `reward` (None: none)
    a per-call reward; `done` ends the trajectory. A failed call has `error` set and `text` equal to it (the policy
    sees the error); `info` holds details for logs and rewards (e.g. the call's box in original pixels)."""

    text: str = ""
    images: tuple[ToolImage, ...] = ()
    reward: float | None = None
    done: bool = False
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def failure(cls, message: str, **info: Any) -> "ToolResult":
        """A failed call: the policy sees `message`."""
        return cls(text=message, error=message, info=info)


@dataclass(frozen=True)
class TrajectoryState:
    """What a tool may look at: the trajectory's images so far (the prompt's first, then each tool's, in order), the
    number of tool calls made so far and the processor's `limits`."""

    images: tuple[ToolImage, ...]
    limits: ImageLimits = ImageLimits()
    calls: int = 0

    @classmethod
    def start(cls, images: Sequence[Any], geometries: Sequence[Geometry] | None = None,
              limits: ImageLimits | None = None) -> "TrajectoryState":
        """The state before any call: the prompt's PIL `images` with their `geometries` (the prompt encoder's;
        default: from `limits`)."""
        limits = limits or ImageLimits()
        if geometries is not None and len(geometries) != len(images):
            raise ValueError(f"{len(images)} images but {len(geometries)} geometries")
        geos = geometries if geometries is not None else [limits.geometry(*im.size) for im in images]
        return cls(tuple(ToolImage(im, g) for im, g in zip(images, geos)), limits)

    def after(self, result: ToolResult) -> "TrajectoryState":
        """The state once `result` is appended: its images added, one more call counted."""
        return dataclasses.replace(self, images=self.images + tuple(result.images), calls=self.calls + 1)

    def image(self, index: Any) -> tuple[int, ToolImage]:
        """(non-negative index, image) of `index` (an int; negative counts from the end), or ToolArgumentError."""
        n = len(self.images)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise ToolArgumentError(f"image must be an integer index of an image so far, from 0 to {n - 1} "
                                    f"(or negative, from the end), got {index!r}")
        i = index % n
        return i, self.images[i]

    def origin_of(self, index: int) -> int:
        """The index of the original image that image `index` was cut from (itself for an original)."""
        origin = self.images[index].origin
        return index if origin is None else origin

    def portable(self) -> "TrajectoryState":
        """This state without the processor (for a plug-in's worker process: it gets plain data)."""
        return dataclasses.replace(self, limits=dataclasses.replace(self.limits, processor=None))
