"""Every algorithm preset against a loop-style reference written from its paper (float64, loss and gradients).

The mmrl path is `advantages(...)` with the preset's knobs, then `objective(...)`. The reference below never calls
mmrl: per preset it hard-codes the paper's hyperparameters and formula (group statistics by hand, a ratio per
token or the GSPO sequence ratio, the surrogate, the aggregation, the KL / entropy / masked-image terms) as plain
Python loops over groups, sequences and tokens with scalar torch ops, so a wrong preset value, a wrong registry
piece or a wrong aggregation all show up as a mismatch. Gradients come from autograd on the same leaf tensors.

Then properties over all presets (hypothesis): zero advantages → zero policy gradient; ratio 1 → nothing clipped
and the REINFORCE gradient −Â·∇log π under the preset's aggregation; tied groups → zero advantage for the
group-mean / leave-one-out baselines; micro-batch split invariance for every aggregation × ratio level.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrl.algorithms.advantages import compute as compute_advantages
from mmrl.algorithms import (
    AGGREGATIONS,
    BASELINES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PRESETS,
    RATIO_LEVELS,
    SCALES,
    TokenTerms,
    advantages,
    keep_groups,
    objective,
)
from mmrl.config import AlgorithmConfig

CI = settings(max_examples=30, deadline=None, derandomize=True, database=None)
F64 = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-9}  # float64: the two paths agree to ~1e-15; 1e-6 is the brief's bar

# ------------------------------------------------------------------------------------------------ the fixed batch
G, T, MAX_TOKENS = 4, 6, 8  # group size, padded width, generation budget L_max (Dr. GRPO's constant)
REWARDS = [1.0, 0.0, 0.0, 1.0,  # mixed
           1.0, 1.0, 1.0, 1.0,  # all correct: no signal for GRPO; dropped by DAPO and NGRPO filters
           0.0, 0.0, 0.0, 0.0,  # all wrong: no signal for GRPO, negative for NGRPO's virtual max
           0.0, 1.0, 1.0, 1.0]  # mostly correct
LENGTHS = [6, 4, 1, 5, 3, 6, 2, 6, 6, 5, 4, 2, 1, 6, 3, 6]  # ragged, two one-token completions
NEAR = (0, 3, 9, 13, 14)  # rows with |log ρ| ~ 1e-4: inside GSPO's 3e-4 / 4e-4 band (the others clip)
BIG_RATIO = (1, 0, 1.5)  # row 1 (Â < 0 for GRPO), token 0: log ρ = 1.5, ρ ≈ 4.5 > c = 3 so dual clip binds


@dataclass
class Batch:
    rewards: list[float]
    lengths: list[int]
    group: int
    logp: torch.Tensor  # leaf, requires grad
    old: torch.Tensor
    ref: torch.Tensor
    masked_logp: torch.Tensor  # leaf, requires grad
    entropy: torch.Tensor  # leaf, requires grad
    masked_entropy: torch.Tensor  # leaf, requires grad
    mask: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.rewards)

    def leaves(self) -> list[torch.Tensor]:
        return [self.logp, self.masked_logp, self.entropy, self.masked_entropy]


def make_batch(rewards, lengths, group, width, seed, *, near=(), scale=0.35, big=None) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n = len(rewards)
    logp = -(torch.rand(n, width, generator=gen, dtype=F64) * 2.5 + 0.05)  # padding holds finite garbage too
    step = torch.tensor([1e-4 if i in near else scale for i in range(n)], dtype=F64)[:, None]
    old = logp - torch.randn(n, width, generator=gen, dtype=F64) * step  # log ρ = logp − old
    if big is not None:
        i, t, log_ratio = big
        old[i, t] = logp[i, t] - log_ratio
    ref = logp + 0.3 * torch.randn(n, width, generator=gen, dtype=F64)
    masked = logp + 0.4 * torch.randn(n, width, generator=gen, dtype=F64)
    ent = torch.rand(n, width, generator=gen, dtype=F64) * 2
    ment = torch.rand(n, width, generator=gen, dtype=F64) * 2
    mask = torch.zeros(n, width, dtype=F64)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1.0
    return Batch(list(rewards), list(lengths), group, logp.requires_grad_(), old, ref, masked.requires_grad_(),
                 ent.requires_grad_(), ment.requires_grad_(), mask)


def fixed_batch() -> Batch:
    return make_batch(REWARDS, LENGTHS, G, T, seed=1234, near=NEAR, big=BIG_RATIO)


# ------------------------------------------------------------------------------------------------ the mmrl path
def preset(name: str, **overrides) -> AlgorithmConfig:
    return dataclasses.replace(AlgorithmConfig(**PRESETS.get(name)), **overrides)


def mmrl_advantages(b: Batch, algo: AlgorithmConfig) -> torch.Tensor:
    return mmrl_advantages_and_kl_weight(b, algo)[0]


def mmrl_advantages_and_kl_weight(b: Batch, algo: AlgorithmConfig):
    """As the trainer: baseline, scale, sign weights, long-negative scaling, difficulty KL weights."""
    return compute_advantages(torch.tensor(b.rewards, dtype=F64), torch.tensor(b.lengths), algo, group_size=b.group)


def global_norms(b: Batch) -> dict[str, int]:
    return {"global_tokens": sum(b.lengths), "global_seqs": b.n, "max_tokens": MAX_TOKENS}


def mmrl_loss(b: Batch, algo: AlgorithmConfig, adv: torch.Tensor | None = None, rows=None, norms=None):
    """objective(...) as the trainer calls it: the masked-image pass only exists when masked_kl_coef > 0."""
    computed, kl_weight = mmrl_advantages_and_kl_weight(b, algo)
    adv = computed if adv is None else adv
    r = slice(None) if rows is None else rows
    masked = algo.masked_kl_coef > 0
    terms = TokenTerms(
        logp=b.logp[r], old_logp=b.old[r], mask=b.mask[r], advantages=adv[r], entropy=b.entropy[r],
        ref_logp=b.ref[r], masked_logp=b.masked_logp[r] if masked else None,
        masked_entropy=b.masked_entropy[r] if masked else None,
        kl_weight=kl_weight[r] if kl_weight is not None else None,
    )
    return objective(terms, algo, global_norms(b) if norms is None else norms)


def grads(loss: torch.Tensor, b: Batch) -> list[torch.Tensor]:
    out = torch.autograd.grad(loss, b.leaves(), allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(out, b.leaves())]


# ======================================================================================= the paper references
# Everything below is plain loops; nothing from mmrl.algorithms is used.
def mean(xs):
    return sum(xs) / len(xs)


def sample_std(xs):  # Bessel-corrected, as DeepSeekMath's and TRL's torch.std
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def groups(b: Batch):
    return [list(range(g * b.group, (g + 1) * b.group)) for g in range(b.n // b.group)]


def ratio(b: Batch, i: int, t: int):
    """ρ_{i,t} = π_θ(o_{i,t}) / π_old(o_{i,t})."""
    return torch.exp(b.logp[i, t] - b.old[i, t])


def seq_ratio(b: Batch, i: int):
    """GSPO's s_i = (π_θ(o_i) / π_old(o_i))^{1/|o_i|} = exp((1/|o_i|) Σ_t log ρ_{i,t})."""
    return torch.exp(sum(b.logp[i, t] - b.old[i, t] for t in range(b.lengths[i])) / b.lengths[i])


