"""What the RL update adds to the plain policy loss, as registered classes that declare what they need and when.

A regulariser's maths is in `mmrl.algorithms.objective` (pure tensor functions); what it needs from the update
loop — an extra forward pass, a pass before the weights change, its own backward — is declared here, so that
`rl_update` runs the same loop for every method and a new one is one registered class (`REGULARISERS`), never an
`if algo.X > 0` in the loop. Each class overrides only the hooks it needs:

    active(ctx) -> bool                  is it on for this update (`ctx.algo`, and what the caller passed)
    before(ctx)                          once per rollout batch, before any weight changes (π_ref's pass)
    micro(ctx, mb, terms)                per micro-batch, before `objective`: fill `TokenTerms` fields
    mini(ctx) -> {sum key: value}        per optimizer step, after its micro-batches (rehearsal's own backward)
    metrics(sums, tokens) -> {name: v}   its `actor/*` metrics from the summed statistics

Why this shape. Classes, not single functions: one regulariser acts at several points of the loop and carries
state between them (π_ref's log-probs from `before` are read in `micro`), and a class keeps the pieces and the
condition that switches them on together; a fresh instance per update holds that state, nothing lives across
updates. `active` takes the update's context, not only `algo`: rehearsal is on when the caller has stored π₀
samples, TIS when the rollout config sets a cap. The micro-batch reaches a hook as one record (`MicroBatch`:
rows, index, inputs, mask) so a hook that needs one more field does not change every signature. `order` fixes
when each runs among the others — forward passes happen in that order, so results do not depend on the
registry's (alphabetical) order — and the order its metrics appear in. Truncated importance sampling and
Clip-/KL-Cov need no extra pass but register too: TIS fills `TokenTerms.is_weight`, Clip-Cov its seeded
generator, and both report through the same hooks, so the loop keeps no special case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmrl.algorithms import TokenTerms
from mmrl.algorithms.divergences import F_DIVERGENCES
from mmrl.algorithms.objective import tis_weights
from mmrl.perception.perturb import mask_patches
from mmrl.registry import Registry
from mmrl.rollout.types import Rollouts, row_seed
from mmrl.train.rows import chunks, logprob_pass, micro_inputs, row_index


@dataclass
class UpdateContext:
    """What one `rl_update` call shares with its regularisers; `epoch` follows the loop."""

    policy: Any
    prompts: list
    ro: Rollouts
    algo: Any  # an `AlgorithmConfig`
    micro: int  # micro-batch size
    temperature: float
    seed: int
    step: int
    total_steps: int  # optimizer steps of this update (ppo_epochs × mini-batches)
    rehearsal: tuple | None = None  # (π₀'s prompts, its stored completions, their log-probs [M, C])
    tis_cap: float | None = None
    epoch: int = 0


@dataclass
class MicroBatch:
    """One micro-batch of rows as the model sees it."""

    rows: list[int | None]  # rows of `ro` (`None`: a padding row)
    index: torch.Tensor  # [n] the rows as an index on the device
    batch: dict[str, torch.Tensor]  # collated prompts
    ids: torch.Tensor  # [n, W] completion ids
    mask: torch.Tensor  # [n, W]
    width: int  # W


class Regulariser:
    """Base: every hook does nothing; `active` must be overridden (see the module docstring)."""

    order: int = 100

    def active(self, ctx: UpdateContext) -> bool:
        raise NotImplementedError

    def before(self, ctx: UpdateContext) -> None:
        pass

    def micro(self, ctx: UpdateContext, mb: MicroBatch, terms: TokenTerms) -> None:
        pass

    def mini(self, ctx: UpdateContext) -> dict[str, float]:
        return {}

    def metrics(self, sums: dict[str, float], tokens: int) -> dict[str, float]:
        return {}


REGULARISERS: Registry[type[Regulariser]] = Registry("regulariser")


def active_regularisers(ctx: UpdateContext) -> list[Regulariser]:
    """A fresh instance of every registered regulariser that is on for this update, in `order`."""
    made = (REGULARISERS.get(name)() for name in REGULARISERS)
    return sorted((reg for reg in made if reg.active(ctx)), key=lambda reg: reg.order)


@REGULARISERS.register("tis")
class TruncatedImportance(Regulariser):
    """w_t = min(π_old / π_sampler, cap) on the policy term (`rollout.tis_cap`; `objective.tis_weights`): "Your
    Efficient RL Framework Secretly Brings You Off-Policy RL Training", Yao et al. 2025 (a blog post; no arXiv
    id). Differs from: the others here, it reweights the policy loss rather than adding a term."""

    order = 0

    def active(self, ctx):
        return ctx.tis_cap is not None

    def micro(self, ctx, mb, terms):  # the sampler's numerics differ from ours (vLLM): reweight its tokens
        sampling = ctx.ro.sampling_logprobs[mb.index, : mb.width]  # [n, W]
        terms.is_weight = tis_weights(terms.old_logp, sampling, mb.mask, ctx.tis_cap)


@REGULARISERS.register("reference_kl")
class ReferenceKL(Regulariser):
    """β·Agg[k(π_θ, π_ref)] in the loss (`kl_coef` > 0, `kl_placement: loss`), as in GRPO — DeepSeekMath
    (arXiv:2402.03300); π_ref's log-probs come from one no-gradient pass over the batch before any weight
    changes. Differs from: the KL in the reward (`kl_placement: reward`), computed in the advantage stage."""

    order = 10

    def active(self, ctx):
        return ctx.algo.kl_coef > 0 and ctx.algo.kl_placement == "loss"

    def before(self, ctx):
        with ctx.policy.as_reference() as ref:
            self.ref_logp = logprob_pass(ctx.policy, ctx.prompts, ctx.ro, micro=ctx.micro,
                                         temperature=ctx.temperature, model=ref)  # [N, C]

    def micro(self, ctx, mb, terms):
        terms.ref_logp = self.ref_logp[mb.index, : mb.width]  # [n, W]
        terms.kl_weight = ctx.ro.kl_weight[mb.index] if ctx.ro.kl_weight is not None else None  # [n]

    def metrics(self, sums, tokens):
        return {"actor/kl": sums["kl"] / tokens}


@REGULARISERS.register("lp_reg")
class LowProbability(Regulariser):
    """Lp-Reg ("Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward",
    arXiv:2510.03222): one more no-gradient pass per micro-batch gives the min-p proxy's log-mass and which
    sampled tokens it keeps (`policy.completion_minp_mass`); `objective.low_probability_regulariser` adds
    k3(π_θ, π_proxy) on the selected tokens. Differs from: the reference KL, whose target is a fixed π_ref."""

    order = 20  # before PAPO's masked pass: the order these passes have always run in

    def active(self, ctx):
        return ctx.algo.lp_reg_coef > 0

    def micro(self, ctx, mb, terms):
        terms.proxy_log_mass, terms.proxy_kept = ctx.policy.completion_minp_mass(
            mb.batch, mb.ids, mb.mask, kappa=ctx.algo.lp_reg_kappa, temperature=ctx.temperature)  # [n, W] each

    def metrics(self, sums, tokens):
        return {"actor/lp_reg_frac": sums["lp_reg_tokens"] / tokens}


def masked_batch(policy, batch: dict[str, torch.Tensor], algo, seed: int) -> dict[str, torch.Tensor]:
    """The same prompts with only the image pixels changed: a share `mask_ratio` of vision tokens masked (PAPO,
    "Perception-Aware Policy Optimization for Multimodal Reasoning", arXiv:2507.06448)."""
    if "pixel_values" not in batch or "image_grid_thw" not in batch:
        raise ValueError("algorithm.masked_kl_coef > 0 needs image prompts (pixel_values and image_grid_thw)")
    merge = getattr(getattr(policy.processor, "image_processor", None), "merge_size", 2)
    pixels = mask_patches(batch["pixel_values"], batch["image_grid_thw"], ratio=algo.mask_ratio,
                          merge_size=merge, seed=seed)
    return dict(batch, pixel_values=pixels)


@REGULARISERS.register("masked_kl")
class MaskedImageKL(Regulariser):
    """PAPO ("Perception-Aware Policy Optimization for Multimodal Reasoning", arXiv:2507.06448): a second forward
    per micro-batch, with gradient, on the same prompts with patch-masked images (`masked_batch`); `objective`
    maximises γ·k(π_θ(·|I), π_θ(·|I_masked)) and adds η·(H + H_masked). Differs from: the reference KL, which is
    minimised and compares two policies on the same input."""

    order = 30

    def active(self, ctx):
        return ctx.algo.masked_kl_coef > 0

    def micro(self, ctx, mb, terms):
        masked = masked_batch(ctx.policy, mb.batch, ctx.algo, row_seed(ctx.seed, "mask", ctx.step, *mb.rows[:1]))
        terms.masked_logp, terms.masked_entropy = ctx.policy.completion_logprobs(
            masked, mb.ids, mb.mask, temperature=ctx.temperature, with_entropy=True)  # [n, W] each

    def metrics(self, sums, tokens):
        return {"actor/masked_kl": sums["masked_kl"] / tokens}


def rehearsal_backward(policy, prompts, ro: Rollouts, logp0: torch.Tensor, algo, *, micro: int,
                       temperature: float) -> float:
    """Accumulate the gradient of coef · mean_t f(π_θ / π₀) over stored π₀ completions; return mean_t f (DPH-RL,
    "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in Reinforcement Learning with
    Verifiable Reward", arXiv:2509.07430)."""
    f = F_DIVERGENCES.get(algo.rehearsal_divergence)
    tokens = max(int(ro.completion_mask.sum()), 1)
    total = 0.0
    for rows in chunks(policy.runtime.rows(list(range(len(ro)))), micro):
        batch, ids, mask, width = micro_inputs(policy, prompts, ro, rows)
        logp, _ = policy.completion_logprobs(batch, ids, mask, temperature=temperature)
        r = row_index(rows, ro.device)
        div = (f(logp - logp0[r, :width].to(logp.dtype)) * mask).sum() / tokens
        (algo.rehearsal_coef * div).backward()
        total += float(div.detach())
    return total  # this process's rows (across processes, `rl_update` sums the ranks' values)


@REGULARISERS.register("rehearsal")
class RehearsalDivergence(Regulariser):
    """DPH-RL ("The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in Reinforcement
    Learning with Verifiable Reward", arXiv:2509.07430): per optimizer step, its own forward and backward over
    stored π₀ completions π₀ solved (`rehearsal_backward`), coef · mean_t f(π_θ / π₀) with a mass-covering f.
    Differs from: the reference KL, taken on the current rollouts rather than on π₀'s own samples."""

    order = 40

    def active(self, ctx):
        return ctx.rehearsal is not None

    def mini(self, ctx):
        div = rehearsal_backward(ctx.policy, *ctx.rehearsal, ctx.algo, micro=ctx.micro, temperature=ctx.temperature)
        return {"rehearsal": div / ctx.total_steps}

    def metrics(self, sums, tokens):
        return {"actor/rehearsal_div": sums["rehearsal"]}


@REGULARISERS.register("cov")
class Covariance(Regulariser):
    """Clip-Cov / KL-Cov ("The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
    arXiv:2505.22617; `cov_mode`, `objective.COV_MODES`): no extra pass; Clip-Cov's random token choice gets a
    generator seeded by (seed, step, epoch, first row). Differs from: the others here, it only reshapes the
    policy term on tokens whose log-prob/advantage covariance is high."""

    order = 50

    def active(self, ctx):
        return ctx.algo.cov_mode != "none"

    def micro(self, ctx, mb, terms):
        terms.generator = torch.Generator().manual_seed(row_seed(ctx.seed, "cov", ctx.step, ctx.epoch, *mb.rows[:1]))

    def metrics(self, sums, tokens):
        return {"actor/cov_selected_frac": sums["cov_selected"] / tokens}
