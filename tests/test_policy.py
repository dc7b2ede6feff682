"""Policy: geometry-aware SFT targets, vision-token suppression, prompt reuse across completions."""

from __future__ import annotations

import re

import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.datasets.synthetic import make, target_text
from mmrl.model.policy import Policy
from mmrl.rollout import SamplingParams, make_engine


@pytest.fixture(scope="module")
def policy(zoo_cache_module):
    return Policy.load(ModelConfig(path="zoo:qwen2_vl", freeze_vision=False))


@pytest.fixture(scope="module")
def zoo_cache_module(tmp_path_factory):
    import os

    os.environ.setdefault("MMRL_ZOO_CACHE", str(tmp_path_factory.mktemp("zoo")))


def test_grounding_targets_are_rendered_in_the_model_convention(policy):
    sample = make("grounding", 1, seed=3, width=97, height=61)[0]
    prompt = policy.encode(sample)
    (geometry,) = prompt.geometry
    assert (geometry.orig_w, geometry.orig_h) == (97, 61) and geometry.convention == "qwen2_vl"
    grid = prompt.tensors["image_grid_thw"][0]
    assert (geometry.proc_h, geometry.proc_w) == (int(grid[1]) * 14, int(grid[2]) * 14)
    text = target_text(sample, geometry)
    box = [int(v) for v in re.findall(r"-?\d+", text)]
    assert box == geometry.from_original(sample.answer["boxes"])[0]
    back = geometry.to_original([box])[0]
    assert all(abs(a - b) <= 97 / 1000 + 1e-9 for a, b in zip(back, sample.answer["boxes"][0]))


def test_multi_image_answers_use_the_geometry_of_the_image_they_name(policy):
    from PIL import Image

    from mmrl.datasets.sample import BadSampleError, Sample

    def sample(media):
        return Sample(id="two", task="grounding", answer={"boxes": [[10, 5, 60, 40]], "media": media},
                      messages=[{"role": "user", "content": [
                          {"type": "image", "image": Image.new("RGB", (56, 56))},
                          {"type": "image", "image": Image.new("RGB", (200, 90))},
                          {"type": "text", "text": "Locate it in the second picture."}]}])

    prompt = policy.encode(sample(1))
    first, second = prompt.geometry
    assert (first.orig_w, first.orig_h, second.orig_w, second.orig_h) == (56, 56, 200, 90)
    grids = prompt.tensors["image_grid_thw"]
    assert (second.proc_w, second.proc_h) == (int(grids[1][2]) * 14, int(grids[1][1]) * 14)
    assert prompt.answer_geometry is second
    box = [int(v) for v in re.findall(r"-?\d+", target_text(prompt.sample, prompt.answer_geometry))]
    assert box == [50, 56, 300, 444]  # 1000-grid of the 200x90 image, not of the 56x56 one
    with pytest.raises(BadSampleError, match=r"'two'.*media.*2 images/videos"):
        policy.encode(sample(2))


def test_sampling_never_emits_vision_tokens_and_is_seeded_per_prompt(policy):
    engine = make_engine("hf", policy)
    samples = make("rotation", 3, seed=0)
    prompts = [policy.encode(s) for s in samples]
    params = SamplingParams(max_new_tokens=12, seed=5, step=7)
    full = engine.generate(prompts, 4, params)
    assert full.completion_ids.shape[0] == 12
    ids = full.completion_ids[full.completion_mask.bool()]
    assert not torch.isin(ids, torch.tensor(policy.never_sample)).any()
    # The same prompt gives the same completions whatever else is in the batch (and in a different order).
    alone = engine.generate([prompts[2]], 4, params)
    assert alone.texts == full.texts[8:12]
    swapped = engine.generate([prompts[2], prompts[0]], 4, params, batch_prompts=1)
    assert swapped.texts[:4] == full.texts[8:12] and swapped.texts[4:] == full.texts[:4]
    other_step = engine.generate([prompts[2]], 4, SamplingParams(max_new_tokens=12, seed=5, step=8))
    assert other_step.texts != alone.texts

    banned = torch.tensor(policy.never_sample)

    def vision_favoured(module, args, out):  # the vision tokens now win every draw unless they are suppressed
        out = out.clone()
        out[..., banned] += 30.0
        return out

    hook = policy.hf.get_output_embeddings().register_forward_hook(vision_favoured)
    try:
        tempted = engine.generate(prompts, 4, params)
    finally:
        hook.remove()
    assert not torch.isin(tempted.completion_ids[tempted.completion_mask.bool()], banned).any()
    assert tempted.completion_mask.sum() > 0