def clip(x, lo, hi):
    return torch.clamp(x, lo, hi)


def ppo_term(rho, adv, eps_low, eps_high, c=None):
    """−min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â) (Schulman et al. 2017, arXiv:1707.06347, eq. 7); with dual clip
    (Ye et al. 2020, arXiv:1912.09729) the objective of a negative-advantage token is max(·, c·Â)."""
    loss = -torch.minimum(rho * adv, clip(rho, 1 - eps_low, 1 + eps_high) * adv)
    if c is not None and adv < 0:
        loss = torch.minimum(loss, loss.new_tensor(-c * adv))
    return loss


def k3(logp, target):
    """Schulman (2020) k3 = π_t/π_θ − log(π_t/π_θ) − 1, DeepSeekMath eq. (4)'s per-token KL."""
    d = target - logp
    return torch.exp(d) - d - 1


def k1(logp, target):
    return logp - target


def k2(logp, target):
    return 0.5 * (logp - target) ** 2


def no_extra(i, t):
    return 0.0


# --- aggregations, written as their papers' sums
def seq_mean_token_mean(b, ell):  # 1/G Σ_i 1/|o_i| Σ_t ℓ_{i,t} (DeepSeekMath eq. 3)
    return sum(sum(ell(i, t) for t in range(b.lengths[i])) / b.lengths[i] for i in range(b.n)) / b.n


