"""Shared fixtures: one zoo cache for the whole session, small configs, a reward with variance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is available (`pytest -m gpu` on a GPU machine); `vllm` tests only where vLLM
    imports (CI runs them in the vLLM venv: `.ci/run`); elsewhere they skip."""
    import importlib.util

    import torch

    missing = {"gpu": None if torch.cuda.is_available() else "needs a CUDA GPU",
               "vllm": None if importlib.util.find_spec("vllm") else "needs vLLM (the vLLM venv: README, .ci/run)"}
    for item in items:
        for mark, reason in missing.items():
            if reason and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory) -> Path:
    """Every test (and subprocess) shares one zoo cache, built at most once per family."""
    path = tmp_path_factory.mktemp("zoo")
    old = os.environ.get("MMRL_ZOO_CACHE")
    os.environ["MMRL_ZOO_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MMRL_ZOO_CACHE", None)
    else:
        os.environ["MMRL_ZOO_CACHE"] = old


@pytest.fixture(scope="session")
def reward_plugins(tmp_path_factory) -> str:
    """A plug-in file with two rewards in [0, 1): `spread` varies within every group (a hash of the text);
    `odd_only` is `spread` on odd-indexed prompts and ties every even-indexed group at 0 (for group filters)."""
    path = tmp_path_factory.mktemp("plugins") / "rewards.py"
    path.write_text(
        "def spread(completions, **columns):\n"
        "    return [float(sum(map(ord, c)) % 97) / 97 for c in completions]\n\n"
        "def odd_only(completions, prompt_index, **columns):\n"
        "    return [float(sum(map(ord, c)) % 97) / 97 if p % 2 else 0.0 for c, p in zip(completions, prompt_index)]\n"
    )
    return str(path)


@pytest.fixture(scope="session")
def length_reward(tmp_path_factory) -> str:
    """A plug-in reward with within-group variance even for an untrained policy: characters / 10."""
    path = tmp_path_factory.mktemp("plugins") / "length_reward.py"
    path.write_text("def score(completions, **columns):\n    return [min(len(c), 40) / 10 for c in completions]\n")
    return f"{path}:score"


