"""Extra rollout passes (`rollout.extra_passes`): re-generate on perturbed inputs after the main rollout.

A pass is `fn(ctx, prompts, rollouts, **kwargs) -> (rollouts, stats)`: it returns new rollouts (the ones it was
given stay as they were) that either carry a reward column in `rollouts.columns` (`use: reward`, e.g. ACRE's
option-shuffled second answer in `pair`) or replace completions that the update then trains on (`use: loss`,
e.g. VL-Rethinker's forced rethinking), and its statistics. Passes run in
config order after the main rollout and before scoring; every random choice is seeded by (seed, step, sample
id, index), like the main rollout's sampling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from mmrl.datasets.mcq import shuffle_options
from mmrl.perception.perturb import derangement, shuffle_frames
from mmrl.registry import Registry
from mmrl.rollout.types import Rollouts, SamplingParams, row_seed
from mmrl.runtime import HOST

EXTRA_PASSES: Registry = Registry("extra rollout pass")
TRIGGERS = ("\n\nWait", "\n\nWait, does it seem right?", "\n\nWait, let's double check",
            "\n\nWait, there might be a mistake")  # VL-Rethinker's rethinking triggers


@dataclass
class PassContext:
    policy: Any
    engine: Any
    params: SamplingParams
    batch_prompts: int
    score: Callable[[Rollouts, list], Rollouts]  # the rollouts scored against these prompts (`Scorer.score`)
    correct_threshold: float = 1.0
    video: Any = None  # the run's VideoConfig, for passes that re-encode videos


def _params(ctx: PassContext, max_new_tokens: int | None, greedy: bool) -> SamplingParams:
    return replace(ctx.params, max_new_tokens=max_new_tokens or ctx.params.max_new_tokens, greedy=greedy)


def think_block(text: str) -> str:
    """The completion's `<think>…</think>` block (tags included), or "" when it has none.

    >>> think_block("<think>it points left</think><answer>C</answer>")
    '<think>it points left</think>'
    """
    start = text.find("<think>")
    end = text.find("</think>", start)
    return text[start : end + len("</think>")] if 0 <= start < end else ""


@EXTRA_PASSES.register("shuffle_options")
def shuffled_options_pass(ctx: PassContext, prompts: list, ro: Rollouts, *, column: str = "pair",
                          max_new_tokens: int | None = None, greedy: bool = False) -> tuple[Rollouts, dict[str, float]]:
    """ACRE's second pass ("Answer-Consistent Chain-of-thought RL"; arXiv:2510.10104): each completion's
    question is asked again with its options in a new order and the completion's own `<think>` block as a forced
    prefix; the continuation fills `column` as `{"completion", "permutation"}` for the `acre` reward (None for
    samples that are not multiple choice). One permutation per prompt, never the identity."""
    perms: dict[int, list[int] | None] = {}
    for pi, p in enumerate(prompts):
        gt = p.sample.answer
        opts = gt.get("options") if isinstance(gt, dict) else None
        if not isinstance(opts, list) or len(opts) < 2 or not isinstance(gt.get("question"), str):
            perms[pi] = None
            continue
        perms[pi] = derangement(len(opts), row_seed(ctx.params.seed, "options", ctx.params.step, p.sample.id))
    shuffled = {pi: ctx.policy.encode(shuffle_options(prompts[pi].sample, perm)) for pi, perm in perms.items() if perm}
    rows = [i for i in range(len(ro)) if perms[int(ro.prompt_index[i])]]
    prefixes = {i: think_block(ro.texts[i]) for i in rows}
    asks = [ctx.policy.with_prefix(shuffled[int(ro.prompt_index[i])], prefixes[i], f"options{i}") for i in rows]
    second = ctx.engine.generate(asks, 1, _params(ctx, max_new_tokens, greedy), batch_prompts=ctx.batch_prompts) if asks else None
    values: list[Any] = [None] * len(ro)
    for j, i in enumerate(rows):
        values[i] = {"completion": prefixes[i] + second.texts[j], "permutation": perms[int(ro.prompt_index[i])]}
    return replace(ro, columns={**ro.columns, column: values}), {"asked": float(len(rows))}


def _cut(text: str) -> str:
    """The completion up to where its conclusion starts: before the last `</think>` (so the rethinking continues
    the reasoning), else the last `<answer>`, else the last `\\boxed`; the whole text when it has none."""
    for marker in ("</think>", "<answer>", "\\boxed"):
        cut = text.rfind(marker)
        if cut >= 0:
            return text[:cut]
    return text


@EXTRA_PASSES.register("rethink")
def rethink_pass(ctx: PassContext, prompts: list, ro: Rollouts, *, ratio: float = 0.5,
                 triggers: list[str] | tuple[str, ...] = TRIGGERS, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> tuple[Rollouts, dict[str, float]]:
    """VL-Rethinker's forced rethinking ("Incentivizing Self-Reflection of Vision-Language Models with RL";
    arXiv:2504.08837): a share `ratio` of completions is cut before its final answer, a trigger ("Wait, …")
    is appended and the policy continues from there; a continuation replaces its original completion only if it
    scores as correct (total reward ≥ `algorithm.correct_threshold`), so the update reinforces self-checks that
    end right. The trigger tokens are trained like sampled ones (their sampling log-probs are 0)."""
    picked = []
    for i in range(len(ro)):
        sid = ro_sample_id(prompts, ro, i)
        rng = random.Random(row_seed(ctx.params.seed, "rethink", ctx.params.step, sid, i))
        if rng.random() < ratio and ro.finish_reasons[i] != "error":
            picked.append((i, _cut(ro.texts[i]) + rng.choice(list(triggers))))
    if not picked:
        return ro, {"tried": 0.0, "accepted": 0.0}
    params = _params(ctx, max_new_tokens, False)
    if temperature is not None:
        params = replace(params, temperature=temperature)
    asks = [ctx.policy.with_prefix(prompts[int(ro.prompt_index[i])], prefix, f"rethink{i}") for i, prefix in picked]
    cont = ctx.engine.generate(asks, 1, params, batch_prompts=ctx.batch_prompts)
    tok = ctx.policy.tokenizer
    pieces = []
    for j, (i, prefix) in enumerate(picked):
        head = tok(prefix, add_special_tokens=False)["input_ids"]
        n = int(cont.completion_mask[j].sum())
        ids = head + cont.completion_ids[j, :n].tolist()
        logps = [0.0] * len(head) + cont.sampling_logprobs[j, :n].tolist()
        pieces.append((i, ids, logps, prefix + cont.texts[j], cont.finish_reasons[j]))
    width = max(len(p[1]) for p in pieces)
    dev = ro.device
    cand = Rollouts(
        prompt_index=ro.prompt_index[[i for i, *_ in pieces]],
        completion_ids=torch.tensor([p[1] + [ctx.policy.pad_id] * (width - len(p[1])) for p in pieces], device=dev),
        completion_mask=torch.tensor([[1] * len(p[1]) + [0] * (width - len(p[1])) for p in pieces], device=dev),
        sampling_logprobs=torch.tensor([p[2] + [0.0] * (width - len(p[2])) for p in pieces], device=dev),
        texts=[p[3] for p in pieces], finish_reasons=[p[4] for p in pieces], group_size=1,
    )
    cand = ctx.score(cand, prompts)
    accepted = [j for j in range(len(pieces)) if float(cand.total[j]) >= ctx.correct_threshold
                and cand.finish_reasons[j] != "error"]
    out = replace_rows(ro, [pieces[j][0] for j in accepted], cand, accepted, ctx.policy.pad_id)
    return out, {"tried": float(len(pieces)), "accepted": float(len(accepted))}


def ro_sample_id(prompts: list, ro: Rollouts, i: int) -> str:
    return prompts[int(ro.prompt_index[i])].sample.id


def replace_rows(ro: Rollouts, rows: list[int], cand: Rollouts, src: list[int], pad_id: int) -> Rollouts:
    """`ro` with rows `rows` taken from candidates `src` (token tensors widened to fit); `ro` itself is unchanged."""
    if not rows:
        return ro
    width = max(ro.completion_ids.shape[1], cand.completion_ids.shape[1])
    widen = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731  (a copy)
    ids, mask, logps = widen(ro.completion_ids, pad_id), widen(ro.completion_mask, 0), widen(ro.sampling_logprobs, 0.0)
    c_ids, c_mask, c_lp = widen(cand.completion_ids, pad_id), widen(cand.completion_mask, 0), widen(cand.sampling_logprobs, 0.0)
    texts, reasons = list(ro.texts), list(ro.finish_reasons)
    for i, j in zip(rows, src):
        ids[i], mask[i], logps[i] = c_ids[j], c_mask[j], c_lp[j]
        texts[i], reasons[i] = cand.texts[j], cand.finish_reasons[j]
    return replace(ro, completion_ids=ids, completion_mask=mask, sampling_logprobs=logps, texts=texts,
                   finish_reasons=reasons)


@EXTRA_PASSES.register("shuffle_frames")
def shuffled_frames_pass(ctx: PassContext, prompts: list, ro: Rollouts, *, column: str = "temporal",
                         samples: int | None = None) -> tuple[Rollouts, dict[str, float]]:
    """T-GRPO's contrast (Video-R1, arXiv:2503.21776): each multi-frame prompt is also answered with its
    frames shuffled (`samples` completions, default G/2); the column gets, per completion, whether it is correct
    and its prompt's accuracy on ordered and on shuffled frames, for the `temporal_bonus` reward. Correctness is
    the run's total reward ≥ `algorithm.correct_threshold`, scored here on both sets."""
    g = ro.group_size
    k = samples or max(1, g // 2)
    ordered = ctx.score(ro, prompts)
    correct = [bool(v >= ctx.correct_threshold) for v in ordered.total.tolist()]
    shuffled_inputs, which = [], []
    for pi, p in enumerate(prompts):
        seed = row_seed(ctx.params.seed, "frames", ctx.params.step, p.sample.id)
        if p.sample.media("video"):  # a video: its decoded frames are shuffled before the processor sees them
            encoded = ctx.policy.encode(p.sample, video=ctx.video, frame_seed=seed)
        elif len(p.sample.media("image")) >= 2:  # frames given as images
            encoded = ctx.policy.encode(shuffle_frames(p.sample, derangement(len(p.sample.media("image")), seed)))
        else:
            continue
        shuffled_inputs.append(ctx.policy.with_prefix(encoded, "", "frames"))
        which.append(pi)
    values: list[Any] = [None] * len(ro)
    if which:
        contrast = ctx.engine.generate(shuffled_inputs, k, ctx.params, batch_prompts=ctx.batch_prompts)
        contrast = replace(contrast, prompt_index=torch.tensor(which, device=HOST).repeat_interleave(k))
        contrast = ctx.score(contrast, prompts)
        for j, pi in enumerate(which):
            shuffled_acc = float((contrast.total[j * k : (j + 1) * k] >= ctx.correct_threshold).float().mean())
            rows = [i for i in range(len(ro)) if int(ro.prompt_index[i]) == pi]
            ordered_acc = sum(correct[i] for i in rows) / len(rows)
            for i in rows:
                values[i] = {"correct": correct[i], "ordered_acc": ordered_acc, "shuffled_acc": shuffled_acc}
    return replace(ro, columns={**ro.columns, column: values}), {"prompts": float(len(which))}