def token_mean(b, ell):  # 1/Σ_i|o_i| Σ_i Σ_t ℓ_{i,t} (DAPO's token-level loss)
    return sum(ell(i, t) for i in range(b.n) for t in range(b.lengths[i])) / sum(b.lengths)


def sum_over_n_lmax(b, ell):  # 1/(G·L_max) Σ_i Σ_t ℓ_{i,t} (Dr. GRPO, constant normaliser)
    return sum(ell(i, t) for i in range(b.n) for t in range(b.lengths[i])) / (b.n * MAX_TOKENS)


# --- advantages, group by group
def grpo_adv(b, eps=1e-6):  # Â_i = (r_i − mean(r)) / (std(r) + ε) within the group (DeepSeekMath §4.1.2)
    out = [0.0] * b.n
    for g in groups(b):
        r = [b.rewards[i] for i in g]
        for i in g:
            out[i] = (b.rewards[i] - mean(r)) / (sample_std(r) + eps)
    return out


def centred_adv(b):  # Â_i = r_i − mean(r), no std (Dr. GRPO)
    out = [0.0] * b.n
    for g in groups(b):
        r = [b.rewards[i] for i in g]
        for i in g:
            out[i] = b.rewards[i] - mean(r)
    return out


# ------------------------------------------------------------------------------------------------ per preset
def ref_grpo(b, *, clip_c=None, beta=0.04, kl=k3, extra=no_extra):
    # GRPO — DeepSeekMath (Shao et al. 2024, arXiv:2402.03300) eq. (3), outcome supervision §4.1.2:
    # J = 1/G Σ_i 1/|o_i| Σ_t [min(ρÂ_i, clip(ρ, 1−ε, 1+ε)Â_i) − β D_KL], Â_i = (r_i − mean r)/std r,
    # ε = 0.2, β = 0.04 (its RL setup), D_KL the k3 estimator of eq. (4).
    adv = grpo_adv(b)
    return seq_mean_token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2, clip_c)
                               + beta * kl(b.logp[i, t], b.ref[i, t]) + extra(i, t))


def ref_dr_grpo(b, extra=no_extra):
    # Dr. GRPO — "Understanding R1-Zero-Like Training" (Liu et al. 2025, arXiv:2503.20783):
    # drop 1/|o_i| and std: J = 1/(G·L_max) Σ_i Σ_t min(ρÂ_i, clip(ρ)Â_i), Â_i = r_i − mean r, no KL.
    adv = centred_adv(b)
    return sum_over_n_lmax(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_dapo(b, extra=no_extra):
    # DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher ε_low = 0.2, ε_high = 0.28, token-level mean
    # 1/Σ|o_i| Σ_i Σ_t, GRPO advantage, no KL. (Dynamic sampling is a filter: see test_group_filters.)
    adv = grpo_adv(b)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.28) + extra(i, t))


def ref_lite_ppo(b, extra=no_extra):
    # Lite PPO — "Tricks or Traps? A Deep Dive into RL for LLM Reasoning" (Liu et al. 2025, arXiv:2508.08221):
    # group-level mean, batch-level std, token-level loss aggregation, vanilla PPO clip, no KL.
    all_std = sample_std(b.rewards)
    adv = [0.0] * b.n
    for g in groups(b):
        r = [b.rewards[i] for i in g]
        for i in g:
            adv[i] = (b.rewards[i] - mean(r)) / (all_std + 1e-6)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_rloo(b, extra=no_extra):
    # RLOO — "Back to Basics" (Ahmadian et al. 2024, arXiv:2402.14740):
    # Â_i = r_i − 1/(k−1) Σ_{j≠i} r_j,
    # here inside GRPO's clipped surrogate and per-sequence token mean, no std, no KL.
    adv = [0.0] * b.n
    for g in groups(b):
        for i in g:
            adv[i] = b.rewards[i] - mean([b.rewards[j] for j in g if j != i])
    return seq_mean_token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_gspo(b, extra=no_extra):
    # GSPO (Zheng et al. 2025, arXiv:2507.18071):
    # J = 1/G Σ_i min(s_i Â_i, clip(s_i, 1−ε_l, 1+ε_h) Â_i)
    # with s_i the length-normalised sequence ratio; ε_l = 3e-4, ε_h = 4e-4 (§5.1); GRPO advantage; no KL.
    # Autograd differentiates s_i itself here (not the token-form stop-gradient trick mmrl uses).
    adv = grpo_adv(b)
    seq = sum(ppo_term(seq_ratio(b, i), adv[i], 3e-4, 4e-4) for i in range(b.n)) / b.n
    return seq + seq_mean_token_mean(b, extra)


