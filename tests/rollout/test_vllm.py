"""The `vllm` rollout engine on CPU: its pure parts on real samples and the tiny offline processors, and the engine
class against a stand-in `vllm` module (vLLM itself cannot run here: CUDA only). The stand-ins accept exactly the
vLLM 0.11.0 field names listed below."""

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
import pytest
import torch

import mmrl.rollout.vllm as vllm_module
from mmrl.config import ModelConfig, RolloutConfig, VideoConfig
from mmrl.datasets import synthetic
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.rollout import HFEngine, make_engine
from mmrl.rollout.types import SamplingParams, row_seed
from mmrl.rollout.vllm import (
    MISSING,
    build_requests,
    check_prompt_ids,
    collapse_placeholders,
    fingerprint,
    llm_kwargs,
    lora_free_weights,
    lora_rank,
    parse_outputs,
    prompt_seed,
    sampling_params_kwargs,
    vllm_weight_name,
)

# vLLM 0.11.0, vllm/sampling_params.py, `class SamplingParams(msgspec.Struct)`: its public fields, read from the
# vllm-0.11.0 sdist on PyPI (private ones: _real_n, _all_stop_token_ids, _bad_words_token_ids).
VLLM_011_SAMPLING_FIELDS = {
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "logits_processors",
    "include_stop_str_in_output", "truncate_prompt_tokens", "output_kind", "output_text_buffer_length",
    "structured_outputs", "guided_decoding", "logit_bias", "allowed_token_ids", "extra_args", "bad_words",
}
# vLLM 0.11.0, vllm/engine/arg_utils.py, `class EngineArgs` (what `LLM(**kwargs)` takes): the fields this engine
# may set, each checked there.
VLLM_011_ENGINE_ARGS = {
    "model", "tokenizer", "dtype", "seed", "max_model_len", "gpu_memory_utilization", "enable_sleep_mode",
    "enforce_eager", "logprobs_mode", "generation_config", "enable_lora", "max_lora_rank", "max_loras",
}


class StandInSamplingParams:
    """Accepts the 0.11 field names only and repeats `SamplingParams._verify_args`' checks on the ones we set."""

    def __init__(self, **kw):
        unknown = set(kw) - VLLM_011_SAMPLING_FIELDS
        if unknown:
            raise TypeError(f"unexpected SamplingParams fields {sorted(unknown)}")
        self.__dict__.update(dict(n=1, temperature=1.0, top_p=1.0, top_k=0, seed=None, logprobs=None,
                                  max_tokens=16, logit_bias=None, stop_token_ids=[]), **kw)
        assert isinstance(self.n, int) and self.n >= 1
        assert self.temperature >= 0 and 0 < self.top_p <= 1
        assert isinstance(self.top_k, int) and self.top_k >= -1
        assert self.max_tokens is None or self.max_tokens >= 1
        assert self.logprobs is None or self.logprobs >= 0
        if self.temperature < 1e-5:
            assert self.n == 1, "n must be 1 when using greedy sampling"
        if self.seed is not None:
            assert 0 <= self.seed < 2**64  # torch.Generator.manual_seed's range


@pytest.fixture(scope="module")
def policy(zoo_cache):
    from mmrl.policy import Policy

    return Policy.load(ModelConfig(path="zoo:qwen2_vl"))


@pytest.fixture(scope="module")
def samples():
    text = Sample(id="text-0", messages=[{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}])
    return synthetic.make("grounding", 2, seed=0) + synthetic.make("event", 1, seed=0) + [text]


def _requests(policy, prompts, **kw):
    return build_requests(prompts, policy.processor, model_type=policy.model_type, video=VideoConfig(), **kw)


# ------------------------------------------------------------------------------------------------ requests
def test_collapse_placeholders():
    assert doctest.testmod(vllm_module).failed == 0
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
    (frames,) = req_v["multi_modal_data"]["video"]
    clip = event.media("video")[0]
    keep = [clip.timestamps.index(t) for t in pv.clips[0]]  # the frames the prompt was encoded with
    assert frames.dtype == np.uint8 and frames.shape == (len(keep), *np.asarray(clip.frames[0]).shape)
    assert all(np.array_equal(frames[j], np.asarray(clip.frames[i].convert("RGB"))) for j, i in enumerate(keep))
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


