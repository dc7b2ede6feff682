"""The hf engine samples exactly what the trainer scores, on a checkpoint that ships a real Qwen-VL Instruct
`generation_config.json` (sampling defaults, a repetition penalty, two eos ids): no processor but mmrl's runs, every
eos id ends a completion, and the trainer's log-probs of the sampled tokens equal the recorded ones to 1e-4 (fp32)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mmrl.model import zoo
from mmrl.config import ModelConfig
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.rollout.hf import HFEngine, Sampler
from mmrl.rollout.types import SamplingParams

pytestmark = pytest.mark.integration


def _qwen_like(tmp_path, eos_extra: list[int] | None = None) -> str:
    """The zoo's Qwen2-VL, which ships Qwen2-VL-7B-Instruct's generation defaults (eos list <|im_end|>,
    <|endoftext|>), plus two fields other checkpoints ship (`suppress_tokens`, `no_repeat_ngram_size`) and any extra
    eos ids."""
    src = zoo.resolve("zoo:qwen2_vl")
    dst = tmp_path / "qwen_like"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "generation_config.json").read_text())
    assert (cfg["do_sample"], cfg["temperature"], cfg["top_k"], cfg["repetition_penalty"]) == (True, 0.01, 1, 1.05)
    cfg.update(suppress_tokens=[0], no_repeat_ngram_size=2, eos_token_id=cfg["eos_token_id"] + (eos_extra or []))
    (dst / "generation_config.json").write_text(json.dumps(cfg))
    return str(dst)


def _recording(monkeypatch, policy) -> list:
    """Every logits-processor list `generate` builds, recorded."""
    seen = []
    cls = type(policy.hf)
    real = cls._get_logits_processor

    def record(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.append(list(out))
        return out

    monkeypatch.setattr(cls, "_get_logits_processor", record)
    return seen


@pytest.mark.parametrize("loop", ["mmrl", "generate"])
def test_checkpoint_defaults_never_reshape_sampling_and_the_gap_is_rounding(tmp_path, zoo_cache, monkeypatch, loop):
    """mmrl's loop never calls `generate` (so no processor of the checkpoint's); `generate` runs mmrl's sampler only."""
    policy = Policy.load(ModelConfig(path=_qwen_like(tmp_path), freeze_vision=False))
    assert policy.eos_ids == policy.eos_ids[:1] + [policy.tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert policy.hf.generation_config.repetition_penalty == 1.05  # the checkpoint's defaults are loaded …
    seen = _recording(monkeypatch, policy)
    prompts = [policy.encode(s) for s in make("rotation", 3, seed=2)]
    ro = HFEngine(policy, loop=loop).generate(prompts, 4, SamplingParams(temperature=1.0, max_new_tokens=12, seed=5,
                                                                         step=1))
    if loop == "mmrl":
        assert seen == []
    else:
        assert seen and all(len(procs) == 1 and isinstance(procs[0], Sampler) for procs in seen), seen  # … unused
    assert policy.hf.generation_config.repetition_penalty == 1.05  # and left as they were
    with torch.no_grad():
        logp, _ = policy.completion_logprobs(policy.collate(prompts, repeats=4), ro.completion_ids,
                                             ro.completion_mask)
    gap = ((logp - ro.sampling_logprobs).abs() * ro.completion_mask).max()
    assert float(gap) <= 1e-4, float(gap)  # was 0.059 with the checkpoint defaults, 0.007 without renormalising
    assert len(set(ro.texts)) > 1, "temperature 1 must not collapse to the checkpoint's top_k=1"


@pytest.mark.parametrize("loop", ["mmrl", "generate"])
def test_every_eos_id_of_the_checkpoint_ends_a_completion(tmp_path, zoo_cache, loop):
    """Greedy decoding stops at an id that only the checkpoint's eos list names."""
    plain = Policy.load(ModelConfig(path="zoo:qwen2_vl", freeze_vision=False))
    prompts = [plain.encode(s) for s in make("rotation", 2, seed=3)]
    greedy = SamplingParams(greedy=True, max_new_tokens=6)
    first = HFEngine(plain).generate(prompts, 1, greedy).completion_ids[:, 0].tolist()
    policy = Policy.load(ModelConfig(path=_qwen_like(tmp_path, eos_extra=sorted(set(first))), freeze_vision=False))
    ro = HFEngine(policy, loop=loop).generate(prompts, 1, greedy)
    assert ro.completion_mask.sum(1).tolist() == [1, 1] and ro.finish_reasons == ["eos", "eos"]
    assert ro.completion_ids[:, 0].tolist() == first