def ref_luspo(b, extra=no_extra):
    # LUSPO — "Length-Unbiased Sequence Policy Optimization" (Liu et al. 2026, arXiv:2602.05261): GSPO with each
    # sequence's loss scaled by its length: J = 1/G Σ_i |o_i| · min(s_i Â_i, clip(s_i) Â_i).
    adv = grpo_adv(b)
    seq = sum(b.lengths[i] * ppo_term(seq_ratio(b, i), adv[i], 3e-4, 4e-4) for i in range(b.n)) / b.n
    return seq + sum(extra(i, t) for i in range(b.n) for t in range(b.lengths[i])) / b.n


def ref_sapo(b, extra=no_extra):
    # SAPO — "Soft Adaptive Policy Optimization" (Gao et al. 2025, arXiv:2511.20347): the hard clip is replaced by
    # the gate f(ρ) = σ(τ(ρ−1))·4/τ, τ_pos = 1.0 for Â > 0 and τ_neg = 1.05 otherwise;
    # per-sequence token mean.
    adv = grpo_adv(b)

    def ell(i, t):
        tau = 1.0 if adv[i] > 0 else 1.05
        gate = 4.0 / tau / (1.0 + torch.exp(-tau * (ratio(b, i, t) - 1.0)))
        return -gate * adv[i] + extra(i, t)

    return seq_mean_token_mean(b, ell)


def ref_gppo(b, *, clip_c=None, extra=no_extra):
    # GPPO — Klear-Reasoner (Su et al. 2025, arXiv:2508.07629) with β₁ = β₂ = 1: where PPO's min picks
    # the clipped branch, the bound becomes (1±ε)·ρ/sg(ρ): same value, gradient (1±ε)·Â·∇log π.
    # Bounds are DAPO's (0.2 / 0.28), token-level mean.
    adv = grpo_adv(b)

    def ell(i, t):
        rho, a = ratio(b, i, t), adv[i]
        if a > 0 and rho > 1.28:
            loss = -(1.28 * rho / rho.detach()) * a
        elif a < 0 and rho < 0.8:
            loss = -(0.8 * rho / rho.detach()) * a
        else:
            loss = -torch.minimum(rho * a, clip(rho, 0.8, 1.28) * a)
        if clip_c is not None and a < 0:  # dual clip (Ye et al. 2020) on top
            loss = torch.minimum(loss, loss.new_tensor(-clip_c * a))
        return loss + extra(i, t)

    return token_mean(b, ell)


def ref_cispo(b, extra=no_extra):
    # CISPO — MiniMax-M1 (MiniMax 2025, arXiv:2506.13585):
    # J = 1/Σ|o_i| Σ_i Σ_t sg(r̂_{i,t}) Â_i log π_θ(o_{i,t}),
    # r̂ = clip(ρ, 1−ε_low, 1+ε_high); ε_low is left unbounded (verl's example uses 10), ε_high = 0.2.
    adv = grpo_adv(b)
    return token_mean(b, lambda i, t: -torch.clamp(ratio(b, i, t), max=1.2).detach() * adv[i] * b.logp[i, t]
                      + extra(i, t))


def ref_ngrpo(b, extra=no_extra):
    # NGRPO (Nan et al. 2025, arXiv:2509.18851) advantage calibration: μ', σ' over R ∪ {r_max} (one virtual
    # sample, r_max = 1; sample std as in GRPO), Â_i = (r_i − μ')/(σ' + ε); asymmetric clip ε_low = 0.16 for the
    # negatives' bound, ε_high = 0.24; token-level mean.
    adv = [0.0] * b.n
    for g in groups(b):
        pool = [b.rewards[i] for i in g] + [1.0]
        for i in g:
            adv[i] = (b.rewards[i] - mean(pool)) / (sample_std(pool) + 1e-6)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.16, 0.24) + extra(i, t))


def sign_adv(b, w_pos, w_neg):
    # "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" (Zhu et al. 2025, arXiv:2506.01347):
    # binary rewards, no baseline: a correct sample gets +w₊, a wrong one −w₋.
    return [w_pos if b.rewards[i] == 1.0 else -w_neg for i in range(b.n)]


