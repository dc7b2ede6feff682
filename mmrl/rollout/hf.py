"""The `hf` rollout engine: batched sampling from the training model itself, on the runtime's device.

Two token loops (`rollout.hf_loop`): `mmrl` (default) prefills each prompt once for its G rows, expands the KV
cache and decodes in mmrl's own loop (`mmrl.rollout.hf_decode`); `generate` is transformers' `generate`, every
row prefilled. Both draw the same tokens with the same sampler, below; a model the `mmrl` loop cannot drive
falls back to `generate` with a warning.

Sampling randomness is a function of (seed, step, prompt id, completion index, token position) only: each row's
key is `row_seed(seed, step, prompt id, g)`, and the uniform it draws at completion position t is Philox-4x32-10 of
(key, t) (`mmrl.rollout.philox`), computed on the device for every row and position in one go before decoding.
Each token is then drawn by inverse-CDF sampling from softmax(logits / T) after top-k / top-p (one uniform per
row per token, located by block sums and a float64 cumulative sum inside one block: `inverse_cdf`). So on the CPU
results do not depend on the batch's composition, the number of processes, restarts or the loop (on a GPU the
logits themselves vary in the last bits with the batch shape), and nothing crosses to the host per token but
the loop's "every row ended" flag. Vision special tokens are never sampled.

Vision once per prompt: the `mmrl` loop's prefill sees each prompt once. With `generate`, the G rows of a prompt
show the same images and videos, so the batch is collated with `share_vision` and the distinct media are encoded
once (`mmrl.model.vision_once.shared_vision`), their features expanded to the rows and handed to `generate` as
`mm_encoder_outputs`. transformers forwards that argument to the prefill only
(`MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL`), as it does the pixels it would otherwise encode itself for every
row; the grids stay in the batch for the rope positions. A model whose forward takes no `mm_encoder_outputs`, or
a batch with nothing to share, keeps the per-row path; `HFEngine(share_vision=False)` is that per-row path
(`generate`, every row its own media), the reference the tests compare against.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mmrl.model.vision_once import VISION_ROWS, shared_vision
from mmrl.rollout.hf_decode import decode, reason_unsupported
from mmrl.rollout.philox import uniforms
from mmrl.rollout.types import Rollouts, SamplingParams, row_seed
from mmrl.runtime import HOST


log = logging.getLogger(__name__)
BLOCK = 1024  # vocabulary columns per block of the two-level inverse CDF
FLAT = 2 * BLOCK  # up to this many columns, one float64 cumulative sum over the row is cheaper than two levels


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one id per row from unnormalised probabilities `weights` [N, V] (≥ 0) with uniforms u [N] in [0, 1):
    the first id whose cumulative weight exceeds u · total — never an id of weight 0. Returns (ids [N], totals [N]
    in float64).

    Up to `FLAT` columns, one float64 cumulative sum over each row (a handful of ops: at V = 1,526, N = 16 a
    quarter of the two-level draw's time on the CPU); above it, `_two_level`, which never writes an [N, V]
    float64 cumulative sum (at V = 151,936 the flat sum is ~50× slower)."""
    if weights.shape[1] > FLAT:
        return _two_level(weights, u)
    cum = weights.cumsum(-1, dtype=torch.float64)  # [N, V]
    total = cum[:, -1:].contiguous()  # [N, 1]
    pick = torch.searchsorted(cum, u.to(torch.float64).unsqueeze(1) * total, right=True)  # [N, 1]
    pick = torch.minimum(pick, torch.searchsorted(cum, total, right=False))  # ≤ the last id of non-zero weight
    return pick.squeeze(1), total.squeeze(1)


