"""Vision once per prompt (mmrl.model.vision_once): a micro-batch whose rows repeat prompts encodes each distinct
image and video once, and its log-probs and every parameter's gradient equal the per-row computation — for each
family, full and LoRA, padded and packed; a pass whose copies differ (PAPO's masking) keeps its own rows."""

from __future__ import annotations

import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.datasets.sample import Sample
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.model.vision_once import VISION_ROWS

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def _compare(media, policy, samples, g: int = 3):
    """Shared vs per-row on the rows of `samples` × g (interleaved, so copies are not adjacent): the encoded pixel
    rows of both, and the largest log-prob difference and relative gradient difference."""
    prompts = [policy.encode(s) for s in samples]
    rows = [prompts[i % len(prompts)] for i in range(g * len(prompts))]  # p0 p1 … p0 p1 …
    n = len(rows)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(20, 200, (n, 7), generator=gen)
    lengths = torch.randint(1, 8, (n,), generator=gen)
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [n, 7] prefixes
    count = media.PixelCount(policy)
    try:
        base = media.grad_pass(policy, policy.collate(rows), ids, mask)
        per_row, count.rows = count.rows, 0
        shared = media.grad_pass(policy, policy.collate(rows, share_vision=True), ids, mask)
        once = count.rows
    finally:
        count.handle.remove()
    assert per_row == media.pixel_rows(rows) and once == media.pixel_rows(prompts)  # each distinct prompt's media once
    dlogp = float((base[0] - shared[0]).abs().max())
    dent = float((base[1] - shared[1]).abs().max())
    assert base[2].keys() == shared[2].keys()
    # relative per parameter, over at least 1e-3 × the model's largest gradient: attention key biases have
    # gradient 0 in exact arithmetic (softmax ignores a shift), ~1e-9 of rounding noise here
    floor = 1e-3 * max(float(g.abs().max()) for g in base[2].values())
    rel = max(float((base[2][k] - shared[2][k]).abs().max()) / max(float(base[2][k].abs().max()), floor)
              for k in base[2])
    return dlogp, dent, rel, base[2]


@pytest.mark.parametrize("packing", ["never", "always"])
@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family", QWEN + ["llava"])
def test_shared_vision_equals_per_row_logprobs_and_gradients(zoo_cache, media, family, mode, packing):
    policy = Policy.load(ModelConfig(path=f"zoo:{family}", mode=mode, freeze_vision=False, packing=packing))
    dlogp, dent, rel, grads = _compare(media, policy, media.samples(family))
    assert dlogp < 1e-5 and dent < 1e-5 and rel < 1e-5, (dlogp, dent, rel)
    vision = [k for k in grads if policy._is_vision(k) and grads[k].abs().max() > 0]
    assert vision  # the vision tower (or its adapters) gets a gradient through the shared features


def test_text_only_prompts_have_nothing_to_share(zoo_cache):
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    text = Sample(id="t", messages=[{"role": "user", "content": [{"type": "text", "text": "Count to three."}]}])
    p = policy.encode(text)
    batch = policy.collate([p, p, p], share_vision=True)
    assert batch[VISION_ROWS][:, 1:3].abs().sum() == 0 and batch[VISION_ROWS][:, 4:].abs().sum() == 0
    ids = torch.randint(20, 200, (3, 4), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    a, _ = policy.completion_logprobs(batch, ids, mask)
    b, _ = policy.completion_logprobs(policy.collate([p, p, p]), ids, mask)
    assert torch.equal(a, b)


def test_copies_whose_pixels_differ_keep_their_own_rows(zoo_cache, media):
    """PAPO's masked view changes pixels per row: sharing must then encode every row's pixels, as before."""
    from mmrl.model.vision_once import shared_vision

    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    p = policy.encode(make("grounding", 1, seed=2, width=70, height=42)[0])
    batch = policy.collate([p, p], share_vision=True)
    inner = policy.hf.model
    assert "mm_encoder_outputs" in shared_vision(inner, dict(batch), batch[VISION_ROWS])
    half = batch["pixel_values"].shape[0] // 2
    pixels = batch["pixel_values"].clone()
    pixels[half:] = 0.0  # the second row's copy masked
    changed = dict(batch, pixel_values=pixels)
    count = media.PixelCount(policy)
    ids, mask = torch.randint(20, 200, (2, 3)), torch.ones(2, 3, dtype=torch.long)
    try:
        with torch.no_grad():
            a, _ = policy.completion_logprobs(changed, ids, mask)
    finally:
        count.handle.remove()
    assert count.rows == 2 * half
    del changed[VISION_ROWS]
    with torch.no_grad():
        b, _ = policy.completion_logprobs(changed, ids, mask)
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a[0], a[1])