def ref_w_reinforce(b, extra=no_extra):
    # W-REINFORCE (ibid.): λ·PSR + NSR with λ = 0.1, in the PPO-clipped surrogate (their verl code),
    # token mean.
    adv = sign_adv(b, 0.1, 1.0)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_psr(b, extra=no_extra):
    # PSR (ibid.): only positive samples, Â = r ∈ {1, 0}.
    adv = sign_adv(b, 1.0, 0.0)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_nsr(b, extra=no_extra):
    # NSR (ibid.): only negative samples, Â = r − 1 ∈ {0, −1}.
    adv = sign_adv(b, 0.0, 1.0)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_prorl(b, extra=no_extra):
    # ProRL (Liu et al. 2025, arXiv:2505.24864): DAPO's recipe with ε_high = 0.4 plus a k3 KL to π_ref in the loss
    # (β = 1e-4, from ../shared/reference/algorithms.md, not checked against the paper); token-level mean.
    # Reference resets are a trainer schedule, not a loss term.
    adv = grpo_adv(b)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.4)
                      + 1e-4 * k3(b.logp[i, t], b.ref[i, t]) + extra(i, t))


def ref_papo(b, extra=no_extra):
    # PAPO — "Perception-Aware Policy Optimization for Multimodal Reasoning" (Wang et al. 2025, arXiv:2507.06448):
    # J = J_GRPO + γ·KL_prcp with KL_prcp = D_KL[π_θ(o|q,I) ‖ π_θ(o|q,I_mask)] (k3 per token, maximised) and the
    # Double Entropy Loss η·(H[π_θ(·|I)] + H[π_θ(·|I_mask)]) minimised; γ = 0.01, η = 0.03 (the authors' config),
    # token mean, no reference KL.
    adv = grpo_adv(b)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2)
                      - 0.01 * k3(b.logp[i, t], b.masked_logp[i, t])
                      + 0.03 * (b.entropy[i, t] + b.masked_entropy[i, t]) + extra(i, t))


def ref_apo(b, extra=no_extra):
    # APO — "Enhancing Reasoning Ability of MLLMs via Asymmetric Policy Optimization" (View-R1;
    # arXiv:2506.21655): GRPO advantages; STCR: a wrong answer i with Δ_i = L_i − mean(L of the group's correct answers) > 0
    # gets Â_i·(1 + (1 − 1.00001^(−Δ_i))); DADS: with d = 1 − #correct/G, positives (Â > 0, 0 < d < 1) weight
    # their k3 KL by 1 − exp(−e·(1 − d)); β = 1e-3; 1/G Σ_i 1/|o_i| Σ_t.
    adv = grpo_adv(b)
    weight = [1.0] * b.n
    for g in groups(b):
        correct = [i for i in g if b.rewards[i] >= 1.0]
        d = 1 - len(correct) / len(g)
        mean_len = mean([b.lengths[i] for i in correct]) if correct else None
        for i in g:
            delta = b.lengths[i] - mean_len if mean_len is not None else 0
            if i not in correct and mean_len is not None and delta > 0:
                adv[i] = adv[i] * (1 + (1 - 1.00001 ** (-delta)))
            if adv[i] > 0 and 0 < d < 1:
                weight[i] = 1 - math.exp(-math.e * (1 - d))
    return seq_mean_token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2)
                               + 1e-3 * weight[i] * k3(b.logp[i, t], b.ref[i, t]) + extra(i, t))


def ref_acre(b, extra=no_extra):
    # ACRE (arXiv:2510.10104): plain GRPO (DeepSeekMath eq. 3) without a KL term; the method lives in its
    # option-shuffled second pass and four-way reward, which the loss never sees.
    adv = grpo_adv(b)
    return seq_mean_token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_vl_rethinker(b, extra=no_extra):
    # VL-Rethinker (arXiv:2504.08837): advantage r − mean(r) without std (its released trainer), PPO clip
    # 0.2, per-sequence token mean, no KL; forced rethinking changes the rollouts, not the loss.
    adv = centred_adv(b)
    return seq_mean_token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.2) + extra(i, t))


def ref_dph_rl(b, extra=no_extra):
    # DPH-RL ("The Choice of Divergence", arXiv:2509.07430): the RL part is DAPO-style clip-higher
    # (ε_high = 0.28), token-level mean, no reference KL; its f-divergence to π₀ acts on stored π₀ samples in a
    # separate term (tests/algorithms/test_divergences.py, tests/test_update.py).
    adv = grpo_adv(b)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 0.2, 0.28) + extra(i, t))