def _two_level(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`inverse_cdf` in two levels: block sums of `BLOCK` columns pick the block where u · total falls (cumulated
    in float64), then a float64 cumulative sum inside that one block picks the id. The block sums are fp32 pairwise
    sums (relative error ~1e-7 of a block's mass); where they and the block's own cumulative sum disagree in the
    last bits, the draw stays in the block, on its last id of non-zero weight."""
    n, v = weights.shape
    full = v // BLOCK * BLOCK
    sums = [weights[:, :full].view(n, -1, BLOCK).sum(-1)] if full else []  # [N, V // BLOCK]
    if full < v:
        sums.append(weights[:, full:].sum(-1, keepdim=True))
    cum = torch.cat(sums, dim=1).to(torch.float64).cumsum(-1)  # [N, B] cumulative block mass
    total = cum[:, -1:].contiguous()  # [N, 1]
    target = u.to(torch.float64).unsqueeze(1) * total  # [N, 1]
    block = torch.searchsorted(cum, target, right=True)  # [N, 1]
    block = torch.minimum(block, torch.searchsorted(cum, total, right=False))  # ≤ the last block of non-zero mass
    before = torch.where(block > 0, cum.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))  # [N, 1]
    cols = block * BLOCK + torch.arange(BLOCK, device=weights.device)  # [N, BLOCK]
    inner = torch.where(cols < v, weights.gather(1, cols.clamp(max=v - 1)), torch.zeros((), device=weights.device))
    inner_cum = inner.cumsum(-1, dtype=torch.float64)  # [N, BLOCK]
    j = torch.searchsorted(inner_cum, target - before, right=True)  # [N, 1]
    j = torch.minimum(j, torch.searchsorted(inner_cum, inner_cum[:, -1:].contiguous(), right=False))
    return (block * BLOCK + j).squeeze(1), total.squeeze(1)


class Sampler(LogitsProcessor):
    """Suppress ids → temperature → top-k → top-p → draw (inverse CDF, the row's uniform for this position) →
    record the pick's log-prob. `draw(logits, t)` returns the picks (mmrl's own loop, `mmrl.rollout.hf_decode`);
    as a transformers logits processor it returns scores whose argmax is the pick. Works in place on one copy of
    the logits (a few passes over [N, V] per token, no other [N, V] buffer)."""

    def __init__(self, params: SamplingParams, row_seeds: list[int], suppress: list[int], prompt_len: int,
                 device: torch.device):
        self.p = params
        self.prompt_len = prompt_len
        keys = torch.tensor(row_seeds, dtype=torch.int64, device=device)  # [N]
        self.u = None if params.greedy else uniforms(keys, max(params.max_new_tokens, 1))  # [N, C] float64
        self.suppress = torch.tensor(suppress, dtype=torch.long, device=device)
        self.blocked: torch.Tensor | None = None
        self.logprobs: list[torch.Tensor] = []  # per step: [N]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        pick = self.draw(scores, input_ids.shape[1] - self.prompt_len)
        return torch.zeros_like(scores).scatter_(1, pick[:, None], 1.0)  # generate takes the argmax: the pick

    def draw(self, logits: torch.Tensor, t: int | list[int], rows: list[int] | None = None) -> torch.Tensor:
        """The ids [N] drawn from `logits` [N, V] at completion position t; their log-probs are recorded. With
        `rows` (indices of this sampler's rows, one per logits row), each row draws at its own position `t[i]`
        (multi-turn rows in lock-step, `mmrl.rollout.multiturn_batch`): a row's draw is its own arithmetic, so a
        sampler over N rows draws what N one-row samplers do."""
        if self.blocked is None or self.blocked.shape[0] != logits.shape[-1]:  # [V]: 0, or -inf where suppressed
            zeros = torch.zeros(logits.shape[-1], device=logits.device)
            self.blocked = zeros.index_fill_(0, self.suppress, -float("inf"))
        scores = logits.float() + self.blocked  # [N, V] a fresh copy, suppressed ids at -inf
        if self.p.greedy:
            pick = scores.argmax(dim=-1)
            self.logprobs.append(torch.log_softmax(scores, -1).gather(1, pick[:, None]).squeeze(1))
            return pick
        if self.p.temperature != 1.0:
            scores.div_(self.p.temperature)
        if self.p.top_k > 0:
            kth = torch.topk(scores, min(self.p.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if self.p.top_p < 1.0:
            sorted_s, idx = torch.sort(scores, descending=True, dim=-1)
            cum = torch.softmax(sorted_s, -1).cumsum(-1)
            drop = cum - torch.softmax(sorted_s, -1) > self.p.top_p  # keep the smallest set reaching top_p
            scores = scores.masked_fill(drop.scatter(1, idx, drop), -float("inf"))
        top, mode = scores.max(dim=-1, keepdim=True)  # [N, 1]
        weights = scores.sub_(top).exp_()  # [N, V] ∝ the sampling distribution (the mode has weight 1)
        last = self.u.shape[1] - 1
        if rows is None:
            u = self.u[:, min(t, last)]  # [N]
        else:
            at = torch.tensor(t, device=self.u.device).clamp(max=last)
            u = self.u[torch.tensor(rows, device=self.u.device), at]  # [R]
        pick, total = inverse_cdf(weights, u)  # [N], [N]
        w = weights.gather(1, pick[:, None]).squeeze(1)  # [N]
        hit = w > 0
        pick = torch.where(hit, pick, mode.squeeze(1))  # never an id of weight 0 (a parallel scan's last ulp)
        logp = torch.where(hit, w, torch.ones_like(w)).log() - total.log()  # [N] log-prob of the pick (mode: 1)
        self.logprobs.append(logp.float())
        return pick


def neutral_config(**fields) -> GenerationConfig:
    """Greedy argmax over what mmrl's sampler returns, and nothing else: every field that could add a logits
    processor or change the distribution is set to its neutral value (checkpoints ship sampling defaults —
    temperature, top-k/p, repetition penalty — that must never reshape what the trainer scores)."""
    return GenerationConfig(do_sample=False, num_beams=1, temperature=1.0, top_k=0, top_p=1.0, min_p=None,
                            typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
                            encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
                            renormalize_logits=False, **fields)


@contextlib.contextmanager
def checkpoint_defaults_off(hf, gen_cfg: GenerationConfig):
    """transformers fills every field a `generate` call leaves unset from the model's own generation config (the
    checkpoint's `generation_config.json`); within this context that config is `gen_cfg` itself, so no checkpoint
    default (suppress_tokens, bad_words_ids, sequence_bias, …) can add a logits processor."""
    saved = hf.generation_config
    hf.generation_config = gen_cfg
    try:
        yield
    finally:
        hf.generation_config = saved


class HFEngine:
    def __init__(self, policy, share_vision: bool = True, loop: str = "mmrl"):
        self.policy = policy
        # `mmrl`: each prompt prefilled once for its G rows, mmrl's token loop (`mmrl.rollout.hf_decode`);
        # `generate`: transformers' generate, every row prefilled (also the fallback for a model the loop can't drive)
        self.loop = loop if share_vision else "generate"
        # with `generate`: encode each distinct image / video once per call (False: every row its own copy — the
        # per-row reference path the tests compare against)
        self.share_vision = share_vision
        self.fallback_logged = False

    def sync_weights(self, policy) -> None:
        """The hf engine samples from the training model itself: nothing to copy."""
        self.policy = policy

    @torch.no_grad()
    def generate(self, prompts, n: int, params: SamplingParams, batch_prompts: int = 16) -> Rollouts:
        """G = n completions for each prompt (PromptInputs), in chunks of `batch_prompts` prompts."""
        parts = [self._generate(prompts[i : i + batch_prompts], n, params) for i in range(0, len(prompts), batch_prompts)]
        width = max(p[0].shape[1] for p in parts)
        pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
        ids = torch.cat([pad(p[0], self.policy.pad_id) for p in parts])
        mask = torch.cat([pad(p[1], 0) for p in parts])
        logps = torch.cat([pad(p[2], 0.0) for p in parts])
        texts = [t for p in parts for t in p[3]]
        reasons = [r for p in parts for r in p[4]]
        index = torch.arange(len(prompts), device=HOST).repeat_interleave(n)  # [N] host bookkeeping
        return Rollouts(index, ids, mask, logps, texts, reasons, group_size=n)

    def _generate(self, prompts, n: int, params: SamplingParams):
        policy = self.policy
        seeds = [row_seed(params.seed, params.step, p.sample.id, g) for p in prompts for g in range(n)]
        suppress = policy.never_sample + (policy.eos_ids if params.ignore_eos else [])
        prompt_len = max(p.length for p in prompts)  # the collated width (left padding)
        sampler = Sampler(params, seeds, suppress, prompt_len, policy.runtime.device)
        was_training = policy.model.training
        policy.eval()
        ids = policy.call(lambda hf: self._sample(hf, prompts, n, params, sampler))  # [N, C]
        if was_training:
            policy.train()
        is_eos = torch.isin(ids, torch.tensor(policy.eos_ids, dtype=ids.dtype, device=ids.device))  # [N, C]
        ended = is_eos.any(dim=1)
        first_eos = torch.where(ended, is_eos.float().argmax(dim=1), ids.shape[1])  # [N]
        positions = torch.arange(ids.shape[1], device=ids.device)  # [C]
        mask = (positions[None, :] <= first_eos[:, None]).long()  # [N, C] up to and incl. EOS
        logps = torch.stack(sampler.logprobs, dim=1)[:, : ids.shape[1]] * mask  # [N, C]
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, policy.pad_id))
        lengths = mask.sum(1).tolist()  # the completions cross to the host once, for decoding
        texts = policy.tokenizer.batch_decode(
            [row[:k] for row, k in zip(ids.tolist(), lengths)], skip_special_tokens=True
        )
        reasons = ["eos" if e else "length" for e in ended.tolist()]
        never = torch.tensor(policy.never_sample, dtype=ids.dtype, device=ids.device)
        bad = torch.isin(ids, never) & mask.bool() if policy.never_sample else None
        if bad is not None and bad.any():  # cannot happen with suppression; guard against other engines
            for i in bad.any(dim=1).nonzero().flatten().tolist():
                reasons[i] = "error"
        return ids, mask, logps, texts, reasons

    def _sample(self, hf, prompts, n: int, params: SamplingParams, sampler: Sampler) -> torch.Tensor:
        """Completion ids [N, C] (after EOS: padding) — across processes, in lock-step until every rank is done."""
        policy, synced = self.policy, self.policy.dist is not None
        why = reason_unsupported(hf) if self.loop == "mmrl" else None
        if self.loop == "mmrl" and why is None:
            batch = policy.collate(prompts, repeats=1, share_vision=True)  # each prompt once, on the device
            return decode(hf, batch, n, sampler.draw, params.max_new_tokens, policy.eos_ids, policy.pad_id, synced)
        if why is not None and not self.fallback_logged:
            self.fallback_logged = True
            log.warning("hf engine: %s cannot be sampled by mmrl's loop (%s); using transformers' generate",
                        type(hf).__name__, why)
        batch = policy.collate(prompts, repeats=n, share_vision=self.share_vision)  # on the runtime's device
        rows = batch.pop(VISION_ROWS, None)  # [N, 6] host: which rows show the same media
        inputs = batch if rows is None else shared_vision(hf.model, batch, rows)  # pixels → features, once
        gen_cfg = neutral_config(max_new_tokens=params.max_new_tokens, eos_token_id=policy.eos_ids,
                                 pad_token_id=policy.pad_id)
        with checkpoint_defaults_off(hf, gen_cfg):
            out = hf.generate(**inputs, generation_config=gen_cfg, logits_processor=LogitsProcessorList([sampler]),
                              synced_gpus=synced)
        return out[:, batch["input_ids"].shape[1]:]
