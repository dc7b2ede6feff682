"""Advantages: per-completion rewards [N = B·G] → per-completion advantages [N], as three orthogonal knobs (and, for
multi-turn trajectories with turn rewards, per-token advantages [N, C]: `turn_credit`).

Â_i = w_sign(Â) · (r_i − b_i) / s_i, with the baseline b (`algorithm.baseline`), the scale s (`algorithm.scale`)
and sign weights w₊ / w₋ (`algorithm.pos_weight` / `neg_weight`). Completions arrive grouped: rows g·G … g·G+G−1
belong to prompt g. A baseline returns the centred rewards [B, G] and the pool [B, G'] its group statistics use
(the group itself, or the group plus virtual samples for NGRPO); a scale divides by a spread of that pool.

GRPO = group_mean + group_std; Dr. GRPO = group_mean + none; Lite PPO = group_mean + batch_std; RLOO =
leave_one_out + none; NGRPO = virtual_max + group_std; W-REINFORCE / PSR / NSR = sign + none with sign weights.

Unusable completions (`valid` False: finish reason "error") carry a NaN reward inside: every statistic skips them
(their group's mean, std, leave-one-out count, the batch std), and their advantage is 0.

The batch std runs over every completion the step generated (`batch_rewards`), including the groups a group filter
then drops: in ROLL, the framework Lite PPO was measured with, rewards are normalised over the generated batch and
the difficulty filter is a loss mask applied afterwards, and TRL's `scale_rewards="batch"` has no filter at all.
"""

from __future__ import annotations

import math

import torch

from mmrl.registry import Registry

BASELINES: Registry = Registry("advantage baseline")
SCALES: Registry = Registry("advantage scale")


def tie_mask(pool: torch.Tensor) -> torch.Tensor:
    """[B, 1] True where every value of the row that is not NaN is equal (or none is left)."""
    nan = pool.isnan()
    low = pool.masked_fill(nan, float("inf")).amin(dim=1, keepdim=True)
    high = pool.masked_fill(nan, float("-inf")).amax(dim=1, keepdim=True)
    return (low == high) | nan.all(dim=1, keepdim=True)


def _count(pool: torch.Tensor) -> torch.Tensor:
    """[B, 1] values per row that are not NaN."""
    return (~pool.isnan()).sum(dim=1, keepdim=True)