def ref_t_grpo(b, extra=no_extra):
    # T-GRPO (Video-R1, arXiv:2503.21776): the GRPO loss itself (DeepSeekMath eq. 3, k3 KL 0.04); its
    # temporal contrast only changes rewards (shuffled-frame pass + temporal_bonus).
    return ref_grpo(b, extra=extra)


def ref_lp_reg(b, extra=no_extra):
    # Lp-Reg (arXiv:2510.03222): on-policy with clipping effectively off (ε_low 1.0, ε_high 9.0, dual clip 10),
    # token mean, no KL; its min-p proxy term needs the full distribution and is checked by hand in test_losses.py.
    adv = grpo_adv(b)
    return token_mean(b, lambda i, t: ppo_term(ratio(b, i, t), adv[i], 1.0, 9.0, 10.0) + extra(i, t))


PAPER_REFERENCES = {
    "lp_reg": ref_lp_reg,
    "t_grpo": ref_t_grpo,
    "dph_rl": ref_dph_rl,
    "acre": ref_acre, "vl_rethinker": ref_vl_rethinker,
    "apo": ref_apo,
    "grpo": ref_grpo, "dr_grpo": ref_dr_grpo, "dapo": ref_dapo, "lite_ppo": ref_lite_ppo, "rloo": ref_rloo,
    "gspo": ref_gspo, "luspo": ref_luspo, "sapo": ref_sapo, "gppo": ref_gppo, "cispo": ref_cispo,
    "ngrpo": ref_ngrpo, "w_reinforce": ref_w_reinforce, "psr": ref_psr, "nsr": ref_nsr, "prorl": ref_prorl,
    "papo": ref_papo,
}


def _reinforce_w(b):
    # GPG-style importance-weighted REINFORCE (no clip): ℓ = −ρ·Â, with W-REINFORCE's advantages.
    adv = sign_adv(b, 0.1, 1.0)
    return token_mean(b, lambda i, t: -ratio(b, i, t) * adv[i])


# Knob combinations no preset uses, so that every registered piece meets a reference: (preset, overrides, ref).
VARIANTS = {
    "grpo+dual_clip": ("grpo", {"clip_c": 3.0}, lambda b: ref_grpo(b, clip_c=3.0)),
    "gppo+dual_clip": ("gppo", {"clip_c": 3.0}, lambda b: ref_gppo(b, clip_c=3.0)),
    "grpo+k1": ("grpo", {"kl_estimator": "k1"}, lambda b: ref_grpo(b, kl=k1)),
    "grpo+k2": ("grpo", {"kl_estimator": "k2"}, lambda b: ref_grpo(b, kl=k2)),
    "grpo+kl_in_reward": ("grpo", {"kl_placement": "reward"}, lambda b: ref_grpo(b, beta=0.0)),
    "w_reinforce+no_clip": ("w_reinforce", {"policy_loss": "reinforce"}, _reinforce_w),
    "psr+no_baseline": ("psr", {"baseline": "none"}, ref_psr),  # PSR's own form Â = r (binary r)
    "dapo+entropy_bonus": ("dapo", {"entropy_coef": 0.01},
                           lambda b: ref_dapo(b, extra=lambda i, t: -0.01 * b.entropy[i, t])),
    "gspo+kl+entropy_min": ("gspo", {"kl_coef": 0.02, "entropy_coef": -0.005},
                            lambda b: ref_gspo(b, extra=lambda i, t: 0.02 * k3(b.logp[i, t], b.ref[i, t])
                                               + 0.005 * b.entropy[i, t])),
    "luspo+entropy_bonus": ("luspo", {"entropy_coef": 0.02},
                            lambda b: ref_luspo(b, extra=lambda i, t: -0.02 * b.entropy[i, t])),
}


# ================================================================================================== the tests
def test_every_preset_has_a_paper_reference():
    assert sorted(PAPER_REFERENCES) == PRESETS.names()


