"""The RL update of one rollout batch: log-prob passes, mini-batches × epochs, micro-batch accumulation.

Stages (each looked up by name in `mmrl.algorithms`, never by method): π_old comes with the batch when the update
needs it (several optimizer steps per batch, the KL in the reward; `RLStep.with_old_logprobs` computes it); each
optimizer step then sums `objective` over micro-batches with the mini-batch's global normalisers, so the gradient
does not depend on the micro-batch size. What a method adds to the policy loss — π_ref's pass, PAPO's masked-image
pass, Lp-Reg's min-p pass, rehearsal's own backward, TIS weights, Clip-/KL-Cov — is a registered regulariser
(`mmrl.train.regularisers`) whose hooks the loop calls at fixed points; the loop itself has no per-method branch.
Every tensor is on the runtime's device (`policy.runtime`); across processes each rank computes its block of rows
(`Runtime.rows`). Shapes: N completions, C tokens, n rows of a micro-batch, W its longest completion.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterator

import torch

from mmrl.algorithms import TokenTerms, objective
from mmrl.rollout.types import Rollouts, row_seed
from mmrl.runtime import HOST
from mmrl.train.regularisers import MicroBatch, Regulariser, UpdateContext, active_regularisers
from mmrl.train.rows import chunks, micro_inputs, row_index


def logprob_gap(trainer_logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """(Σ |trainer − sampler|, max, number of tokens) over the sampled tokens of a micro-batch [n, C]: real tokens
    with a recorded sampling log-prob (a forced prefix records 0 and is left out). verl and TRL users watch the same
    gap: it should be float rounding with the `hf` engine, and TIS (`rollout.tis_cap`) corrects a real one."""
    sampled = mask.bool() & (sampling_logp != 0)
    diff = (trainer_logp.detach().float() - sampling_logp.float()).abs().masked_fill(~sampled, 0.0)
    return float(diff.sum()), float(diff.max()) if diff.numel() else 0.0, float(sampled.sum())


def needs_old_logp(algo) -> bool:
    """π_old must be stored before updating when one batch feeds several optimizer steps or the KL is in the reward;
    with a single step π_old = sg[π_θ] exactly (ratio 1) and no extra pass is needed."""
    return algo.ppo_epochs * algo.mini_batches > 1 or (algo.kl_coef > 0 and algo.kl_placement == "reward")


def rl_update(
    policy, prompts, ro: Rollouts, algo, *, micro: int, temperature: float, max_tokens: int, seed: int, step: int,
    optimizer_step: Callable[[bool], float], old_logp: torch.Tensor | None = None, rehearsal=None,
    tis_cap: float | None = None,
) -> dict[str, float]:
    """Run `ppo_epochs` × `mini_batches` optimizer steps on one rollout batch (fewer when the N rows split into
    fewer chunks of ⌈N / mini_batches⌉, e.g. 7 of 16 → 6); returns `actor/*` metrics.

    `old_logp` [N, C]: π_old, required when `needs_old_logp(algo)` (else sg[π_θ] is used). `optimizer_step(last)`
    clips, steps and zeroes the gradients (advancing the LR schedule when `last`); `rehearsal` = (π₀'s prompts,
    stored completions, their log-probs) turns on the rehearsal term; `tis_cap` turns on truncated
    importance weights min(π_old / π_sampler, cap) on the policy term.
    """
    size = -(-len(ro) // algo.mini_batches)  # ceil: fewer, fuller chunks when mini_batches does not divide N
    ctx = UpdateContext(policy, prompts, ro, algo, micro=micro, temperature=temperature, seed=seed, step=step,
                        total_steps=algo.ppo_epochs * -(-len(ro) // size), rehearsal=rehearsal, tis_cap=tis_cap)
    regs = active_regularisers(ctx)
    for reg in regs:  # passes that must see the weights before they change (π_ref)
        reg.before(ctx)
    if old_logp is None and needs_old_logp(algo):
        raise ValueError("rl_update: this update takes several optimizer steps or places the KL in the reward, so "
                         "it needs π_old from before the first one (old_logp; RLStep.with_old_logprobs)")
    sums: dict[str, float] = defaultdict(float)
    gaps: list[float] = []  # max |trainer − sampler| log-prob per micro-batch, before any weight changes
    grad_norms: list[float] = []
    policy.train()
    for epoch, first, mini, last in _mini_batches(len(ro), size, algo, seed, step):
        ctx.epoch = epoch
        idx = row_index(mini, ro.device)
        norms = dict(global_tokens=int(ro.completion_mask[idx].sum()), global_seqs=len(mini), max_tokens=max_tokens)
        for rows in chunks(policy.runtime.rows(mini), micro):
            _micro_step(ctx, regs, rows, norms, old_logp, sums, gaps if first else None)
        for reg in regs:  # per optimizer step, after its micro-batches (rehearsal's own backward)
            for key, v in reg.mini(ctx).items():
                sums[key] += v
        grad_norms.append(optimizer_step(last))  # LR: once per step
    return _metrics(policy, ro, regs, sums, gaps, grad_norms)


def _mini_batches(n: int, size: int, algo, seed: int, step: int) -> Iterator[tuple[int, bool, list[int], bool]]:
    """(epoch, first: π_θ is still the policy that sampled, rows, last: the update's last step) per optimizer step;
    with several mini-batches a fresh, seeded split per epoch."""
    steps = -(-n // size)  # optimizer steps per epoch: ≤ mini_batches
    for epoch in range(algo.ppo_epochs):
        order = list(range(n))
        if algo.mini_batches > 1:
            gen = torch.Generator().manual_seed(row_seed(seed, "minibatch", step, epoch))
            order = torch.randperm(n, generator=gen, device=HOST).tolist()
        for k, mini in enumerate(chunks(order, size)):
            yield epoch, epoch == 0 and k == 0, mini, epoch == algo.ppo_epochs - 1 and k == steps - 1


def _micro_step(ctx: UpdateContext, regs: list[Regulariser], rows: list[int | None], norms: dict[str, int],
                old_logp: torch.Tensor | None, sums: dict[str, float], gaps: list[float] | None) -> None:
    """One micro-batch: π_θ's forward, the regularisers' inputs, `objective` and its backward; statistics into
    `sums`, and (the first pass only, `gaps` given) the trainer–sampler log-prob gap."""
    policy, ro, algo = ctx.policy, ctx.ro, ctx.algo
    batch, ids, mask, width = micro_inputs(policy, ctx.prompts, ro, rows)
    mb = MicroBatch(rows, row_index(rows, ro.device), batch, ids, mask, width)
    r = mb.index
    logp, ent = policy.completion_logprobs(batch, ids, mask, temperature=ctx.temperature, with_entropy=True)
    terms = TokenTerms(logp=logp, old_logp=old_logp[r, :width] if old_logp is not None else logp.detach(),
                       mask=mask, advantages=_advantages(ro.advantages, r, width), entropy=ent)  # [n, W] each
    for reg in regs:
        reg.micro(ctx, mb, terms)
    if gaps is not None:
        gap_sum, gap_max, sampled = logprob_gap(terms.old_logp, ro.sampling_logprobs[r, :width], mask)
        sums["gap_sum"] += gap_sum
        sums["gap_tokens"] += sampled
        gaps.append(gap_max)
    loss, stats = objective(terms, algo, norms)
    loss.backward()
    sums["loss"] += float(loss.detach()) / ctx.total_steps  # the mean optimizer step's loss
    sums["entropy"] += float((ent.detach() * mask).sum()) / algo.ppo_epochs  # token sums per pass
    for key, v in stats.items():
        sums[key] += v / algo.ppo_epochs


def _advantages(advantages: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """A micro-batch's advantages: [n] per completion, or [n, W] per token (per-turn credit)."""
    return advantages[rows] if advantages.dim() == 1 else advantages[rows, :width]


def _metrics(policy, ro: Rollouts, regs: list[Regulariser], sums: dict[str, float], gaps: list[float],
             grad_norms: list[float]) -> dict[str, float]:
    """The update's `actor/*` metrics (and the trainer–sampler gap), each regulariser's after the common ones."""
    sums = defaultdict(float, policy.runtime.sum(dict(sums)))  # across processes each summed its own rows
    gap_max = policy.runtime.max({"gap": max(gaps, default=0.0)})["gap"]
    tokens = max(ro.num_tokens, 1)
    out = {"actor/loss": sums["loss"], "actor/clip_frac": sums["clip"] / tokens,
           "actor/entropy": sums["entropy"] / tokens, "actor/grad_norm": sum(grad_norms) / len(grad_norms)}
    if sums["gap_tokens"]:  # the engine's log-probs against the trainer's (sampled tokens of the first mini-batch)
        out["rollout/logprob_gap_mean"] = sums["gap_sum"] / sums["gap_tokens"]
        out["rollout/logprob_gap_max"] = gap_max
    for reg in regs:
        out.update(reg.metrics(sums, tokens))
    return out
