"""Image geometry and box/point coordinate conventions per model family.

Ground truth is stored in *original* image pixels. A policy, however, reads and writes coordinates in its
family's convention, and mixing the two up is the first cause of "IoU reward stays 0" in peer projects
(om-ai-lab/VLM-R1 #21, #44, #198; Liuziyu77/Visual-RFT #174; QwenLM/Qwen3-VL #830, #940).

Conventions (`Geometry.convention`):

| name         | model coordinates                                                | range        |
|--------------|------------------------------------------------------------------|--------------|
| `qwen2_vl`   | integers relative to the image, scale 1000                       | [0, 1000)    |
| `qwen2_5_vl` | absolute pixels of the processor-*resized* image (`proc_w/h`)    | [0, proc)    |
| `qwen3_vl`   | integers relative to the image, scale 1000                       | [0, 1000]    |
| `pixel`      | original image pixels (identity)                                 | [0, orig)    |
| `norm`       | floats relative to the image                                     | [0, 1]       |

Sources for `qwen3_vl`: transformers 5.23 has no coordinate logic at all — `Qwen3VLProcessor` reuses
`Qwen2VLImageProcessor` (auto mapping `qwen3_vl` → `Qwen2VLImageProcessor`; patch size 16 in the released
preprocessor configs) and coordinates are plain text tokens (QwenLM/Qwen3-VL #1927). The Qwen3-VL release notes
say the default coordinate system "has been changed from the absolute coordinates used in Qwen2.5-VL to
relative coordinates ranging from 0 to 1000" (quoted in QwenLM/Qwen3-VL #1741), while Alibaba Cloud's docs say
0–999; we therefore use scale 1000 and accept the closed range [0, 1000] when clamping.

`width`/`height` passed to `Geometry.for_image` must be the size of the image the processor receives (if a
pipeline resizes with `qwen_vl_utils.fetch_image` first, that resized size).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

CONVENTIONS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "pixel", "norm")

# relative conventions: name -> (scale, largest valid integer value)
_RELATIVE = {"qwen2_vl": (1000.0, 999), "qwen3_vl": (1000.0, 1000)}


def convention_for(model_type: str) -> str:
    """The box convention of a `config.model_type`; unknown families get `pixel`.

    >>> convention_for("qwen2_5_vl"), convention_for("gemma3")
    ('qwen2_5_vl', 'pixel')
    """
    return model_type if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") else "pixel"


def _round_half_up(v: float) -> int:
    if not math.isfinite(v):
        raise ValueError(f"cannot convert non-finite coordinate {v!r}")
    return math.floor(v + 0.5)


@dataclass(frozen=True)
class Geometry:
    """One image's sizes and the policy's coordinate convention (see the module docstring)."""

    orig_w: int
    orig_h: int
    proc_w: int
    proc_h: int
    convention: str

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown box convention {self.convention!r} (valid: {', '.join(CONVENTIONS)})")
        for name in ("orig_w", "orig_h", "proc_w", "proc_h"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"Geometry.{name} must be a positive int, got {v!r}")

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def identity(cls, width: int, height: int) -> "Geometry":
        """Coordinates are original pixels (`pixel` convention, no resize)."""
        return cls(width, height, width, height, "pixel")

    @classmethod
    def for_image(cls, processor: Any, width: int, height: int, convention: str) -> "Geometry":
        """Geometry of a `width`×`height` image as `processor` (a processor or image processor) resizes it."""
        proc_w, proc_h = processed_size(processor, width, height)
        return cls(int(width), int(height), int(proc_w), int(proc_h), convention)

    # ---- conversions --------------------------------------------------------------------------------------
    def _scale(self) -> tuple[float, float]:
        """(sx, sy) with original = model * s."""
        c = self.convention
        if c in _RELATIVE:
            k = _RELATIVE[c][0]
            return self.orig_w / k, self.orig_h / k
        if c == "qwen2_5_vl":
            return self.orig_w / self.proc_w, self.orig_h / self.proc_h
        if c == "norm":
            return float(self.orig_w), float(self.orig_h)
        return 1.0, 1.0  # pixel

    def _to(self, rows: Sequence[Sequence[float]], n: int) -> list[list[float]]:
        sx, sy = self._scale()
        return [[float(v) * (sx if j % 2 == 0 else sy) for j, v in enumerate(_check(r, n))] for r in rows]

    def _from(self, rows: Sequence[Sequence[float]], n: int) -> list[list[Any]]:
        sx, sy = self._scale()
        out: list[list[Any]] = []
        for r in rows:
            vals = [float(v) / (sx if j % 2 == 0 else sy) for j, v in enumerate(_check(r, n))]
            if self.convention == "norm":
                out.append([round(min(max(v, 0.0), 1.0), 6) for v in vals])
                continue
            ints = [_round_half_up(v) for v in vals]
            if self.convention in _RELATIVE:
                hi = _RELATIVE[self.convention][1]
                ints = [min(max(v, 0), hi) for v in ints]
            out.append(ints)
        return out

    def to_original(self, boxes: Sequence[Sequence[float]]) -> list[list[float]]:
        """Model-output boxes `[x1, y1, x2, y2]` → original pixels (floats, nothing clamped)."""
        return self._to(boxes, 4)

    def from_original(self, boxes: Sequence[Sequence[float]]) -> list[list[int]]:
        """Original-pixel boxes → the model's convention: rounded half-up ints, clamped for relative conventions.

        `norm` is the exception: it returns floats in [0, 1] (rounded to 6 places), since ints would be 0 or 1.
        """
        return self._from(boxes, 4)

    def points_to_original(self, points: Sequence[Sequence[float]]) -> list[list[float]]:
        """Model-output points `[x, y]` → original pixels."""
        return self._to(points, 2)

    def points_from_original(self, points: Sequence[Sequence[float]]) -> list[list[int]]:
        """Original-pixel points → the model's convention (as `from_original`)."""
        return self._from(points, 2)