def _centre(r: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """r − mean(pool) over its non-NaN values, exactly 0 in rows whose pool is all equal: the float mean of equal
    values can differ from them by one rounding step (e.g. 7 × 0.9 in fp32), and dividing that residue by the
    near-zero std would give every completion of the group a spurious advantage of the same sign."""
    return (r - pool.nanmean(dim=1, keepdim=True)).masked_fill(tie_mask(pool), 0.0)


def _std(x: torch.Tensor) -> torch.Tensor:
    """[B, 1] sample std (Bessel-corrected) of each row's non-NaN values; 0 where fewer than 2 remain."""
    n = _count(x)
    ss = ((x - x.nanmean(dim=1, keepdim=True)) ** 2).nansum(dim=1, keepdim=True)
    return torch.where(n > 1, (ss / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(ss))


@BASELINES.register("group_mean")
def group_mean(r: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """b = mean_G r (GRPO, DeepSeekMath arXiv:2402.03300; Dr. GRPO arXiv:2503.20783)."""
    return _centre(r, r), r


@BASELINES.register("leave_one_out")
def leave_one_out(r: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """b_i = mean_{j≠i} r_j, i.e. r_i − b_i = G/(G−1) · (r_i − mean_G r) (RLOO, Ahmadian et al. arXiv:2402.14740)."""
    if r.shape[1] < 2:
        raise ValueError("leave_one_out needs a group size of at least 2")
    g = _count(r).to(r.dtype)  # [B, 1] usable completions
    return _centre(r, r) * (g / (g - 1).clamp(min=1)), r


@BASELINES.register("virtual_max")
def virtual_max(
    r: torch.Tensor, *, virtual_reward: float = 1.0, virtual_count: int = 1, **_
) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics over the group plus `virtual_count` virtual samples of reward `virtual_reward` (NGRPO,
    "negative-enhanced GRPO"; arXiv:2509.18851): b = mean(R ∪ {r_max}^m), so an all-wrong
    group gets negative advantages instead of none, and a mixed group a negative shift."""
    if virtual_count < 1:
        raise ValueError(f"virtual_max needs virtual_count >= 1, got {virtual_count}")
    extra = torch.full((r.shape[0], virtual_count), float(virtual_reward), dtype=r.dtype, device=r.device)
    pool = torch.cat([r, extra], dim=1)  # [B, G + m]
    return _centre(r, pool), pool


@BASELINES.register("sign")
def sign(r: torch.Tensor, *, sign_threshold: float = 0.5, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """No learned baseline: +1 for a correct completion (r > threshold), −1 otherwise. With `scale: none` and
    sign weights this is W-REINFORCE (w₊ = λ = 0.1, w₋ = 1), PSR (1, 0) or NSR (0, 1) ("The Surprising
    Effectiveness of Negative Reinforcement in LLM Reasoning"; arXiv:2506.01347)."""
    return torch.where(r > sign_threshold, 1.0, -1.0).to(r.dtype), r


@BASELINES.register("none")
def no_baseline(r: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """b = 0: Â = r (plain REINFORCE)."""
    return r.clone(), r


def _divide(centred: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """centred / denom, 0 where the spread is 0 (a tied pool, whose centred values are exactly 0; also eps = 0)."""
    return torch.where(denom > 0, centred / denom.clamp(min=torch.finfo(centred.dtype).tiny), torch.zeros_like(centred))


@SCALES.register("group_std")
def group_std(centred: torch.Tensor, pool: torch.Tensor, r_all: torch.Tensor, *, eps: float) -> torch.Tensor:
    """÷ (std(pool) + ε) per group, the sample std (Bessel-corrected) as in DeepSeekMath and TRL."""
    return _divide(centred, _std(pool) + eps)


@SCALES.register("batch_std")
def batch_std(centred: torch.Tensor, pool: torch.Tensor, r_all: torch.Tensor, *, eps: float) -> torch.Tensor:
    """÷ (std of every usable reward in the generated batch + ε): Lite PPO ("Part I: Tricks or Traps? A Deep Dive
    into RL for LLM Reasoning", arXiv:2508.08221: group-level mean, batch-level std) and TRL's
    `scale_rewards="batch"`. `r_all` holds the whole generated batch, filtered groups included (module docstring)."""
    return _divide(centred, _std(r_all.reshape(1, -1)) + eps)


@SCALES.register("none")
def no_scale(centred: torch.Tensor, pool: torch.Tensor, r_all: torch.Tensor, *, eps: float) -> torch.Tensor:
    """No scaling (Dr. GRPO: the std division biases updates towards too easy and too hard prompts)."""
    return centred


def advantages(
    rewards: torch.Tensor, *, group_size: int, baseline: str = "group_mean", scale: str = "group_std",
    eps: float = 1e-6, pos_weight: float = 1.0, neg_weight: float = 1.0, valid: torch.Tensor | None = None,
    batch_rewards: torch.Tensor | None = None, **options,
) -> torch.Tensor:
    """Â [N] from rewards [N]: baseline, scale, then ×`pos_weight` where Â > 0 and ×`neg_weight` where Â < 0.
    `valid` [N] (default all): completions to use; the others are left out of every statistic and get Â = 0.
    `batch_rewards` [M] (default the usable `rewards`): the rewards batch statistics run over, i.e. every
    completion the step generated, NaN for unusable ones.

    `options` go to the baseline (`virtual_reward`, `virtual_count`, `sign_threshold`).

    >>> advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, scale="none")
    tensor([ 0.7500, -0.2500, -0.2500, -0.2500])
    """
    if valid is not None:
        rewards = rewards.masked_fill(~valid, float("nan"))
    r = rewards.view(-1, group_size)  # [B, G]
    centred, pool = BASELINES.get(baseline)(r, **options)  # [B, G], [B, G']
    adv = SCALES.get(scale)(centred, pool, rewards if batch_rewards is None else batch_rewards, eps=eps)  # [B, G]
    if pos_weight != 1.0 or neg_weight != 1.0:
        adv = torch.where(adv > 0, adv * pos_weight, adv * neg_weight)
    adv = adv.reshape(-1)  # [N]
    return adv if valid is None else adv.masked_fill(~valid, 0.0)


def group_difficulty(rewards: torch.Tensor, group_size: int, correct_threshold: float) -> torch.Tensor:
    """d = 1 − (#correct in the group) / G per completion [N] (correct: r ≥ threshold)."""
    r = rewards.view(-1, group_size)  # [B, G]
    d = 1.0 - (r >= correct_threshold).float().mean(dim=1, keepdim=True)  # [B, 1]
    return d.expand_as(r).reshape(-1)


def scale_long_negatives(
    adv: torch.Tensor, rewards: torch.Tensor, lengths: torch.Tensor, *, group_size: int, correct_threshold: float,
    rate: float,
) -> torch.Tensor:
    """APO's STCR ("Asymmetric Policy Optimization", View-R1; arXiv:2506.21655): a wrong
    completion longer than its group's mean correct length L̄⁺ by Δ > 0 gets Â ← Â·(1 + (1 − e^{−rate·Δ}))
    (at most 2×; View-R1 uses base 1.00001, i.e. rate = ln 1.00001); no change in groups without a correct one."""
    if rate <= 0:
        return adv
    r, a, lens = rewards.view(-1, group_size), adv.view(-1, group_size), lengths.view(-1, group_size).to(adv.dtype)
    correct = r >= correct_threshold  # [B, G]
    n_correct = correct.sum(dim=1, keepdim=True)  # [B, 1]
    mean_correct = (lens * correct).sum(dim=1, keepdim=True) / n_correct.clamp(min=1)  # [B, 1]
    delta = lens - mean_correct  # [B, G]
    scale = 1.0 + (1.0 - torch.exp(-rate * delta.clamp(min=0)))
    apply = (~correct) & (n_correct > 0) & (delta > 0)
    return torch.where(apply, a * scale, a).reshape(-1)


def difficulty_kl_weights(adv: torch.Tensor, difficulty: torch.Tensor) -> torch.Tensor:
    """APO's DADS: per-completion KL weight w = 1 − exp(−e·(1 − d)) for Â > 0 with d ∈ (0, 1), else 1 — easy
    prompts' positive samples keep a strong pull to the reference, hard ones are freed to explore."""
    w = 1.0 - torch.exp(-math.e * (1.0 - difficulty))
    inside = (difficulty > 0) & (difficulty < 1) & (adv > 0)
    return torch.where(inside, w, torch.ones_like(w))


def compute(rewards: torch.Tensor, lengths: torch.Tensor, algo, *, group_size: int,
            correctness: torch.Tensor | None = None, valid: torch.Tensor | None = None,
            batch_rewards: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Â [N], per-completion KL weight [N] or None) from an `AlgorithmConfig`: baseline, scale, sign weights,
    then the length scaling of long wrong answers and the difficulty KL weights when enabled. `correctness` (the
    rewards that decide right and wrong; default `rewards`) is compared with `algo.correct_threshold`; `valid` [N]
    (default all) leaves unusable completions out of the statistics, with Â = 0; `batch_rewards` as in
    `advantages`."""
    correctness = rewards if correctness is None else correctness
    adv = of_config(rewards, algo, group_size=group_size, valid=valid, batch_rewards=batch_rewards)
    adv = scale_long_negatives(adv, correctness, lengths, group_size=group_size,
                               correct_threshold=algo.correct_threshold, rate=algo.neg_length_rate)
    weight = None
    if algo.kl_weighting == "difficulty":
        weight = difficulty_kl_weights(adv, group_difficulty(correctness, group_size, algo.correct_threshold))
    return adv, weight


def of_config(rewards: torch.Tensor, algo, *, group_size: int, valid: torch.Tensor | None = None,
              batch_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """`advantages` [N] with an `AlgorithmConfig`'s baseline, scale and sign weights."""
    return advantages(
        rewards, group_size=group_size, baseline=algo.baseline, scale=algo.scale, eps=algo.adv_eps,
        pos_weight=algo.pos_weight, neg_weight=algo.neg_weight, virtual_reward=algo.virtual_reward,
        virtual_count=algo.virtual_count, sign_threshold=algo.sign_threshold, valid=valid,
        batch_rewards=batch_rewards,
    )


def turn_credit(outcome: torch.Tensor, turn: torch.Tensor, call_turns: torch.Tensor) -> torch.Tensor:
    """Per-token advantages [N, C] of multi-turn trajectories: Â_outcome [N] on every token, plus Â_turn [N] on the
    tokens of the turns that called a tool (`call_turns` [N, C]) — the turn-level credit of MT-GRPO ("Reinforcing
    Multi-Turn Reasoning in LLM Agents via Turn-Level Credit Assignment", arXiv:2505.11821), with its λ = 1: a reward
    on the call (the crop holds the target) moves the call's tokens and leaves the answer's to the outcome reward.

    >>> turn_credit(torch.tensor([1.0, -1.0]), torch.tensor([0.5, -0.5]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    tensor([[ 1.5000,  1.5000,  1.0000],
            [-1.5000, -1.0000, -1.0000]])
    """
    return outcome.unsqueeze(1) + turn.unsqueeze(1) * call_turns.to(outcome.dtype)
