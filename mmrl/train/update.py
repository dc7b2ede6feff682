"""The RL update of one rollout batch: log-prob passes, mini-batches × epochs, micro-batch accumulation.

Stages (each looked up by name in `mmrl.algorithms`, never by method): π_old and π_ref log-probs are computed
once, before any weight changes, when the update needs them (several optimizer steps per batch, a KL term, the
KL in the reward); each optimizer step then sums `objective` over micro-batches with the mini-batch's global
normalisers, so the gradient does not depend on the micro-batch size. Every tensor is on the runtime's device
(`policy.runtime`); across processes each rank computes its block of rows (`Runtime.rows`). Shapes: N
completions, C tokens.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

from mmrl.algorithms import TokenTerms, objective
from mmrl.algorithms.objective import tis_weights
from mmrl.algorithms.divergences import F_DIVERGENCES
from mmrl.perception.perturb import mask_patches
from mmrl.rollout.types import Rollouts, row_seed
from mmrl.runtime import HOST


def _chunks(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def row_index(rows: list[int | None], device: torch.device) -> torch.Tensor:
    """Rows as an index tensor on `device`; a `None` (padding) row repeats the first real one (0 without any)."""
    fill = next((r for r in rows if r is not None), 0)
    return torch.tensor([fill if r is None else r for r in rows], dtype=torch.long, device=device)


def _inputs(policy, prompts, ro: Rollouts, rows: list[int | None]):
    """Collated prompts, completion ids and mask of `rows` (a `None` row repeats a real one with an empty mask)."""
    idx = row_index(rows, ro.device)
    real = torch.tensor([[r is not None] for r in rows], dtype=ro.completion_mask.dtype, device=ro.device)
    mask = ro.completion_mask[idx] * real  # [n, C]
    width = max(int(mask.sum(1).max()), 1)
    batch = policy.collate([prompts[int(ro.prompt_index[i])] for i in row_index(rows, HOST).tolist()])
    return batch, ro.completion_ids[idx, :width], mask[:, :width], width


@torch.no_grad()
def logprob_pass(policy, prompts, ro: Rollouts, *, micro: int, temperature: float, model=None) -> torch.Tensor:
    """Log-probs [N, C] of every completion under `model` (default: the policy as it is now), no gradient; across
    processes each computes its block of rows and all receive the whole (`Runtime.gather_rows`)."""
    runtime = policy.runtime
    mine = runtime.rows(list(range(len(ro))))  # this rank's block, padding rows last
    local = torch.zeros((len(mine), ro.completion_ids.shape[1]), dtype=torch.float32, device=ro.device)  # [n, C]
    for start in range(0, len(mine), micro):
        rows = mine[start : start + micro]
        batch, ids, mask, width = _inputs(policy, prompts, ro, rows)
        logp, _ = policy.completion_logprobs(batch, ids, mask, temperature=temperature, model=model)
        local[start : start + len(rows), :width] = logp.float() * mask  # padding rows stay 0
    return runtime.gather_rows(local, len(ro))


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


def masked_batch(policy, batch: dict[str, torch.Tensor], algo, seed: int) -> dict[str, torch.Tensor]:
    """The same prompts with only the image pixels changed: a share `mask_ratio` of vision tokens masked."""
    if "pixel_values" not in batch or "image_grid_thw" not in batch:
        raise ValueError("algorithm.masked_kl_coef > 0 needs image prompts (pixel_values and image_grid_thw)")
    merge = getattr(getattr(policy.processor, "image_processor", None), "merge_size", 2)
    pixels = mask_patches(batch["pixel_values"], batch["image_grid_thw"], ratio=algo.mask_ratio,
                          merge_size=merge, seed=seed)
    return dict(batch, pixel_values=pixels)


def rehearsal_backward(policy, prompts, ro: Rollouts, logp0: torch.Tensor, algo, *, micro: int,
                       temperature: float) -> float:
    """Accumulate the gradient of coef · mean_t f(π_θ / π₀) over stored π₀ completions; return mean_t f."""
    f = F_DIVERGENCES.get(algo.rehearsal_divergence)
    tokens = max(int(ro.completion_mask.sum()), 1)
    total = 0.0
    for rows in _chunks(policy.runtime.rows(list(range(len(ro)))), micro):
        batch, ids, mask, width = _inputs(policy, prompts, ro, rows)
        logp, _ = policy.completion_logprobs(batch, ids, mask, temperature=temperature)
        r = row_index(rows, ro.device)
        div = (f(logp - logp0[r, :width].to(logp.dtype)) * mask).sum() / tokens
        (algo.rehearsal_coef * div).backward()
        total += float(div.detach())
    return total  # this process's rows (across processes, `rl_update` sums the ranks' values)


def rl_update(
    policy, prompts, ro: Rollouts, algo, *, micro: int, temperature: float, max_tokens: int, seed: int, step: int,
    optimizer_step: Callable[[bool], float], old_logp: torch.Tensor | None = None, rehearsal=None,
    tis_cap: float | None = None,
) -> dict[str, float]:
    """Run `ppo_epochs` × `mini_batches` optimizer steps on one rollout batch (fewer when the N rows split into
    fewer chunks of ⌈N / mini_batches⌉, e.g. 7 of 16 → 6); returns `actor/*` metrics.

    `optimizer_step(last)` clips, steps and zeroes the gradients (advancing the LR schedule when `last`);
    `tis_cap` turns on truncated importance weights min(π_old / π_sampler, cap) on the policy term.
    """
    use_ref = algo.kl_coef > 0 and algo.kl_placement == "loss"
    ref_logp = None
    if use_ref:
        with policy.as_reference() as ref:
            ref_logp = logprob_pass(policy, prompts, ro, micro=micro, temperature=temperature, model=ref)
    if old_logp is None and needs_old_logp(algo):
        old_logp = logprob_pass(policy, prompts, ro, micro=micro, temperature=temperature)
    sums: dict[str, float] = defaultdict(float)
    gaps: list[float] = []  # max |trainer − sampler| log-prob per micro-batch, before any weight changes
    grad_norms: list[float] = []
    size = -(-len(ro) // algo.mini_batches)  # ceil: fewer, fuller chunks when mini_batches does not divide N
    chunks = -(-len(ro) // size)  # optimizer steps per epoch: ≤ mini_batches
    total_steps = algo.ppo_epochs * chunks
    policy.train()
    for epoch in range(algo.ppo_epochs):
        order = list(range(len(ro)))
        if algo.mini_batches > 1:  # a fresh, seeded split per epoch
            gen = torch.Generator().manual_seed(row_seed(seed, "minibatch", step, epoch))
            order = torch.randperm(len(ro), generator=gen, device=HOST).tolist()
        for k, mini in enumerate(_chunks(order, size)):
            idx = row_index(mini, ro.device)
            norms = dict(global_tokens=int(ro.completion_mask[idx].sum()), global_seqs=len(mini), max_tokens=max_tokens)
            for rows in _chunks(policy.runtime.rows(mini), micro):
                batch, ids, mask, width = _inputs(policy, prompts, ro, rows)
                r = row_index(rows, ro.device)
                logp, ent = policy.completion_logprobs(batch, ids, mask, temperature=temperature, with_entropy=True)
                terms = TokenTerms(
                    logp=logp, old_logp=old_logp[r, :width] if old_logp is not None else logp.detach(), mask=mask,
                    advantages=ro.advantages[r], entropy=ent,
                    ref_logp=ref_logp[r, :width] if ref_logp is not None else None,
                    generator=torch.Generator().manual_seed(row_seed(seed, "cov", step, epoch, *rows[:1])),
                    kl_weight=ro.kl_weight[r] if ro.kl_weight is not None else None,
                )
                if tis_cap is not None:  # the sampler's numerics differ from ours (vLLM): reweight its tokens
                    terms.is_weight = tis_weights(terms.old_logp, ro.sampling_logprobs[r, :width], mask, tis_cap)
                if algo.lp_reg_coef > 0:
                    terms.proxy_log_mass, terms.proxy_kept = policy.completion_minp_mass(
                        batch, ids, mask, kappa=algo.lp_reg_kappa, temperature=temperature)
                if algo.masked_kl_coef > 0:
                    masked = masked_batch(policy, batch, algo, row_seed(seed, "mask", step, *rows[:1]))
                    terms.masked_logp, terms.masked_entropy = policy.completion_logprobs(
                        masked, ids, mask, temperature=temperature, with_entropy=True)
                if epoch == 0 and k == 0:  # the first pass: π_θ is still the policy that sampled
                    gap_sum, gap_max, sampled = logprob_gap(terms.old_logp, ro.sampling_logprobs[r, :width], mask)
                    sums["gap_sum"] += gap_sum
                    sums["gap_tokens"] += sampled
                    gaps.append(gap_max)
                loss, stats = objective(terms, algo, norms)
                loss.backward()
                sums["loss"] += float(loss.detach()) / total_steps  # the mean optimizer step's loss
                sums["entropy"] += float((ent.detach() * mask).sum()) / algo.ppo_epochs  # token sums per pass
                for key, v in stats.items():
                    sums[key] += v / algo.ppo_epochs
            if rehearsal is not None:
                sums["rehearsal"] += rehearsal_backward(policy, *rehearsal, algo, micro=micro,
                                                        temperature=temperature) / total_steps
            grad_norms.append(optimizer_step(epoch == algo.ppo_epochs - 1 and k == chunks - 1))  # LR: once per step
    sums = defaultdict(float, policy.runtime.sum(dict(sums)))  # across processes each summed its own rows
    gap_max = policy.runtime.max({"gap": max(gaps, default=0.0)})["gap"]
    tokens = max(ro.num_tokens, 1)
    out = {"actor/loss": sums["loss"], "actor/clip_frac": sums["clip"] / tokens,
           "actor/entropy": sums["entropy"] / tokens, "actor/grad_norm": sum(grad_norms) / len(grad_norms)}
    if sums["gap_tokens"]:  # the engine's log-probs against the trainer's (sampled tokens of the first mini-batch)
        out["rollout/logprob_gap_mean"] = sums["gap_sum"] / sums["gap_tokens"]
        out["rollout/logprob_gap_max"] = gap_max
    if use_ref:
        out["actor/kl"] = sums["kl"] / tokens
    if algo.masked_kl_coef > 0:
        out["actor/masked_kl"] = sums["masked_kl"] / tokens
    if rehearsal is not None:
        out["actor/rehearsal_div"] = sums["rehearsal"]
    if algo.lp_reg_coef > 0:
        out["actor/lp_reg_frac"] = sums["lp_reg_tokens"] / tokens
    if algo.cov_mode != "none":
        out["actor/cov_selected_frac"] = sums["cov_selected"] / tokens
    return out