def test_sampling_logprobs_match_the_training_forward(policy):
    """The engine's log-probs are those of the sampling distribution, the policy's softmax with the never-sampled
    vision tokens removed, and the trainer scores that same distribution (≤ 1e-4, fp32); the plain softmax would
    differ by the removed mass on every token."""
    engine = make_engine("hf", policy)
    prompts = [policy.encode(s) for s in make("rotation", 2, seed=1)]
    ro = engine.generate(prompts, 3, SamplingParams(max_new_tokens=6, seed=0))
    batch = policy.collate(prompts, repeats=3)
    ids, mask = ro.completion_ids, ro.completion_mask
    with torch.no_grad():
        logp, _ = policy.completion_logprobs(batch, ids, mask)
        inputs = dict(batch, input_ids=torch.cat([batch["input_ids"], ids], 1),
                      attention_mask=torch.cat([batch["attention_mask"], mask], 1),
                      mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(ids)], 1))
        logits = policy.hf(**inputs).logits[:, batch["input_ids"].shape[1] - 1 : -1]  # [N, C, V]
    plain = torch.log_softmax(logits, -1).gather(2, ids[..., None]).squeeze(-1) * mask  # no removal
    logits[..., policy.never_sample] = -float("inf")
    sampled = torch.log_softmax(logits, -1).gather(2, ids[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(sampled, ro.sampling_logprobs, atol=1e-4, rtol=1e-4)
    assert float(((logp - ro.sampling_logprobs) * mask).abs().max()) <= 1e-4  # the trainer's = the sampler's
    removed = (sampled - plain)[mask.bool()]  # −log(1 − mass of the vision ids) on each token
    assert (removed > 1e-6).all() and float(removed.max()) < 0.05


def test_prompt_tensors_are_reused_not_recomputed(policy):
    prompt = policy.encode(make("rotation", 1, seed=2)[0])
    batch = policy.collate([prompt], repeats=5)
    pix = prompt.tensors["pixel_values"]
    assert batch["pixel_values"].shape[0] == 5 * pix.shape[0]
    assert torch.equal(batch["pixel_values"][: pix.shape[0]], pix)
    assert batch["input_ids"].shape == (5, prompt.length)


def test_images_loaded_for_a_prompt_are_released_after_processing(policy, tmp_path):
    import gc
    import shutil
    import weakref
    from pathlib import Path

    from mmrl.datasets.sample import Sample
    from mmrl.perception import images as images_module

    photo = tmp_path / "chelsea.jpg"
    shutil.copy(Path(__file__).resolve().parent / "fixtures" / "photos" / "chelsea.jpg", photo)
    sample = Sample(id="p", messages=[{"role": "user", "content": [{"type": "image", "image": str(photo)},
                                                                   {"type": "text", "text": "What is it?"}]}])
    refs = []
    real = images_module.load_image

    def recording(*a, **k):
        im = real(*a, **k)
        refs.append(weakref.ref(im))
        return im

    images_module.load_image = recording
    try:
        inputs = policy.encode(sample)
    finally:
        images_module.load_image = real
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None  # only processed tensors remain
    assert "pixel_values" in inputs.tensors


def test_bf16_autocast_logprobs_track_fp32_and_carry_gradients(policy):
    prompts = [policy.encode(s) for s in make("rotation", 2, seed=4)]
    batch = policy.collate(prompts, repeats=2)
    ids = torch.randint(20, 200, (4, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)

    def grads(logp, ent):  # ∂(Σ log p + Σ H)/∂θ per parameter, then cleared
        (logp.sum() + ent.sum()).backward()
        out = {n: p.grad.clone() for n, p in policy.hf.named_parameters() if p.grad is not None}
        policy.hf.zero_grad(set_to_none=True)
        return out

    exact, ent = policy.completion_logprobs(batch, ids, mask, with_entropy=True)
    g32 = grads(exact, ent)
    policy.runtime.autocast_dtype = torch.bfloat16  # `model.autocast: bfloat16`, owned by the runtime
    try:
        approx, ent = policy.completion_logprobs(batch, ids, mask, with_entropy=True)
        g16 = grads(approx, ent)
    finally:
        policy.runtime.autocast_dtype = None
    assert approx.dtype == torch.float32 and not torch.equal(approx, exact)  # bf16 matmuls did run
    assert torch.allclose(approx, exact.detach(), atol=0.1)
    # every trainable parameter (vision tower included) gets the fp32 gradient up to bf16 rounding: measured
    # cosine ≥ 0.99987 and relative error ≤ 0.016 over the 58 tensors
    assert g16.keys() == g32.keys() == {n for n, p in policy.hf.named_parameters() if p.requires_grad}
    for name, g in g16.items():
        assert g.dtype == torch.float32, name
        assert torch.nn.functional.cosine_similarity(g.flatten(), g32[name].flatten(), dim=0) > 0.999, name
        assert (g - g32[name]).norm() < 0.05 * g32[name].norm(), name


def test_ignore_eos_runs_every_completion_to_the_token_limit(policy):
    engine = make_engine("hf", policy)
    prompts = [policy.encode(s) for s in make("rotation", 2, seed=8)]

    def eos_favoured(module, args, out):  # make EOS the likeliest token everywhere
        out = out.clone()
        out[..., policy.eos_id] += 30.0
        return out

    hook = policy.hf.get_output_embeddings().register_forward_hook(eos_favoured)
    try:
        free = engine.generate(prompts, 4, SamplingParams(max_new_tokens=12, seed=3))
        held = engine.generate(prompts, 4, SamplingParams(max_new_tokens=12, seed=3, ignore_eos=True))
    finally:
        hook.remove()
    assert set(free.finish_reasons) == {"eos"}  # EOS wins unless it is suppressed
    assert (held.completion_mask.sum(1) == 12).all() and set(held.finish_reasons) == {"length"}
    assert not (held.completion_ids == policy.eos_id).any()
