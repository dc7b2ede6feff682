"""Load a video as sampled frames with their timestamps: decord when installed, PyAV otherwise (or as asked).

`load_video(src, sample_id=…, fps=… | num_frames=…, max_frames=…, max_pixels=…)` decodes the file itself
(never hands a path to a processor), samples frames either at a target rate (`fps`: t = 0, 1/fps, 2/fps, …)
or `num_frames` spread evenly over the duration, caps the count at `max_frames` (evenly thinned), and shrinks
frames above `max_pixels`. It returns a `Clip`: RGB frames as PIL images, each frame's presentation time in
seconds (what temporal rewards compare against), the source's average frame rate, duration and frame size
(what spatial ground truth on a video refers to, however the frames were shrunk). Every failure
(missing file, undecodable or zero-length video, unknown backend) is a `BadSampleError` naming the sample and
file. Frames are decoded into memory the clip owns; nothing stays open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mmrl.errors import BadSampleError

BACKENDS = ("auto", "decord", "pyav")


@dataclass
class Clip:
    frames: list[Image.Image]  # RGB
    timestamps: list[float]  # seconds, one per frame
    fps: float  # the source's average frame rate
    duration: float  # seconds
    backend: str
    size: tuple[int, int] | None = None  # (width, height) of the source's frames before any shrinking

    @property
    def source_size(self) -> tuple[int, int]:
        """The frame size ground-truth coordinates refer to: the source's, else the frames' own."""
        return self.size or self.frames[0].size


def pick_frames(times: list[float], *, fps: float | None, num_frames: int | None, max_frames: int) -> list[int]:
    """Indices into the decoded frames (presentation times `times`) to keep."""
    n = len(times)
    if fps is not None and num_frames is not None:
        raise ValueError("give fps or num_frames, not both")
    if num_frames is not None:
        k = min(num_frames, n)
        idx = [round(i * (n - 1) / max(k - 1, 1)) for i in range(k)] if k > 1 else [0]
    elif fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        idx, t, j = [], times[0], 0
        while j < n:
            while j + 1 < n and abs(times[j + 1] - t) <= abs(times[j] - t):
                j += 1  # the frame nearest to time t
            if not idx or idx[-1] != j:
                idx.append(j)
            t += 1.0 / fps
            if t > times[-1] + 0.5 / fps:
                break
    else:
        idx = list(range(n))
    if len(idx) > max_frames:  # thin evenly to the cap
        idx = [idx[round(i * (len(idx) - 1) / max(max_frames - 1, 1))] for i in range(max_frames)]
    return sorted(set(idx))


def _shrink(frame: Image.Image, max_pixels: int | None) -> Image.Image:
    if max_pixels and frame.width * frame.height > max_pixels:
        scale = (max_pixels / (frame.width * frame.height)) ** 0.5
        frame = frame.resize((max(1, int(frame.width * scale)), max(1, int(frame.height * scale))), Image.BILINEAR)
    return frame


def _decord(path: str):
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise ValueError("the video has no frames")
    times = [float(vr.get_frame_timestamp(i)[0]) for i in range(n)]
    return n, times, float(vr.get_avg_fps()), lambda idx: [Image.fromarray(a) for a in vr.get_batch(idx).asnumpy()]


def _pyav(path: str):
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_image().convert("RGB"))
            times.append(float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time or 0.0))
        rate = float(stream.average_rate) if stream.average_rate else 0.0
    if not frames:
        raise ValueError("the video has no frames")
    start = times[0]
    times = [t - start for t in times]  # decord reports times from the first frame
    return len(frames), times, rate, lambda idx: [frames[i] for i in idx]


def load_video(
    src: str | os.PathLike, *, sample_id: str, fps: float | None = None, num_frames: int | None = None,
    max_frames: int = 64, max_pixels: int | None = None, backend: str = "auto",
) -> Clip:
    """Decode and sample a video file; see the module docstring."""
    if backend not in BACKENDS:
        raise BadSampleError(sample_id, f"video backend {backend!r} is not one of {', '.join(BACKENDS)}")
    path = Path(src)
    if not path.is_file():
        raise BadSampleError(sample_id, f"video file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise BadSampleError(sample_id, f"video file {str(path)!r} is empty (zero length)")
    order = ["decord", "pyav"] if backend == "auto" else [backend]
    errors = []
    for name in order:
        try:
            n, times, rate, fetch = (_decord if name == "decord" else _pyav)(str(path))
        except ImportError:
            errors.append(f"{name}: not installed (pip install 'mmrl[video]')")
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this sample's bad file
            errors.append(f"{name}: {exc}")
            continue
        idx = pick_frames(times, fps=fps, num_frames=num_frames, max_frames=max_frames)
        decoded = fetch(idx)
        size = decoded[0].size
        frames = [_shrink(f.convert("RGB"), max_pixels) for f in decoded]
        duration = times[-1] + (1.0 / rate if rate > 0 else 0.0)
        return Clip(frames, [times[i] for i in idx], rate, duration, name, size)
    raise BadSampleError(sample_id, f"video file {str(path)!r} cannot be decoded ({'; '.join(errors)})")


def write_video(clip: Clip, path: str | os.PathLike) -> Path:
    """Write a clip's frames as an MPEG-4 file at its rate (PyAV); frames are padded to even sizes, as the codec
    needs. Reading it back with `load_video` gives the same frame count and timestamps k / fps."""
    try:
        import av
    except ImportError as exc:
        raise ImportError("writing videos needs PyAV: pip install 'mmrl[video]'") from exc
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = clip.frames[0].size
    w2, h2 = w + w % 2, h + h % 2
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=max(1, round(clip.fps)))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        stream.options = {"qscale": "2"}
        for frame in clip.frames:
            arr = np.zeros((h2, w2, 3), dtype=np.uint8)
            arr[:h, :w] = np.asarray(frame.convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
