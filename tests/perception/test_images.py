"""load_image: sources, orientation, RGB, closed files, and every refusal naming the sample and file."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from mmrl.datasets.sample import BadSampleError
from mmrl.perception.images import load_image


def _noise_png(path: Path, size=(64, 48)) -> Path:
    """A PNG that compresses badly, so cutting it in half really truncates pixel data."""
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(path)
    return path


def _one_bit_png(path: Path, width: int, height: int) -> Path:
    """A valid mode-"1" (1-bit greyscale) PNG, written chunk by chunk.

    All-black rows compress ~1000:1, so a 20000x20000 image is ~50 kB on disk; building it through
    `Image.new("1", ...)` would first allocate width*height bytes (PIL stores "1" at a byte per pixel).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sources_give_the_same_rgb_image(tmp_path):
    src = Image.new("L", (5, 3), 200)
    src.save(tmp_path / "a.png")
    from_path = load_image(tmp_path / "a.png", sample_id="s")
    from_str = load_image(str(tmp_path / "a.png"), sample_id="s")
    from_bytes = load_image((tmp_path / "a.png").read_bytes(), sample_id="s")
    from_pil = load_image(src, sample_id="s")
    for im in (from_path, from_str, from_bytes, from_pil):
        assert im.mode == "RGB" and im.size == (5, 3)
        assert im.getpixel((0, 0)) == (200, 200, 200)
    assert src.mode == "L"  # the caller's image is untouched


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (4, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "o.jpg", sample_id="s").size == (2, 4)


def test_alpha_is_composited_on_white():
    im = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert load_image(im, sample_id="s").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_no_file_handle_is_left_open(tmp_path):
    good = _noise_png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:200])
    before = _open_fds()
    for _ in range(5):
        load_image(good, sample_id="s")
        with pytest.raises(BadSampleError):
            load_image(bad, sample_id="s")
    assert _open_fds() == before


def test_missing_file_names_sample_and_path(tmp_path):
    with pytest.raises(BadSampleError) as err:
        load_image(tmp_path / "nope.png", sample_id="s-17")
    assert err.value.sample_id == "s-17"
    assert "s-17" in str(err.value) and str(tmp_path / "nope.png") in str(err.value)
    assert "not found" in str(err.value)


def test_corrupt_bytes_are_refused(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(BadSampleError, match="garbage.png.*cannot be decoded"):
        load_image(path, sample_id="s")
    with pytest.raises(BadSampleError, match="<bytes>"):
        load_image(b"\x89PNG nope", sample_id="s")


def test_truncated_png_is_refused(tmp_path):
    data = _noise_png(tmp_path / "full.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match="cut.png.*truncated"):
        load_image(path, sample_id="s")


def _spy_on_decoding(monkeypatch) -> list:
    calls: list = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


@pytest.mark.parametrize("pillow_limit", ["default", "off"])
def test_huge_header_is_refused_before_decoding(tmp_path, monkeypatch, pillow_limit):
    path = _one_bit_png(tmp_path / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 200_000
    with monkeypatch.context() as m:  # the file is a genuine mode-"1" PNG
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(path) as im:
            assert (im.mode, im.size) == ("1", (20000, 20000))
    if pillow_limit == "off":  # then our own header check (default max_pixels) must refuse it
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    decoded = _spy_on_decoding(monkeypatch)
    with pytest.raises(BadSampleError) as err:
        load_image(path, sample_id="bomb-1")
    assert decoded == []  # refused from the header: no pixel was decoded (decoding would allocate 400 MB)
    assert "bomb-1" in str(err.value) and str(path) in str(err.value)
    assert "400000000" in str(err.value)


def test_max_pixels_is_checked_from_the_header(tmp_path, monkeypatch):
    path = _one_bit_png(tmp_path / "big.png", 3000, 2000)
    decoded = _spy_on_decoding(monkeypatch)
    expected = r"big.png.*3000x2000 = 6000000 pixels exceeds max_pixels=1000000"
    with pytest.raises(BadSampleError, match=expected):
        load_image(path, sample_id="s", max_pixels=1_000_000)
    assert decoded == []
    with pytest.raises(BadSampleError, match="<PIL image>"):
        load_image(Image.new("RGB", (20, 20)), sample_id="s", max_pixels=100)
    small = load_image(_one_bit_png(tmp_path / "small.png", 30, 20), sample_id="s", max_pixels=600)
    assert small.size == (30, 20) and small.getpixel((0, 0)) == (0, 0, 0)


def test_unsupported_source_type():
    with pytest.raises(BadSampleError, match="int"):
        load_image(42, sample_id="s")  # type: ignore[arg-type]