def test_presets_and_variants_cover_every_registered_piece():
    configs = [preset(n) for n in PRESETS.names()] + [preset(p, **o) for p, o, _ in VARIANTS.values()]

    def shipped(registry):  # other test modules register their own controls (named test_*) at import
        return {n for n in registry.names() if not n.startswith("test_")}

    assert {c.baseline for c in configs} == shipped(BASELINES)
    assert {c.scale for c in configs} == shipped(SCALES)
    assert {c.ratio_level for c in configs} == shipped(RATIO_LEVELS)
    assert {c.policy_loss for c in configs} == shipped(POLICY_LOSSES)
    assert {c.aggregation for c in configs} == shipped(AGGREGATIONS)
    used_kl = {c.kl_estimator for c in configs if c.kl_coef > 0 and c.kl_placement == "loss"}
    used_kl |= {c.masked_kl_estimator for c in configs if c.masked_kl_coef > 0}
    assert used_kl == shipped(KL_ESTIMATORS)


def test_fixed_batch_exercises_what_it_claims():
    b = fixed_batch()
    # some tokens clip and some do not, for token-level PPO and for GSPO's sequence ratio
    for name in ("grpo", "dapo", "gspo", "ngrpo"):
        _, stats = mmrl_loss(b, preset(name))
        assert 0 < stats["clip"] < sum(LENGTHS), name
    # the dual clip binds on the forced large ratio
    with torch.no_grad():
        assert mmrl_loss(b, preset("grpo", clip_c=3.0))[0] != mmrl_loss(b, preset("grpo"))[0]
    # two tied groups, one of them all wrong (only NGRPO gives it a signal)
    adv = mmrl_advantages(b, preset("grpo"))
    assert torch.all(adv[4:12] == 0) and torch.all(adv[:4] != 0)
    assert torch.all(mmrl_advantages(b, preset("ngrpo"))[8:12] < 0)


@pytest.mark.parametrize("name", PRESETS.names())
def test_preset_matches_paper_reference(name):
    b = fixed_batch()
    loss, _ = mmrl_loss(b, preset(name))
    ref = PAPER_REFERENCES[name](b)
    torch.testing.assert_close(loss, ref, **TOL)
    got, want = grads(loss, b), grads(ref, b)
    for leaf, g, w in zip(("logp", "masked_logp", "entropy", "masked_entropy"), got, want):
        torch.testing.assert_close(g, w, **TOL, msg=lambda m, leaf=leaf: f"{name} d/d{leaf}: {m}")
    assert got[0].abs().sum() > 0 and loss.item() != 0.0  # the comparison is not vacuous
    assert torch.all(got[0][b.mask == 0] == 0)  # padding gets no gradient


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_paper_reference(variant):
    name, overrides, reference = VARIANTS[variant]
    b = fixed_batch()
    loss, _ = mmrl_loss(b, preset(name, **overrides))
    ref = reference(b)
    torch.testing.assert_close(loss, ref, **TOL)
    for g, w in zip(grads(loss, b), grads(ref, b)):
        torch.testing.assert_close(g, w, **TOL)


def test_group_filters():
    # DAPO dynamic sampling keeps a group iff 0 < #correct < G (reward std > 0); NGRPO drops only the
    # all-correct groups (its virtual max gives all-wrong ones a signal). The filters never touch the loss.
    r = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 0, 1, 1, 1], dtype=F64)
    expect = {"nonzero_std": [True, False, False, False, True], "drop_all_correct": [True, False, True, True, True],
              "none": [True] * 5}
    papers = {"dapo": "nonzero_std", "prorl": "nonzero_std", "ngrpo": "drop_all_correct",
              "vl_rethinker": "nonzero_std"}  # SSR drops vanishing-advantage groups (and replays others)
    for name in PRESETS.names():
        algo = preset(name)
        assert algo.group_filter == papers.get(name, "none"), name
        keep = keep_groups(r, 4, algo.group_filter, correct_threshold=algo.correct_threshold)
        assert keep.tolist() == expect[algo.group_filter], name


# ================================================================================================== properties
@st.composite
def random_batches(draw):
    g = draw(st.integers(2, 4))
    n = g * draw(st.integers(1, 3))
    width = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(1, width), min_size=n, max_size=n))
    rewards = draw(st.lists(st.sampled_from([0.0, 0.25, 0.9, 1.0]), min_size=n, max_size=n))
    near = tuple(i for i in range(n) if draw(st.booleans()))
    return make_batch(rewards, lengths, g, width, draw(st.integers(0, 2**16)), near=near)


def no_regularisers(algo: AlgorithmConfig) -> AlgorithmConfig:
    return dataclasses.replace(algo, kl_coef=0.0, entropy_coef=0.0, masked_kl_coef=0.0, masked_entropy_coef=0.0)


