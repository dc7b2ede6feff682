"""Padding-free packing (mmrl.model.packing): packed log-probs equal the padded computation, for mixed image, video and
text-only prompts on each Qwen-VL family (3-D rope positions)."""

from __future__ import annotations

import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.datasets.sample import Sample
from mmrl.datasets.synthetic import make
from mmrl.model.packing import pack
from mmrl.model.policy import Policy
from mmrl.runtime import Runtime


def _mixed_samples() -> list[Sample]:
    text_only = Sample(id="text", messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}])
    image = make("grounding", 1, seed=2, width=70, height=42)[0]
    video = make("event", 1, seed=1, frames=4, size=28)[0]
    return [image, text_only, video, make("rotation", 1, seed=5)[0]]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_packed_logprobs_equal_padded_on_mixed_image_video_text_batches(zoo_cache, family):
    policy = Policy.load(ModelConfig(path=f"zoo:{family}", freeze_vision=False, packing="never"))
    prompts = [policy.encode(s) for s in _mixed_samples()]
    assert len({p.length for p in prompts}) == 4  # uneven lengths: real padding in the padded batch
    batch = policy.collate(prompts, repeats=2)  # [8, P]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(20, 200, (8, 9), generator=gen)  # ordinary tokens only
    lengths = torch.tensor([9, 3, 0, 5, 9, 1, 7, 2])
    mask = (torch.arange(9).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [8, 9] prefixes, one empty
    padded, padded_ent = policy.completion_logprobs(batch, ids, mask, temperature=0.8, with_entropy=True)
    policy.cfg.packing = "always"
    assert policy.packs
    packed, packed_ent = policy.completion_logprobs(batch, ids, mask, temperature=0.8, with_entropy=True)
    assert torch.allclose(packed, padded, atol=1e-5, rtol=0) and torch.allclose(packed_ent, padded_ent, atol=1e-5)
    assert (packed[mask == 0] == 0).all() and padded.abs().sum() > 1  # masked cells 0, real ones not


def test_pack_keeps_only_real_tokens_and_restarts_positions():
    inputs = {"input_ids": torch.tensor([[0, 0, 5, 6, 7, 0], [8, 9, 10, 11, 12, 13]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])}
    completion_mask = torch.tensor([[1, 0], [1, 1]])  # prompt length 4, completions of 1 and 2 tokens
    p = pack(inputs, 4, completion_mask)
    assert p.inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert p.inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5]]
    assert p.lengths == [3, 6] and "attention_mask" not in p.inputs
    # row 0: token 7 (the completion) is predicted by 6 at packed column 1; row 1: 12 and 13 by 11 and 12
    assert p.index.tolist() == [[1, 0], [6, 7]]
    with pytest.raises(ValueError, match="prefixes"):
        pack(inputs, 4, torch.tensor([[0, 1], [1, 1]]))


def test_packing_a_qwen_vl_batch_without_mm_token_type_ids_is_refused(zoo_cache):
    """Without `mm_token_type_ids` the 3-D positions cannot be computed; the packed row must not silently get text
    positions (it used to)."""
    from mmrl.config import ModelConfig
    from mmrl.datasets.synthetic import make
    from mmrl.model.packing import rope_index_of
    from mmrl.model.policy import Policy

    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    batch = policy.collate([policy.encode(s) for s in make("rotation", 2, seed=0)], repeats=1)
    mask = torch.ones(2, 1, dtype=torch.long)
    batch = {k: (torch.cat([v, v[:, -1:]], 1) if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
             for k, v in batch.items()}
    prompt_len = batch["input_ids"].shape[1] - 1
    assert pack(batch, prompt_len, mask, rope_index_of(policy.hf)).inputs["position_ids"].shape[0] == 4  # 1 + 3-D
    del batch["mm_token_type_ids"]
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        pack(batch, prompt_len, mask, rope_index_of(policy.hf))


@pytest.mark.integration
def test_fused_packed_training_reproduces_the_naive_padded_run(tmp_path, tiny, length_reward):
    """Five RL steps through the fused kernel with packing give the losses, KLs and entropies of the plain run
    (naive log-softmax over full logits, padded batches) — fp32, to 1e-5 — and its gradient norms."""
    import json

    from mmrl.train.trainer import Trainer

    def run(name, *over):
        cfg = tiny(tmp_path / name, f"rewards=[{{fn: '{length_reward}', name: len}}]", "algorithm.kl_coef=0.05",
                   "algorithm.entropy_coef=0.01", "stages=[{name: rl, kind: rl, steps: 5}]", *over)
        trainer = Trainer(cfg, log=lambda *a: None)
        trainer.run()
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "actor/loss" in r], trainer.policy.hf.state_dict()

    plain, w_plain = run("plain", "kernels.backend=naive", "model.packing=never")
    fused, w_fused = run("fused", "kernels.backend=torch", "model.packing=always", "kernels.chunk_size=7")
    assert len(plain) == len(fused) == 5
    for a, b in zip(plain, fused):
        for key in ("actor/loss", "actor/kl", "actor/entropy"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
        assert b["actor/grad_norm"] == pytest.approx(a["actor/grad_norm"], rel=1e-4)
    assert any(abs(r["actor/loss"]) > 1e-4 for r in plain)  # the runs did learn something to compare
    # Weights agree to Adam's amplification of float rounding (g/√v magnifies differences in tiny gradients)
    assert max((w_plain[k] - w_fused[k]).abs().max().item() for k in w_plain) < 1e-3


@pytest.mark.gpu
def test_flash_attention_varlen_packing_matches_padded_sdpa_on_gpu(zoo_cache):
    """GPU only (skipped here): the flash-attention 2 varlen path on packed rows gives the padded sdpa log-probs
    (bf16 model, so within bf16 tolerance)."""
    pytest.importorskip("flash_attn")
    samples = _mixed_samples()
    out = {}
    for attn, packing in (("sdpa", "never"), ("flash_attention_2", "always")):
        policy = Policy.load(ModelConfig(path="zoo:qwen2_vl", dtype="bfloat16", attn_implementation=attn,
                                         packing=packing), runtime=Runtime(torch.device("cuda")))
        assert policy.packs == (attn == "flash_attention_2")
        prompts = [policy.encode(s) for s in samples]
        batch = policy.collate(prompts, repeats=2)
        ids = torch.randint(20, 200, (8, 9), generator=torch.Generator().manual_seed(0)).cuda()
        mask = (torch.arange(9).unsqueeze(0) < torch.tensor([9, 3, 0, 5, 9, 1, 7, 2]).unsqueeze(1)).long().cuda()
        with torch.no_grad():
            out[attn], _ = policy.completion_logprobs(batch, ids, mask)
    assert torch.allclose(out["flash_attention_2"], out["sdpa"], atol=0.05)
