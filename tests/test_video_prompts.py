"""Video prompts end to end on the offline tiny models: a clip written here is decoded and sampled by mmrl,
handed to each family's real processor as frames with their times, and trained on for two GRPO steps with the
temporal-IoU reward; decoded frames do not outlive the processing."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def video_data(tmp_path_factory, write_video):
    return _dataset(tmp_path_factory.mktemp("videos"), range(4), write_video)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, write_video):
    return _dataset(tmp_path_factory.mktemp("held_out"), range(4, 6), write_video)


def _dataset(root, ids, write_video):
    rows = []
    for k in ids:  # 2 s at 10 fps; the red square from 0.8 s to 1.4 s
        write_video(root / f"clip{k}.mp4", frames=20, fps=10, width=56, height=56, event=(8, 14),
                    background=lambda i: 30 + 5 * i)
        rows.append({"id": f"v{k}", "task": "temporal/grounding", "answer": {"span": [0.8, 1.4]}, "messages": [
            {"role": "user", "content": [{"type": "video", "video": f"clip{k}.mp4"},
                                         {"type": "text", "text": "When is the red square shown? [start, end]"}]}]})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_video_parts_reach_the_processor_as_frames_with_times(video_data, zoo_cache, family):
    from mmrl.config import ModelConfig, VideoConfig
    from mmrl.datasets.jsonl import load_jsonl
    from mmrl.perception import video as video_module
    from mmrl.model.policy import Policy

    policy = Policy.load(ModelConfig(path=f"zoo:{family}"))
    samples, _ = load_jsonl(video_data)
    refs = []
    real = video_module.load_video

    def recording(*a, **k):  # keep weak references to every decoded frame
        clip = real(*a, **k)
        refs.extend(weakref.ref(f) for f in clip.frames)
        return clip

    video_module.load_video = recording
    try:
        inputs = policy.encode(samples[0], video=VideoConfig(fps=5.0, max_frames=10, max_pixels=2000))
    finally:
        video_module.load_video = real
    assert inputs.clips == [pytest.approx([0.2 * k for k in range(10)], abs=1e-3)]  # 2 s at 5 fps
    t = inputs.tensors
    assert "pixel_values_videos" in t and t["video_grid_thw"].tolist()[0][0] == 5  # 10 frames / temporal patch 2
    if family == "qwen2_5_vl":
        assert t["second_per_grid_ts"].tolist() == pytest.approx([0.4])  # 2 frames at 5 fps
    # spatial answers on a video refer to its source frames (56x56), though frames were shrunk to <= 2000 px
    (geo,) = inputs.geometry
    _, gh, gw = t["video_grid_thw"].tolist()[0]
    patch = policy.processor.video_processor.patch_size
    assert (geo.orig_w, geo.orig_h, geo.proc_w, geo.proc_h) == (56, 56, gw * patch, gh * patch)
    assert inputs.answer_geometry is geo and geo.convention == family
    box = geo.from_original([[14, 28, 42, 56]])
    assert geo.to_original(box)[0] == pytest.approx([14, 28, 42, 56], abs=56 / 1000 * 2 if family != "qwen2_5_vl" else 56 / geo.proc_w)
    gc.collect()
    assert refs and all(r() is None for r in refs)  # decoded frames are released after processing


def test_two_grpo_steps_on_videos_with_temporal_iou(video_data, held_out, tmp_path, tiny, length_reward,
                                                   check_logged_run):
    from mmrl.datasets.jsonl import load_jsonl
    from mmrl.datasets.sources import drop_overlap
    from mmrl.train.trainer import Trainer

    train, _ = load_jsonl(video_data)
    assert drop_overlap(train, train) == ([], 4)  # the same video files in both splits are caught
    # + characters / 10: an untrained policy's tIoU is 0 everywhere, so without it nothing would train
    cfg = tiny(tmp_path / "run", f"data.train={{path: '{video_data}'}}", f"data.eval={{path: '{held_out}'}}",
               f"rewards=[{{fn: temporal_iou}}, {{fn: format, weight: 0.1}}, {{fn: '{length_reward}', name: len}}]",
               "data.video.max_frames=4", "stages=[{name: rl, kind: rl, steps: 2}]", "trainer.threads=2")
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.run()
    rl = check_logged_run(tmp_path / "run", cfg, ["v0", "v1", "v2", "v3"])  # the training clips, not held-out v4, v5
    assert len(rl) == 2 and all(r["reward/temporal_iou/missing"] == 0 for r in rl)  # every answer has a span
    assert all(r["adv/zero_frac"] < 1 and r["actor/grad_norm"] > 0 for r in rl)
    assert [r["eval/n"] for r in (json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
            if "eval/n" in r] == [2, 2]  # the held-out clips, before and after


def test_t_grpo_contrast_on_real_videos(video_data, held_out, tmp_path, tiny, check_logged_run):
    from mmrl.config import VideoConfig
    from mmrl.datasets.jsonl import load_jsonl
    from mmrl.train.trainer import Trainer

    cfg = tiny(tmp_path / "run", f"data.train={{path: '{video_data}'}}", f"data.eval={{path: '{held_out}'}}",
               "rewards=[{fn: temporal_iou}, {fn: temporal_bonus}]", "data.video.max_frames=4",
               "rollout.extra_passes=[{kind: shuffle_frames}]", "algorithm.correct_threshold=0.0",
               "stages=[{name: rl, kind: rl, steps: 1}]", "trainer.threads=2")
    trainer = Trainer(cfg, log=lambda *a: None)
    sample = load_jsonl(video_data)[0][0]
    ordered = trainer.policy.encode(sample, video=VideoConfig(max_frames=4))
    shuffled = trainer.policy.encode(sample, video=VideoConfig(max_frames=4), frame_seed=7)
    a, b = ordered.tensors["pixel_values_videos"], shuffled.tensors["pixel_values_videos"]
    assert a.shape == b.shape and not torch.equal(a, b)  # the same frames, another order
    assert torch.equal(ordered.tensors["input_ids"], shuffled.tensors["input_ids"])
    trainer.run()
    (rl,) = check_logged_run(tmp_path / "run", cfg, ["v0", "v1", "v2", "v3"], known={"temporal_bonus": 0.3})
    assert rl["rollout/shuffle_frames/prompts"] == 4
    # correct_threshold 0: every completion (total 0 ≥ 0) is correct on ordered and on shuffled frames, so
    # p = p̃ = 1 ≥ μ·p̃ and each gets α = 0.3 (with the default threshold 1.0 none would: the bonus would be 0)
    assert rl["reward/temporal_bonus/mean"] == pytest.approx(0.3, abs=1e-12) and rl["reward/temporal_iou/mean"] == 0


def test_synthetic_event_task_in_memory_on_disk_and_in_training(tmp_path, tiny, capsys, length_reward,
                                                                 check_logged_run):
    from mmrl.cli import main
    from mmrl.config import VideoConfig
    from mmrl.datasets.jsonl import load_jsonl
    from mmrl.datasets.synthetic import make
    from mmrl.perception.video import load_video
    from mmrl.train.trainer import Trainer

    sample = make("event", 1, seed=3)[0]
    a, b = sample.answer["span"]
    trainer = Trainer(tiny(tmp_path / "run", "data.train={task: event, n: 8}", "data.eval={task: event, n: 4}",
                           f"rewards=[{{fn: temporal_iou}}, {{fn: '{length_reward}', name: len}}]",
                           "stages=[{name: rl, kind: rl, steps: 2}]", "trainer.threads=2"), log=lambda *x: None)
    encoded = trainer.policy.encode(sample, video=VideoConfig(max_frames=16))
    assert encoded.clips == [pytest.approx([k / 4 for k in range(16)])] and "pixel_values_videos" in encoded.tensors
    trainer.run()  # two GRPO steps on in-memory clips
    rl = check_logged_run(tmp_path / "run", trainer.cfg, [s.id for s in trainer.data.train])
    assert len(rl) == 2 and all(r["reward/temporal_iou/missing"] == 0 for r in rl)  # every answer has a span
    assert any(r["adv/zero_frac"] < 1 for r in rl)

    out = tmp_path / "event" / "train.jsonl"
    assert main(["data", "make", "event", "--n", "2", "--seed", "3", "--out", str(out)]) == 0
    written = load_jsonl(out)[0][0]
    path = written.media("video")[0]
    assert path.endswith(".mp4") and written.answer == sample.answer
    clip = load_video(path, sample_id=written.id, backend="pyav")
    assert len(clip.frames) == 16 and clip.timestamps == pytest.approx([k / 4 for k in range(16)], abs=1e-3)
    red = [t for f, t in zip(clip.frames, clip.timestamps)
           if (np.asarray(f, dtype=np.int16)[..., 0] - np.asarray(f, dtype=np.int16)[..., 1]).max() > 150]
    assert [red[0], red[-1] + 0.25] == pytest.approx([a, b], abs=1e-3)  # the seconds in the answer are the video's
