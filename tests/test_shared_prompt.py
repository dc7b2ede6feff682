"""The prompt once per group (mmrl.model.shared_prompt, `model.share_prompt`): the rows of one prompt run as one
sequence under a 4-D mask, and their log-probs, entropies and every parameter's gradient equal the per-row
computation — each family, full and LoRA, image, video and text-only prompts, padding rows, ragged completions —
while the language model sees fewer tokens and the vision tower each prompt's media once; and five steps of the
trainer give the unshared run's losses and gradient norms (2 processes: tests/test_distributed.py)."""

from __future__ import annotations

import json

import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.datasets.sample import Sample
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.model.shared_prompt import prompt_groups
from mmrl.model.vision_once import VISION_ROWS

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


class TokenCount:
    """Tokens (rows × columns) the language model is called on, summed over its calls."""

    def __init__(self, policy):
        self.tokens = 0
        self.handle = policy.hf.model.language_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        self.tokens += int(x.shape[0] * x.shape[1])


def _rows_and_completions(prompts, g: int):
    """Rows p0 p1 … p0 p1 … (copies not adjacent), a lone extra prompt, and a padding row (empty mask, as
    `mmrl.train.rows` makes them); ragged prefix completions, one of them empty."""
    rows = [prompts[i % (len(prompts) - 1)] for i in range(g * (len(prompts) - 1))] + [prompts[-1], prompts[0]]
    n = len(rows)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(20, 200, (n, 7), generator=gen)
    lengths = torch.randint(1, 8, (n,), generator=gen)
    lengths[1], lengths[-1] = 0, 0
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [n, 7] prefixes
    return rows, ids, mask


def _compare(media, policy, samples, g: int = 3):
    """Per row vs shared: the largest log-prob and entropy differences, the largest relative gradient difference
    (over 1e-3 × the largest gradient, as in test_vision_once), the gradients, and the language model's tokens and
    the vision tower's pixel rows in each pass."""
    prompts = [policy.encode(s) for s in samples]
    rows, ids, mask = _rows_and_completions(prompts, g)
    batch = policy.collate(rows, share_vision=True)
    tokens, pixels = TokenCount(policy), media.PixelCount(policy)
    try:
        policy.cfg.share_prompt = False
        base = media.grad_pass(policy, batch, ids, mask)
        seen = [(tokens.tokens, pixels.rows)]
        tokens.tokens = pixels.rows = 0
        policy.cfg.share_prompt = True
        shared = media.grad_pass(policy, batch, ids, mask)
        seen.append((tokens.tokens, pixels.rows))
    finally:
        tokens.handle.remove()
        pixels.handle.remove()
    assert base[2].keys() == shared[2].keys()
    floor = 1e-3 * max(float(v.abs().max()) for v in base[2].values())
    rel = max(float((base[2][k] - shared[2][k]).abs().max()) / max(float(base[2][k].abs().max()), floor)
              for k in base[2])
    dlogp, dent = float((base[0] - shared[0]).abs().max()), float((base[1] - shared[1]).abs().max())
    return dlogp, dent, rel, base[2], seen, media.pixel_rows(prompts)


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family", QWEN + ["llava"])
def test_shared_prompt_equals_per_row_logprobs_entropies_and_gradients(zoo_cache, media, family, mode):
    policy = Policy.load(ModelConfig(path=f"zoo:{family}", mode=mode, freeze_vision=False, packing="never"))
    dlogp, dent, rel, grads, seen, distinct_pixels = _compare(media, policy, media.samples(family))
    assert dlogp < 1e-5 and dent < 1e-5 and rel < 1e-5, (dlogp, dent, rel)
    (per_row_tokens, _), (shared_tokens, shared_pixels) = seen
    assert shared_tokens < 0.6 * per_row_tokens, seen  # each prompt once: fails if sharing silently turns off
    assert shared_pixels == distinct_pixels  # each distinct prompt's media encoded once
    assert [k for k in grads if policy._is_vision(k) and grads[k].abs().max() > 0]  # the tower still learns


def test_eager_attention_takes_the_additive_mask(zoo_cache, media):
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl", attn_implementation="eager", packing="never",
                                     freeze_vision=False))
    dlogp, dent, rel, _, seen, _ = _compare(media, policy, media.samples("qwen2_vl"), g=2)
    assert dlogp < 1e-5 and dent < 1e-5 and rel < 1e-5, (dlogp, dent, rel)
    assert seen[1][0] < seen[0][0]