def test_build_requests_prefix_and_uuids(policy, samples):
    p = policy.encode(samples[0])
    ask = policy.with_prefix(p, "<think>it is", "rethink0")
    (base, pref) = _requests(policy, [p, ask])
    tail = policy.tokenizer("<think>it is", add_special_tokens=False)["input_ids"]
    assert pref["prompt_token_ids"] == base["prompt_token_ids"] + tail  # the forced prefix, token for token
    a, b = _requests(policy, [p], uuid_salt="-w1")[0], _requests(policy, [p], uuid_salt="-w2")[0]
    (ua,), (ub,) = a["multi_modal_uuids"]["image"], b["multi_modal_uuids"]["image"]
    assert ua != ub and ua == _requests(policy, [p], uuid_salt="-w1")[0]["multi_modal_uuids"]["image"][0]


def test_qwen2_5_video_rate(zoo_cache, samples):
    from mmrl.policy import Policy

    q = Policy.load(ModelConfig(path="zoo:qwen2_5_vl"))
    p = q.encode(samples[2])
    (req,) = build_requests([p], q.processor, model_type=q.model_type)
    spg = float(p.tensors["second_per_grid_ts"][0])  # 2 frames per grid step at the clip's 4 frames/s
    assert spg == pytest.approx(0.5) and req["mm_processor_kwargs"] == {"fps": pytest.approx(2 / spg)}


# ------------------------------------------------------------------------------------------------ sampling
def test_sampling_params_kwargs():
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12, seed=3, step=4)
    seed = prompt_seed(params, "s1", 4)
    kw = sampling_params_kwargs(params, 4, never_sample=[11, 12], eos_id=2, seed=seed)
    sp = StandInSamplingParams(**kw)
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens) == (4, 0.7, 0.9, 5, 12)
    assert sp.logprobs == 0 and sp.stop_token_ids == [2] and sp.detokenize is False
    assert sp.logit_bias == {11: -math.inf, 12: -math.inf}
    assert seed == row_seed(3, 4, "s1") % (2**63 - 4) and seed + 3 < 2**63  # completion k gets seed + k
    assert prompt_seed(params, "s2", 4) != seed and prompt_seed(replace(params, step=5), "s1", 4) != seed
    greedy = StandInSamplingParams(**sampling_params_kwargs(replace(params, greedy=True), 4, never_sample=[],
                                                            eos_id=2, seed=seed))
    assert (greedy.n, greedy.temperature, greedy.top_p, greedy.top_k, greedy.logit_bias) == (1, 0.0, 1.0, 0, None)
    off = sampling_params_kwargs(replace(params, top_k=0), 2, never_sample=[], eos_id=2, seed=0)
    assert off["top_k"] == 0  # mmrl's "off" is vLLM 0.11's "off"
    with pytest.raises(TypeError, match="unexpected"):
        StandInSamplingParams(max_new_tokens=3)  # the stand-in does reject names vLLM does not know


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
    ro = parse_outputs(outs, 2, tokenizer=policy.tokenizer, pad_id=pad, eos_id=eos,
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
                           pad_id=pad, eos_id=eos)
    assert capped.finish_reasons == ["eos"]  # EOS as the last allowed token: ended, as `hf` says
    greedy = parse_outputs([NS(outputs=[_completion(0, [a, eos], "stop")])] * 2, 2, tokenizer=policy.tokenizer,
                           pad_id=pad, eos_id=eos)
    assert greedy.prompt_index.tolist() == [0, 0] and len(greedy) == 2  # n one-completion requests per prompt


def test_parse_outputs_errors(policy):
    kw = dict(tokenizer=policy.tokenizer, pad_id=policy.pad_id, eos_id=policy.eos_id)
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
    from mmrl.policy import Policy

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
    kw = llm_kwargs(policy, RolloutConfig(), adapter=False)
    assert set(kw) <= VLLM_011_ENGINE_ARGS and kw["model"] == policy.path and kw["dtype"] == "float32"
    assert kw["logprobs_mode"] == "processed_logprobs" and kw["generation_config"] == "vllm"
    assert kw["enable_sleep_mode"] is True and "enable_lora" not in kw
    lora = llm_kwargs(policy, RolloutConfig(vllm_sleep_level=0), adapter=True)
    assert set(lora) <= VLLM_011_ENGINE_ARGS and lora["enable_sleep_mode"] is False
    assert (lora["enable_lora"], lora["max_lora_rank"], lora["max_loras"]) == (True, 16, 1)


