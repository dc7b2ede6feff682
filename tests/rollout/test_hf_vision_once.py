"""Vision once per prompt in the hf engine's `generate` loop (`HFEngine(loop="generate")`; mmrl's own loop
prefills each prompt once, tests/rollout/test_hf_decode.py): `generate` encodes each
distinct image and video once per call and hands the features to the prefill, and its completions, finish reasons
and sampling log-probs equal the per-row path's (every row encodes its own copy) — per family, greedy and
sampled with top-k / top-p, image, video and text-only prompts."""

from __future__ import annotations

import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.datasets.sample import Sample
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.rollout.hf import HFEngine
from mmrl.rollout.types import SamplingParams

G = 3
PARAMS = {"greedy": SamplingParams(greedy=True, max_new_tokens=8, seed=3, step=1),
          "sampled": SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=8, seed=3, step=1)}


def _run(media, policy, prompts, params, share: bool):
    """The rollouts of `prompts` × G and the pixel rows the vision tower encoded for them."""
    count = media.PixelCount(policy)
    try:
        ro = HFEngine(policy, share_vision=share, loop="generate").generate(prompts, G, params)
    finally:
        count.handle.remove()
    return ro, count.rows


def _assert_same(a, b):
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert a.finish_reasons == b.finish_reasons and a.texts == b.texts
    gap = float((a.sampling_logprobs - b.sampling_logprobs).abs().max())
    assert gap <= 1e-5, gap


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava"])
def test_shared_vision_generates_what_the_per_row_path_does(zoo_cache, media, family, mode):
    policy = Policy.load(ModelConfig(path=f"zoo:{family}", mode=mode))
    prompts = [policy.encode(s) for s in media.samples(family)]
    assert media.pixel_rows(prompts) > 0
    for name, params in PARAMS.items():
        per_row, rows_per_row = _run(media, policy, prompts, params, share=False)
        shared, rows_shared = _run(media, policy, prompts, params, share=True)
        assert rows_per_row == G * media.pixel_rows(prompts), name  # every row's copy
        assert rows_shared == media.pixel_rows(prompts), name  # each distinct prompt's media once
        _assert_same(shared, per_row)
        if name == "sampled":
            assert len(set(shared.texts)) > 1  # the check compares real draws, not one collapsed text


def test_one_completion_per_prompt_and_text_only_prompts_are_unchanged(zoo_cache, media):
    """G = 1 has nothing to share, a text-only batch no media: both take the per-row path unchanged."""
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    image = policy.encode(make("rotation", 1, seed=5)[0])
    text = [policy.encode(Sample(id=f"t{i}", messages=[{"role": "user", "content": [{"type": "text", "text": t}]}]))
            for i, t in enumerate(["Count to three.", "Name a colour."])]
    params = PARAMS["sampled"]
    for prompts, g in [([image], 1), (text, G)]:
        runs = []
        for share in (False, True):
            count = media.PixelCount(policy)
            try:
                engine = HFEngine(policy, share_vision=share, loop="generate")
                runs.append((engine.generate(prompts, g, params), count.rows))
            finally:
                count.handle.remove()
        (a, rows_a), (b, rows_b) = runs
        assert rows_a == rows_b == g * media.pixel_rows(prompts)
        assert torch.equal(a.completion_ids, b.completion_ids) and a.finish_reasons == b.finish_reasons
        assert torch.equal(a.sampling_logprobs, b.sampling_logprobs)
