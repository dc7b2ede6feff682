"""The hf engine's own token loop (`mmrl.rollout.hf_decode`, `rollout.hf_loop: mmrl`, the default): each prompt is
prefilled once for its G rows and the KV cache expanded, and the completions, finish reasons, texts and sampling
log-probs equal transformers' `generate` on the per-row path (every row prefilled, every row's media encoded) —
per family, full and LoRA, greedy and sampled with top-k / top-p, images of two sizes, a video and a text-only
prompt in one batch (so rows are left-padded), and prompts of one length (no padding: no mask in decoding)."""

from __future__ import annotations

import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.datasets.sample import Sample
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.rollout.hf import HFEngine
from mmrl.rollout.hf_decode import reason_unsupported
from mmrl.rollout.types import SamplingParams

G = 3
PARAMS = {"greedy": SamplingParams(greedy=True, max_new_tokens=8, seed=3, step=1),
          "sampled": SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=8, seed=3, step=1),
          "plain": SamplingParams(temperature=1.3, max_new_tokens=10, seed=4, step=2)}


def _prompts(policy, family: str):
    text_only = Sample(id="text", messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}])
    samples = [make("grounding", 1, seed=2, width=70, height=42)[0], text_only, make("rotation", 1, seed=5)[0]]
    if family != "llava":
        samples.append(make("event", 1, seed=1, frames=4, size=28)[0])
    return [policy.encode(s) for s in samples]


class EmbeddedRows:
    """The [rows, tokens] of every call of the language model's input embedding."""

    def __init__(self, policy):
        self.calls: list[tuple[int, int]] = []
        emb = policy.hf.get_input_embeddings()
        self.handle = emb.register_forward_hook(lambda m, args, out: self.calls.append(tuple(args[0].shape)))


def _generate(policy, prompts, params, loop: str):
    rec = EmbeddedRows(policy)
    try:
        share = loop == "mmrl"  # the reference: transformers' generate with every row's own media
        return HFEngine(policy, share_vision=share, loop=loop).generate(prompts, G, params), rec.calls
    finally:
        rec.handle.remove()


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava"])
def test_prefill_once_per_group_samples_what_generate_does(zoo_cache, family, mode):
    policy = Policy.load(ModelConfig(path=f"zoo:{family}", mode=mode))
    assert reason_unsupported(policy.hf) is None  # every zoo family runs mmrl's loop, not the fallback
    prompts = _prompts(policy, family)
    width = max(p.length for p in prompts)
    assert min(p.length for p in prompts) < width  # left padding is exercised
    for name, params in PARAMS.items():
        ref, ref_calls = _generate(policy, prompts, params, "generate")
        got, calls = _generate(policy, prompts, params, "mmrl")
        assert torch.equal(got.completion_ids, ref.completion_ids), name
        assert torch.equal(got.completion_mask, ref.completion_mask), name
        assert got.finish_reasons == ref.finish_reasons and got.texts == ref.texts, name
        gap = float((got.sampling_logprobs - ref.sampling_logprobs).abs().max())
        assert gap <= 1e-5, (name, gap)
        assert ref_calls[0] == (G * len(prompts), width)  # generate prefills every row
        assert calls[0] == (len(prompts), width), name  # the loop: each prompt once
        assert calls[1:] == [(G * len(prompts), 1)] * (got.completion_ids.shape[1] - 1), name  # then one token a step
        if name != "greedy":
            assert len(set(got.texts)) > len(prompts)  # real draws: the rows of a group differ
    same = [policy.encode(s) for s in make("rotation", 2, seed=6)]  # equal lengths: no padding, no decode mask
    assert len({p.length for p in same}) == 1
    ref, _ = _generate(policy, same, PARAMS["plain"], "generate")
    got, _ = _generate(policy, same, PARAMS["plain"], "mmrl")
    assert torch.equal(got.completion_ids, ref.completion_ids) and got.texts == ref.texts
    assert float((got.sampling_logprobs - ref.sampling_logprobs).abs().max()) <= 1e-5


def test_the_loop_stops_when_every_row_ended_and_pads_after_eos(zoo_cache):
    """A row that sampled EOS is fed padding; the loop ends at the step where the last row ends, not at
    max_new_tokens — the same widths and masks as `generate`."""
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    prompts = [policy.encode(s) for s in make("rotation", 2, seed=3)]
    greedy = SamplingParams(greedy=True, max_new_tokens=6)
    first = HFEngine(policy).generate(prompts, 1, greedy).completion_ids  # [2, 6]
    policy.eos_ids = policy.eos_ids + [int(first[0, 2])]  # row 0 ends at its third token
    for loop in ("mmrl", "generate"):
        ro = HFEngine(policy, loop=loop).generate(prompts, 1, greedy)
        ends = ro.completion_mask.sum(1).tolist()
        assert ends[0] <= 3, loop
        assert ro.finish_reasons[0] == "eos"
        assert (ro.completion_ids[0, ends[0]:] == policy.pad_id).all(), loop
        assert ro.completion_ids.shape[1] == max(ends), loop  # no step past the last row's end


def test_hf_loop_config_selects_the_loop(zoo_cache):
    from mmrl.config import RolloutConfig
    from mmrl.rollout import make_engine

    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    assert make_engine("hf", policy, RolloutConfig()).loop == "mmrl"
    assert make_engine("hf", policy, RolloutConfig(hf_loop="generate")).loop == "generate"