# --------------------------------------------------------------------------------------------------- engine
def test_make_engine_without_vllm(policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, installed or not
    with pytest.raises(ImportError) as err:
        make_engine("vllm", policy)
    assert str(err.value) == MISSING == "rollout.engine=vllm needs vLLM (pip install 'mmrl[vllm]'; CUDA only)"
    with pytest.raises(ValueError, match="did you mean 'vllm'"):
        make_engine("vlm", policy)
    assert isinstance(make_engine("hf", policy, RolloutConfig(), VideoConfig()), HFEngine)


class FakeLLM:
    """vLLM's `LLM` as far as the engine uses it; expands prompts with the HF processor, as vLLM's text path does."""

    def __init__(self, processor, **kwargs):
        assert set(kwargs) <= VLLM_011_ENGINE_ARGS, set(kwargs) - VLLM_011_ENGINE_ARGS
        self.processor, self.kwargs, self.calls, self.loaded, self.drop = processor, kwargs, [], [], False

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):
        self.calls.append(("reset",))

    def apply_model(self, fn):
        model = NS(load_weights=lambda weights: {name for name, _ in weights})
        self.loaded.append(fn(model))
        self.calls.append(("load",))
        return [self.loaded[-1]]

    def generate(self, requests, sampling_params, *, use_tqdm=True, lora_request=None):
        self.calls.append(("generate", len(requests)))
        self.last = (requests, sampling_params)
        tok, eos = self.processor.tokenizer, self.processor.tokenizer.eos_token_id
        outs = []
        for req, sp in zip(requests, sampling_params, strict=True):
            text = tok.decode(req["prompt_token_ids"], skip_special_tokens=False)
            images = req.get("multi_modal_data", {}).get("image")
            ids = self.processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()
            comps = [NS(index=k, token_ids=[5 + k, eos], logprobs=_lp([5 + k, eos], [-0.5, -0.25]),
                        finish_reason="stop") for k in range(sp.n)]
            outs.append(NS(prompt_token_ids=ids[:-1] if self.drop else ids, outputs=comps))
        return outs


def test_engine_with_stand_in_vllm(policy, samples, monkeypatch):
    fake = types.ModuleType("vllm")
    fake.SamplingParams = StandInSamplingParams
    fake.LLM = lambda **kw: FakeLLM(policy.processor, **kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    engine = make_engine("vllm", policy, RolloutConfig(vllm_sleep_level=1), VideoConfig())
    llm = engine.llm
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # in-process engine: apply_model shares tensors
    assert llm.calls == [("sleep", 1)] and llm.kwargs["model"] == policy.path
    prompts = [policy.encode(s) for s in (samples[0], samples[3], samples[1])]
    params = SamplingParams(temperature=0.8, max_new_tokens=4, seed=1, step=2)
    ro = engine.generate(prompts, 2, params, batch_prompts=2)
    assert ro.prompt_index.tolist() == [0, 0, 1, 1, 2, 2] and len(ro) == 6
    assert ro.finish_reasons == ["eos"] * 6 and ro.completion_mask.sum().item() == 12
    assert llm.loaded[0] == set(policy.hf.state_dict())  # every weight pushed under its HF name
    assert [c[0] for c in llm.calls[1:]] == ["wake_up", "load", "reset", "wake_up", "generate", "generate", "sleep"]
    assert llm.calls[1] == ("wake_up", ("weights",)) and llm.calls[4] == ("wake_up", ("kv_cache",))
    assert [sp.seed for sp in llm.last[1]] == [prompt_seed(params, samples[1].id, 2)]
    n_calls = len(llm.calls)
    engine.generate(prompts[:1], 2, params)  # weights unchanged: no push
    assert "load" not in [c[0] for c in llm.calls[n_calls:]]
    with torch.no_grad():
        policy.parameters()[0].add_(0.0)  # an in-place update (what an optimizer step does)
    before = fingerprint(policy)
    assert engine.state.pushed != before
    greedy = engine.generate(prompts[:1], 3, replace(params, greedy=True))
    assert len(llm.loaded) == 2 and engine.state.pushed == before
    assert len(llm.last[0]) == 3 and all(sp.n == 1 and sp.temperature == 0.0 for sp in llm.last[1])
    assert greedy.prompt_index.tolist() == [0, 0, 0]
    llm.drop = True  # vLLM counted vision tokens differently: refuse rather than train off-prompt
    with pytest.raises(RuntimeError, match="vLLM ran"):
        engine.generate(prompts[:1], 2, params)
    assert llm.calls[-1] == ("sleep", 1)  # asleep again even after the failure