def _tiny_overrides(run_dir: Path, *extra: str) -> list[str]:
    """A few-second run of the demo recipe: 4 prompts × G 4, 2 SFT + 3 RL steps, 8 eval images. The demo's
    dynamic sampling and entropy bonus are off: on an untrained model they would drop every group of a few-step
    run (nothing would train) and triple its generation."""
    return [
        f"run.dir={run_dir}", "run.progress=false",
        "algorithm.group_filter=none", "algorithm.max_gen_batches=1", "algorithm.entropy_coef=0.0",
        "data.train.n=32", "data.eval.n=8", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "trainer.prompts_per_step=4", "trainer.sft_batch_size=4", "trainer.eval_every=0",
        "trainer.log_rollouts_every=1", "trainer.micro_batch_size=8",
        "stages=[{name: warm, kind: sft, steps: 2, lr: 1.0e-3, labels: random}, {name: rl, kind: rl, steps: 3}]",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny(zoo_cache):
    """`tiny(run_dir, *overrides)` → a validated Config for a few-second run of the demo recipe."""
    from mmrl.cli.checks import load_config

    def make(run_dir: Path, *extra: str):
        return load_config(REPO / "recipes" / "demo.yaml", _tiny_overrides(run_dir, *extra))

    make.overrides = _tiny_overrides
    return make


def _write_video(path, *, frames: int, fps: int, width: int, height: int, event: tuple[int, int],
                 background=lambda i: 40 + 8 * i):
    """An MPEG-4 clip written with PyAV: grey frames (level `background(i)`) with a red square in frames
    [event[0], event[1]) — the "event" temporal tests look for."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(frames):
            img = np.full((height, width, 3), background(i), dtype=np.uint8)
            if event[0] <= i < event[1]:
                img[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def write_video():
    """`write_video(path, frames=, fps=, width=, height=, event=(start, end))` writes a test clip (needs PyAV)."""
    pytest.importorskip("av")
    return _write_video


def _check_logged_run(run_dir, cfg, ids, known=None) -> list[dict]:
    """The RL rows of a run, after checking its logged rollouts: every completion answers a prompt of `ids`, each
    reward component is what that reward function gives the completion called directly (or `known[name]`, for one
    that reads a column the run computes), the total their weighted sum; and each RL step has a gradient exactly
    when some advantage is not 0."""
    from mmrl.rewards import get

    known = known or {}
    logged = [json.loads(x) for x in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert logged and {r["sample_id"] for r in logged} <= set(ids)
    for r in logged:
        want = {t.name or t.fn: known[t.name or t.fn] if (t.name or t.fn) in known else
                get(t.fn)([r["completion"]], answer=[r["answer"]], **t.kwargs)[0] for t in cfg.rewards}
        assert r["components"] == want
        assert r["reward"] == pytest.approx(sum(t.weight * want[t.name or t.fn] for t in cfg.rewards), abs=1e-6)
    rl = [r for r in (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines())
          if r.get("train/stage") == "rl"]
    assert all((r["actor/grad_norm"] > 0) == (r["adv/zero_frac"] < 1) for r in rl)
    return rl


@pytest.fixture(scope="session")
def check_logged_run():
    """`check_logged_run(run_dir, cfg, ids, known=None)`: check a finished run's logged rollouts and return its RL
    metric rows (see `_check_logged_run`)."""
    return _check_logged_run


# --------------------------------------------------- media batches (vision once, prompt once: model and hf engine)
def _media_samples(family: str):
    """Image, text-only, (video,) and another image prompt — uneven lengths, so the prompts are left-padded; LLaVA
    (no video) without the video."""
    from mmrl.datasets.sample import Sample
    from mmrl.datasets.synthetic import make

    text_only = Sample(id="text", messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}])
    image = make("grounding", 1, seed=2, width=70, height=42)[0]
    other = make("rotation", 1, seed=5)[0]
    if family == "llava":
        return [image, text_only, other]
    return [image, text_only, make("event", 1, seed=1, frames=4, size=28)[0], other]


class _PixelCount:
    """Pixel rows (patches, or LLaVA's images) the vision tower encodes, summed over its calls; `handle.remove()`
    ends the count."""

    def __init__(self, policy):
        inner = policy.hf.model
        tower = getattr(inner, "visual", None) or inner.vision_tower
        self.rows = 0
        self.handle = tower.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.rows += int((args[0] if args else kwargs["pixel_values"]).shape[0])


def _pixel_rows(prompts) -> int:
    """Pixel rows of the images and videos of encoded `prompts` (each counted as often as it is listed)."""
    return sum(int(p.tensors[k].shape[0]) for p in prompts for k in ("pixel_values", "pixel_values_videos")
               if k in p.tensors)


def _grad_pass(policy, batch, ids, mask):
    """Log-probs and entropies [n, C], and every trainable parameter's gradient of a scalar of both."""
    import torch

    policy.model.zero_grad(set_to_none=True)
    logp, ent = policy.completion_logprobs(batch, ids, mask, temperature=0.8, with_entropy=True)
    weights = torch.linspace(-1.0, 1.0, logp.numel()).view_as(logp)
    ((logp * weights).sum() + 0.1 * (ent * mask).sum()).backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad and p.grad is not None}
    return logp.detach(), ent.detach(), grads


@pytest.fixture(scope="session")
def media():
    """Helpers of the tests that share media across a batch's rows (test_vision_once, test_shared_prompt,
    rollout/test_hf_vision_once): `samples(family)` mixed prompts, `PixelCount(policy)` a vision-tower counter,
    `pixel_rows(prompts)` the pixel rows of encoded prompts, `grad_pass(policy, batch, ids, mask)` (log-probs,
    entropies, gradients)."""
    from types import SimpleNamespace

    return SimpleNamespace(samples=_media_samples, PixelCount=_PixelCount, pixel_rows=_pixel_rows,
                           grad_pass=_grad_pass)