def _check(row: Sequence[float], n: int) -> Sequence[float]:
    if len(row) != n:
        raise ValueError(f"expected {n} coordinates, got {len(row)}: {row!r}")
    return row


# ---- the processor's own resize ---------------------------------------------------------------------------
def pixel_limits(processor: Any) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) a Qwen-style image processor resizes into: `size.shortest_edge` / `longest_edge`,
    or its `min_pixels` / `max_pixels` attributes; None for a limit it does not have."""
    ip = getattr(processor, "image_processor", processor)
    size = _as_dict(getattr(ip, "size", None))
    return (size.get("shortest_edge") or getattr(ip, "min_pixels", None),
            size.get("longest_edge") or getattr(ip, "max_pixels", None))


def set_pixel_limits(processor: Any, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Make a Qwen-style image processor resize into [min_pixels, max_pixels] (None: keep that limit): both its
    `size` edges and its `min_pixels` / `max_pixels` attributes, which `pixel_limits` and the processor read. A
    processor with neither cannot take them: ValueError."""
    ip = getattr(processor, "image_processor", processor)
    size = _as_dict(getattr(ip, "size", None))
    if "shortest_edge" not in size and not hasattr(ip, "max_pixels"):
        raise ValueError(f"{type(ip).__name__} has no pixel limits (size.shortest_edge / longest_edge or "
                         "min_pixels / max_pixels) to set")
    for edge, attr, value in (("shortest_edge", "min_pixels", min_pixels), ("longest_edge", "max_pixels", max_pixels)):
        if value is None:
            continue
        if "shortest_edge" in size:
            size[edge] = int(value)
        if hasattr(ip, attr):
            setattr(ip, attr, int(value))
    if size:
        ip.size = size if isinstance(getattr(ip, "size", None), dict) else type(ip.size)(**size)


def processed_size(processor: Any, width: int, height: int) -> tuple[int, int]:
    """(proc_w, proc_h): the size `processor` resizes a `width`×`height` image to, by its own code.

    Qwen-style image processors (`Qwen2VLImageProcessor` and its PIL twin, also used by Qwen2.5-VL and Qwen3-VL)
    resize with their module's `smart_resize(height, width, factor=patch_size*merge_size, min_pixels=
    size["shortest_edge"], max_pixels=size["longest_edge"])`; we call that very function with the processor's
    own parameters. Other processors with `image_grid_thw` outputs are probed by processing a blank image;
    fixed-size processors (`size={"height", "width"}`) return that size; anything else keeps the original size.
    """
    ip = getattr(processor, "image_processor", processor)
    size = _as_dict(getattr(ip, "size", None))
    smart_resize = _own_smart_resize(ip)
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)
    if callable(smart_resize) and patch and merge:
        min_px, max_px = pixel_limits(ip)
        if min_px and max_px:
            h, w = smart_resize(int(height), int(width), factor=patch * merge, min_pixels=min_px, max_pixels=max_px)
            return int(w), int(h)
    if patch and callable(ip):
        return _probe(ip, width, height, patch)
    if size.get("height") and size.get("width"):
        return int(size["width"]), int(size["height"])
    return int(width), int(height)


def _own_smart_resize(ip: Any) -> Any:
    """`smart_resize` from the module that defines the processor's class (or the nearest base class)."""
    for klass in type(ip).__mro__:
        fn = getattr(sys.modules.get(klass.__module__), "smart_resize", None)
        if callable(fn):
            return fn
    return None


def _probe(ip: Any, width: int, height: int, patch: int) -> tuple[int, int]:
    """Process a blank image and read the resized size back from `image_grid_thw` (× patch size)."""
    from PIL import Image

    out = ip(images=Image.new("RGB", (int(width), int(height))), return_tensors="pt")
    if "image_grid_thw" not in out:
        raise ValueError(f"cannot infer the processed image size from {type(ip).__name__}")
    _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    return gw * patch, gh * patch


def _as_dict(size: Any) -> dict:
    if size is None:
        return {}
    if isinstance(size, dict):
        return size
    try:  # transformers' SizeDict
        return {k: v for k, v in dict(size).items() if v is not None}
    except (TypeError, ValueError):
        return {k: getattr(size, k) for k in ("shortest_edge", "longest_edge", "height", "width") if hasattr(size, k)}
