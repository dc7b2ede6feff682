"""Load one image safely: path, bytes or PIL in; an upright RGB `PIL.Image` out.

Safety comes first because images come from user data sets:

- the pixel count is checked from the *header* (`Image.open` is lazy) before anything is decoded, so a
  small file that claims 20000 x 20000 pixels (a "decompression bomb") is refused without allocating it;
- every file is opened by us and closed before returning; the returned image owns its pixels;
- every failure (missing, undecodable, truncated, too large) is a `BadSampleError` naming the sample and
  the file, so a loader can skip the sample or stop with a useful message.

Pillow keeps its own global limit (`PIL.Image.MAX_IMAGE_PIXELS`; it refuses above twice that, which is the
default `max_pixels` here). A `max_pixels` above Pillow's refusal limit also needs that global raised.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps

from mmrl.errors import BadSampleError

ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image]

DEFAULT_MAX_PIXELS = 178_956_970  # = 2 * PIL.Image.MAX_IMAGE_PIXELS (Pillow's own refusal limit)


def load_image(
    src: ImageSource, *, sample_id: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Return `src` as an upright (EXIF-oriented) RGB image that holds no open file.

    `src` is a path (str / PathLike), encoded bytes, or a PIL image (never modified; a copy is returned).
    Transparent images are composited on white. Raises `BadSampleError(sample_id, ...)` naming the file when
    it is missing, undecodable or truncated, or when its header size exceeds `max_pixels`.
    """
    if isinstance(src, Image.Image):
        _check_size(src.size, max_pixels, sample_id, "<PIL image>")
        return _to_upright_rgb(src)
    if isinstance(src, (bytes, bytearray)):
        return _decode(io.BytesIO(bytes(src)), "<bytes>", sample_id, max_pixels)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            fp = open(path, "rb")
        except OSError as err:  # missing, a directory, no permission
            reason = "not found" if isinstance(err, FileNotFoundError) else err.strerror or str(err)
            raise BadSampleError(sample_id, f"image file {str(path)!r}: {reason}") from err
        with fp:
            return _decode(fp, str(path), sample_id, max_pixels)
    raise BadSampleError(
        sample_id, f"image source of type {type(src).__name__} (expected a path, bytes or a PIL image)"
    )


def _decode(fp: io.IOBase, name: str, sample_id: str, max_pixels: int) -> Image.Image:
    """Open lazily, check the header size, then decode fully; the caller owns and closes `fp`."""
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as err:  # Pillow's own global limit, checked at open
        raise BadSampleError(sample_id, f"image file {name!r}: too large ({err})") from err
    except Exception as err:  # noqa: BLE001 - plugins raise many types on garbage input
        raise BadSampleError(sample_id, f"image file {name!r}: cannot be decoded ({err})") from err
    with im:
        _check_size(im.size, max_pixels, sample_id, name)  # header only: nothing decoded yet
        try:
            im.load()
        except Exception as err:  # noqa: BLE001 - truncated data raises OSError, others vary
            raise BadSampleError(
                sample_id, f"image file {name!r}: cannot be decoded, truncated or corrupt ({err})"
            ) from err
        return _to_upright_rgb(im)


def _check_size(size: tuple[int, int], max_pixels: int, sample_id: str, name: str) -> None:
    """Refuse images whose width * height exceeds `max_pixels`."""
    width, height = size
    if width * height > max_pixels:
        raise BadSampleError(
            sample_id,
            f"image file {name!r}: {width}x{height} = {width * height} pixels exceeds "
            f"max_pixels={max_pixels}; refused before decoding",
        )


def _to_upright_rgb(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert to RGB (alpha composited on white); always a new image."""
    upright = ImageOps.exif_transpose(im)  # a new image even without an orientation tag
    if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
        rgba = upright.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return upright.convert("RGB") if upright.mode != "RGB" else upright
