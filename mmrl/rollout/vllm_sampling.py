"""Sampling parameters in, completions out, for the `vllm` rollout engine (`mmrl.rollout.vllm`).

- Sampling (`sampling_params_kwargs`): temperature / top-p / top-k as in `hf`, `seed` from `row_seed(seed, step,
  prompt id)` (vLLM gives the k-th of n completions seed + k), `logprobs=0` (the sampled token's log-prob) under
  the engine's `logprobs_mode="processed_logprobs"` (after logit bias, temperature, top-k/top-p: the sampling
  distribution, like `hf`'s), vision special tokens at logit bias −inf, every eos id of the checkpoint as a stop
  id, and none of the checkpoint's generation defaults (`generation_config="vllm"`).
- Outputs (`parse_outputs`): rows prompt-major (rows g·G … g·G+G−1 are prompt g's), right-padded, mask up to and
  including the first eos; texts decoded by mmrl's tokenizer exactly as `hf` does; "stop" → "eos", "length" →
  "length". The expanded prompt vLLM ran (`RequestOutput.prompt_token_ids`) must equal mmrl's
  (`check_prompt_ids`), else it raises.
"""

from __future__ import annotations

from typing import Any

import torch

from mmrl.rollout.types import Rollouts, SamplingParams, row_seed
from mmrl.runtime import HOST


def prompt_seed(params: SamplingParams, sample_id: str, n: int) -> int:
    """The request's vLLM seed: from (seed, step, prompt id) only; vLLM seeds completion k with seed + k."""
    return row_seed(params.seed, params.step, sample_id) % (2**63 - n)


def sampling_params_kwargs(params: SamplingParams, n: int, *, never_sample: list[int], eos_ids: list[int],
                           seed: int) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for G = n completions of one prompt.

    Greedy → temperature 0 and n = 1 (vLLM refuses greedy with n > 1; the engine repeats the request instead).
    top_k 0 = off. Vision special tokens (and, with `ignore_eos`, the eos ids, as `hf` does) get logit bias −inf
    (applied before temperature, in greedy decoding too); every eos id stops a completion. Texts are decoded by
    mmrl, so vLLM does not detokenize.
    """
    greedy = params.greedy
    suppress = list(never_sample) + (list(eos_ids) if params.ignore_eos else [])
    return dict(
        n=1 if greedy else n,
        temperature=0.0 if greedy else params.temperature,
        top_p=1.0 if greedy else params.top_p,
        top_k=0 if greedy else params.top_k,
        max_tokens=params.max_new_tokens,
        seed=seed,
        logprobs=0,
        stop_token_ids=[] if params.ignore_eos else [int(i) for i in eos_ids],
        ignore_eos=params.ignore_eos,
        detokenize=False,
        logit_bias={int(i): float("-inf") for i in suppress} or None,
    )


def check_prompt_ids(got: list[list[int]], want: list[list[int]], names: list[str]) -> None:
    """vLLM's expanded prompts must be the trainer's: else completions are scored under another context."""
    for g, w, name in zip(got, want, names):
        g = list(g)
        if g != w:
            at = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            raise RuntimeError(
                f"rollout.engine=vllm: prompt {name!r}: vLLM ran {len(g)} prompt tokens, mmrl encoded {len(w)}; "
                f"first difference at position {at} (vLLM {g[at:at + 3]}, mmrl {w[at:at + 3]}): its multimodal "
                f"processor counted vision tokens differently (processor settings / transformers version)")


def parse_outputs(outputs, n: int, *, tokenizer, pad_id: int, eos_ids: list[int],
                  never_sample: list[int] = ()) -> Rollouts:
    """`Rollouts` from vLLM `RequestOutput`s (G = n completions per prompt, or n requests of one completion).

    Each completion: `token_ids`, `logprobs` (one {token id: Logprob} per token), `finish_reason`, `index`.
    """
    rows = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
    if not rows or len(rows) % n:
        raise ValueError(f"vLLM returned {len(rows)} completions, not a multiple of the group size {n}")
    eos = set(eos_ids)
    ids, logps, reasons = [], [], []
    for r, c in enumerate(rows):
        toks = [int(t) for t in c.token_ids]
        if c.logprobs is None or len(c.logprobs) != len(toks):
            raise ValueError(f"vLLM completion {r} has no log-prob per token (set SamplingParams(logprobs=0))")
        lp = []
        for t, entry in zip(toks, c.logprobs):
            if t not in entry:
                raise ValueError(f"vLLM completion {r}: no log-prob for its sampled token {t}")
            lp.append(float(entry[t].logprob))
        end = next((k + 1 for k, t in enumerate(toks) if t in eos), len(toks))
        ended = bool(toks) and toks[end - 1] in eos  # an eos as the last allowed token ended it too, as in `hf`
        reason = ("eos" if ended else "length") if c.finish_reason in ("stop", "length") else "error"
        if set(toks[:end]) & set(never_sample):  # cannot happen with the −inf bias; never trained on
            reason = "error"
        ids.append(toks[:end])
        logps.append(lp[:end])
        reasons.append(reason)
    width = max(1, max(len(t) for t in ids))
    # parsed on the host; `VLLMEngine.generate` moves them to the runtime's device
    completion_ids = torch.tensor([t + [pad_id] * (width - len(t)) for t in ids], dtype=torch.long, device=HOST)
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in ids], dtype=torch.long, device=HOST)
    sampling = torch.tensor([v + [0.0] * (width - len(v)) for v in logps], dtype=torch.float32, device=HOST)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    index = torch.arange(len(rows) // n, device=HOST).repeat_interleave(n)  # [N]
    return Rollouts(index, completion_ids, mask, sampling, texts, reasons, group_size=n)
