"""Video decoding: a clip written here with PyAV decodes to the same frames and timestamps through decord and
PyAV; sampling by fps and by count; bad files give errors naming the sample."""

from __future__ import annotations

import numpy as np
import pytest

from mmrl.errors import BadSampleError
from mmrl.perception.video import load_video

av = pytest.importorskip("av")
FPS, N = 10, 25  # 2.5 s


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory, write_video):
    """2.5 s at 10 fps, getting brighter; a red square from 1.0 s to 1.5 s."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=N, fps=FPS, width=64, height=48,
                       event=(10, 15))


def _backends():
    out = ["pyav"]
    try:
        import decord  # noqa: F401

        out.append("decord")
    except ImportError:
        pass
    return out


def test_decord_and_pyav_agree_on_frames_and_times(clip_path):
    clips = {b: load_video(clip_path, sample_id="v", backend=b) for b in _backends()}
    for name, clip in clips.items():
        assert len(clip.frames) == N and clip.backend == name
        assert clip.timestamps == pytest.approx([i / FPS for i in range(N)], abs=1e-3)
        assert clip.fps == pytest.approx(FPS) and clip.duration == pytest.approx(N / FPS, abs=1e-3)
        levels = [float(np.asarray(f)[:8, :8].mean()) for f in clip.frames]  # a corner the event never touches
        assert all(b > a for a, b in zip(levels, levels[1:]))  # decoded in order
    if len(clips) == 2:
        a, b = (np.stack([np.asarray(f, dtype=np.int16) for f in c.frames]) for c in clips.values())
        assert np.abs(a - b).max() <= 2  # the same decoder output up to colour-conversion rounding


@pytest.mark.parametrize("backend", _backends())
def test_sampling_by_fps_and_count(clip_path, backend):
    by_fps = load_video(clip_path, sample_id="v", fps=5, backend=backend)
    assert by_fps.timestamps == pytest.approx([0.2 * k for k in range(13)], abs=1e-3)
    by_count = load_video(clip_path, sample_id="v", num_frames=5, backend=backend)
    assert by_count.timestamps == pytest.approx([0.0, 0.6, 1.2, 1.8, 2.4], abs=1e-3)
    capped = load_video(clip_path, sample_id="v", max_frames=4, backend=backend)
    assert len(capped.frames) == 4 and capped.timestamps[0] == 0 and capped.timestamps[-1] == pytest.approx(2.4)
    small = load_video(clip_path, sample_id="v", num_frames=2, max_pixels=16 * 12, backend=backend)
    assert small.frames[0].size == (16, 12)


def test_event_seconds_reach_the_temporal_reward(clip_path):
    from mmrl.rewards import get

    clip = load_video(clip_path, sample_id="v", backend="pyav")
    red = [np.asarray(f, dtype=np.int16)[18:30, 20:44] for f in clip.frames]
    lit = [t for r, t in zip(red, clip.timestamps) if (r[..., 0] - r[..., 1]).mean() > 100]
    span = [lit[0], lit[-1] + 1 / clip.fps]  # the event's seconds, read off the decoded frames
    assert span == pytest.approx([1.0, 1.5], abs=1e-3)
    tiou = get("temporal_iou")
    assert tiou(["<answer>[1.0, 1.5]</answer>", "<answer>[0.5, 1.0]</answer>"], answer=[{"span": span}] * 2) \
        == pytest.approx([1.0, 0.0], abs=1e-3)


def test_bad_videos_name_the_sample_and_file(tmp_path, clip_path):
    with pytest.raises(BadSampleError, match="s1.*does not exist"):
        load_video(tmp_path / "missing.mp4", sample_id="s1")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(BadSampleError, match="s2.*zero length"):
        load_video(tmp_path / "empty.mp4", sample_id="s2")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(BadSampleError, match="s3.*junk.mp4.*cannot be decoded"):
        load_video(tmp_path / "junk.mp4", sample_id="s3")
    data = clip_path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadSampleError, match="s4.*cut.mp4"):
        load_video(tmp_path / "cut.mp4", sample_id="s4")
    with pytest.raises(BadSampleError, match="backend"):
        load_video(clip_path, sample_id="s5", backend="opencv")