def test_groups_need_equal_tokens_and_bit_identical_media(zoo_cache):
    """Rows join the first row with the same prompt; a copy whose pixels changed (PAPO's masking) stays alone, and
    media rows without the `VISION_ROWS` table are never grouped."""
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    image = policy.encode(make("grounding", 1, seed=2, width=70, height=42)[0])
    text = policy.encode(Sample(id="t", messages=[{"role": "user", "content": [{"type": "text", "text": "Hi."}]}]))
    batch = policy.collate([image, text, image, text, image], share_vision=True)
    rows = batch.pop(VISION_ROWS)
    p = batch["input_ids"].shape[1]
    assert prompt_groups(batch, p, rows) == [0, 1, 0, 1, 0]
    pixels = batch["pixel_values"].clone()
    per = pixels.shape[0] // 3
    pixels[per : 2 * per] = 0.0  # the second image row's copy masked
    assert prompt_groups(dict(batch, pixel_values=pixels), p, rows) == [0, 1, 2, 1, 0]
    assert prompt_groups(batch, p, None) == [0, 1, 2, 3, 4]


def test_share_prompt_refuses_packing(zoo_cache):
    with pytest.raises(ValueError, match="share_prompt"):
        Policy.load(ModelConfig(path="zoo:qwen2_vl", share_prompt=True, packing="always"))


def test_minp_mass_is_shared_too(zoo_cache, media):
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl", packing="never"))
    prompts = [policy.encode(s) for s in media.samples("qwen2_vl")]
    rows, ids, mask = _rows_and_completions(prompts, 2)
    batch = policy.collate(rows, share_vision=True)
    base = policy.completion_minp_mass(batch, ids, mask, kappa=0.1)
    policy.cfg.share_prompt = True
    shared = policy.completion_minp_mass(batch, ids, mask, kappa=0.1)
    assert torch.allclose(base[0], shared[0], atol=1e-5, rtol=0) and torch.equal(base[1], shared[1])


def _train(run_dir, tiny, reward: str, text_jsonl, *extra: str) -> list[dict]:
    """Five RL steps of 3 prompts × G 4 — one image (rotation), one video (event) and one text-only prompt each
    step — in micro-batches of 6 rows (a group split across two, the text-only rows beside video rows); with an
    entropy bonus and a KL term, so the entropies and the reference's pass are compared too. Its RL rows."""
    from mmrl.train.trainer import Trainer

    cfg = tiny(run_dir, f"data.mix=[{{task: rotation, n: 4, kwargs: {{size: 28}}}}, "
               f"{{task: event, n: 4, kwargs: {{frames: 4, size: 28}}}}, {{path: '{text_jsonl}'}}]",
               "data.eval={task: rotation, n: 2}", "data.video.max_frames=4", "trainer.prompts_per_step=3",
               "trainer.micro_batch_size=6", "trainer.threads=1", "stages=[{name: rl, kind: rl, steps: 5, lr: 1.0e-3}]",
               "algorithm.entropy_coef=0.01", "algorithm.kl_coef=0.05", f"rewards=[{{fn: '{reward}', name: len}}]",
               *extra)
    trainer = Trainer(cfg, log=lambda *a: None)
    for step in range(5):
        trainer.progress.step = step
        assert sorted(s.task for s in trainer.batches.samples(3)) == ["", "puzzle/rotation", "temporal/event"]
    trainer.progress.step = 0
    trainer.run()
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_five_training_steps_match_the_unshared_run(tmp_path, tiny, length_reward, monkeypatch, mode):
    """The trainer with `model.share_prompt` on and off: the same completions, and per step the same loss and
    gradient norm to 1e-5 relative (measured: ≤ 2.2e-7), while the shared run did share image and video prompts."""
    import mmrl.model.logprobs as logprobs

    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"id": f"t{i}", "problem": p, "answer": a}) + "\n" for i, (p, a) in enumerate(
        [("What is 2 + 3?", "5"), ("Name a colour.", "red"), ("Say hi.", "hi"), ("Count to two.", "1 2")])))
    shared_calls: list[set[str]] = []  # per shared pass: the media kinds in it
    inner = logprobs._shared_hidden

    def spy(inputs, *args):
        shared_calls.append({k for k in ("pixel_values", "pixel_values_videos") if inputs.get(k) is not None})
        return inner(inputs, *args)

    monkeypatch.setattr(logprobs, "_shared_hidden", spy)
    base = _train(tmp_path / "base", tiny, length_reward, text, f"model.mode={mode}")
    assert not shared_calls
    shared = _train(tmp_path / "shared", tiny, length_reward, text, f"model.mode={mode}", "model.share_prompt=true")
    assert {"pixel_values"} <= set().union(*shared_calls) and {"pixel_values_videos"} <= set().union(*shared_calls)

    def completions(run):
        return [json.loads(x)["completion"] for x in (tmp_path / run / "rollouts.jsonl").read_text().splitlines()]

    assert completions("base") == completions("shared")
    base, shared = [r for r in base if "actor/loss" in r], [r for r in shared if "actor/loss" in r]
    assert [r["train/step"] for r in base] == [r["train/step"] for r in shared] and len(base) == 5
    assert all(r["actor/grad_norm"] > 0 and r["actor/loss"] != 0 for r in base)
    for a, b in zip(base, shared):
        for key in ("actor/loss", "actor/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=0), (a["train/step"], key, a[key], b[key])
        for key in ("actor/entropy", "actor/kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-8), (a["train/step"], key, a[key], b[key])