def terms_with(b: Batch, adv, old=None) -> TokenTerms:
    return TokenTerms(logp=b.logp, old_logp=b.old if old is None else old, mask=b.mask, advantages=adv,
                      entropy=b.entropy, ref_logp=b.ref, masked_logp=b.masked_logp, masked_entropy=b.masked_entropy)


def reinforce_weight(aggregation: str, b: Batch, i: int) -> float:
    """∂Agg/∂ℓ_{i,t} for an unmasked token, from each aggregation's formula."""
    return {"token_mean": 1 / sum(b.lengths), "seq_mean_token_mean": 1 / (b.lengths[i] * b.n),
            "seq_mean_token_sum": 1 / b.n, "seq_mean_token_sum_norm": 1 / (b.n * MAX_TOKENS)}[aggregation]


@CI
@given(b=random_batches())
def test_zero_advantages_give_zero_policy_gradient(b):
    zero = torch.zeros(b.n, dtype=F64)
    for name in PRESETS.names():
        loss, _ = objective(terms_with(b, zero), no_regularisers(preset(name)), global_norms(b))
        assert loss.item() == 0.0, name
        for g in grads(loss, b):
            assert torch.all(g == 0), name


@CI
@given(b=random_batches(), adv=st.lists(st.floats(-3, 3), min_size=12, max_size=12))
def test_ratio_one_clips_nothing_and_gives_the_reinforce_gradient(b, adv):
    a = torch.tensor(adv[: b.n], dtype=F64)
    for name in PRESETS.names():
        algo = no_regularisers(preset(name))
        loss, stats = objective(terms_with(b, a, old=b.logp.detach().clone()), algo, global_norms(b))
        assert stats["clip"] == 0.0, name
        (g,) = torch.autograd.grad(loss, b.logp)
        want = torch.zeros_like(g)
        for i in range(b.n):
            for t in range(b.lengths[i]):
                want[i, t] = -a[i] * reinforce_weight(algo.aggregation, b, i)
        torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@CI
@given(value=st.floats(-10, 10, allow_nan=False), others=st.lists(st.floats(-10, 10), min_size=4, max_size=4),
       g=st.integers(2, 4))
def test_tied_group_gets_zero_advantage(value, others, g):
    r = torch.tensor([value] * g + others[:g] + [value] * g, dtype=F64)  # groups 0 and 2 tied
    names = [n for n in PRESETS.names() if preset(n).baseline in ("group_mean", "leave_one_out")]
    assert {"grpo", "rloo", "lite_ppo", "dr_grpo"} <= set(names)
    for name in names:
        algo = preset(name)
        b = Batch(r.tolist(), [1] * len(r), g, *([None] * 7))
        adv = mmrl_advantages(b, algo)
        assert torch.all(adv[:g] == 0) and torch.all(adv[2 * g:] == 0), (name, adv)
    for baseline in ("group_mean", "leave_one_out"):
        for scale in SCALES.names():
            adv = advantages(r, group_size=g, baseline=baseline, scale=scale)
            assert torch.all(adv[:g] == 0) and torch.all(adv[2 * g:] == 0), (baseline, scale)


@pytest.mark.parametrize("level", RATIO_LEVELS.names())
@pytest.mark.parametrize("agg", AGGREGATIONS.names())
@CI
@given(b=random_batches(), name=st.sampled_from(PRESETS.names()), cuts=st.lists(st.integers(1, 11), max_size=3))
def test_micro_batch_split_invariance(agg, level, b, name, cuts):
    algo = preset(name, aggregation=agg, ratio_level=level, entropy_coef=0.01)  # KL / masked terms as the preset
    adv = mmrl_advantages(b, algo)
    full, full_stats = mmrl_loss(b, algo, adv)
    want = grads(full, b)
    bounds = [0, *sorted({c for c in cuts if c < b.n}), b.n]
    total, clipped = 0.0, 0.0
    for lo, hi in itertools.pairwise(bounds):
        part, stats = mmrl_loss(b, algo, adv, rows=slice(lo, hi), norms=global_norms(b))
        total, clipped = total + part, clipped + stats["clip"]
    torch.testing.assert_close(total, full, rtol=1e-10, atol=1e-12)
    assert clipped == full_stats["clip"]
    for g, w in zip(grads(total, b), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
