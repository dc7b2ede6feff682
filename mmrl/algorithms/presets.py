"""Presets: named bundles of algorithm knobs (a recipe's `algorithm.preset`); recipe values override them.

Each entry states its paper and arXiv id (each id checked against a page that pairs it with the title). Where a
value was not checked against the paper, the entry says so. A preset only sets `AlgorithmConfig` fields, so
every method is a configuration of the same registered pieces.
"""

from __future__ import annotations

import math

from mmrl.registry import Registry

PRESETS: Registry = Registry("algorithm preset")


def _preset(name: str, **knobs) -> None:
    PRESETS.register(name)(knobs)


_GRPO = dict(baseline="group_mean", scale="group_std", ratio_level="token", policy_loss="ppo_clip",
             clip_low=0.2, clip_high=0.2)

# GRPO — DeepSeekMath (arXiv:2402.03300): group mean/std advantages, PPO clip, per-sequence token mean, k3 KL.
_preset("grpo", **_GRPO, aggregation="seq_mean_token_mean", kl_coef=0.04, kl_estimator="k3")
# Dr. GRPO — "Understanding R1-Zero-Like Training" (arXiv:2503.20783): no std, constant normaliser N·L_max.
_preset("dr_grpo", **dict(_GRPO, scale="none"), aggregation="seq_mean_token_sum_norm", kl_coef=0.0)
# DAPO (arXiv:2503.14476): clip-higher 0.2 / 0.28, token mean over the batch, dynamic sampling, no KL.
# (Its soft overlong penalty is the `overlong` reward.)
_preset("dapo", **dict(_GRPO, clip_high=0.28), aggregation="token_mean", kl_coef=0.0,
        group_filter="nonzero_std", max_gen_batches=3)
# Lite PPO — "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning" (arXiv:2508.08221): group-mean
# baseline, batch std, token mean.
_preset("lite_ppo", **dict(_GRPO, scale="batch_std"), aggregation="token_mean", kl_coef=0.0)
# RLOO — "Back to Basics" (arXiv:2402.14740): leave-one-out baseline, no scaling.
_preset("rloo", **dict(_GRPO, baseline="leave_one_out", scale="none"), aggregation="seq_mean_token_mean",
        kl_coef=0.0)
# GSPO — Group Sequence Policy Optimization (arXiv:2507.18071): sequence ratio, tight clip 3e-4 / 4e-4.
_preset("gspo", **dict(_GRPO, ratio_level="sequence", clip_low=3e-4, clip_high=4e-4),
        aggregation="seq_mean_token_mean", kl_coef=0.0)
# LUSPO — Length-Unbiased Sequence Policy Optimization (arXiv:2602.05261): GSPO + length-weighted sum.
_preset("luspo", **dict(_GRPO, ratio_level="sequence", clip_low=3e-4, clip_high=4e-4),
        aggregation="seq_mean_token_sum", kl_coef=0.0)
# SAPO — Soft Adaptive Policy Optimization (Qwen; arXiv:2511.20347): sigmoid gate τ+ = 1.0, τ− = 1.05.
_preset("sapo", **dict(_GRPO, policy_loss="sapo"), tau_pos=1.0, tau_neg=1.05, aggregation="seq_mean_token_mean",
        kl_coef=0.0)
# GPPO — Klear-Reasoner (arXiv:2508.07629): gradient-preserving clip with DAPO's bounds.
_preset("gppo", **dict(_GRPO, policy_loss="gppo", clip_high=0.28), aggregation="token_mean", kl_coef=0.0)
# CISPO — MiniMax-M1 (arXiv:2506.13585): clipped, detached IS weight on every token; no lower bound.
_preset("cispo", **dict(_GRPO, policy_loss="cispo", clip_low=10.0, clip_high=0.2), aggregation="token_mean",
        kl_coef=0.0)
# NGRPO — negative-enhanced GRPO (arXiv:2509.18851): virtual max-reward sample, asymmetric clip, drop
# all-correct groups only.
_preset("ngrpo", **dict(_GRPO, baseline="virtual_max", clip_low=0.16, clip_high=0.24), virtual_reward=1.0,
        virtual_count=1, aggregation="token_mean", kl_coef=0.0, group_filter="drop_all_correct",
        correct_threshold=1.0)
# W-REINFORCE / PSR / NSR — "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning"
# (arXiv:2506.01347): Â = +λ for correct, −1 for wrong (λ = 0.1); PSR keeps only positives, NSR only negatives.
# Binary rewards.
_SIGN = dict(_GRPO, baseline="sign", scale="none")
_preset("w_reinforce", **_SIGN, pos_weight=0.1, neg_weight=1.0, aggregation="token_mean", kl_coef=0.0)
_preset("psr", **_SIGN, pos_weight=1.0, neg_weight=0.0, aggregation="token_mean", kl_coef=0.0)
_preset("nsr", **_SIGN, pos_weight=0.0, neg_weight=1.0, aggregation="token_mean", kl_coef=0.0)
# ProRL (arXiv:2505.24864): DAPO knobs with ε_high 0.4 (the paper's), a k3 KL of 1e-4 and a reference reset every
# 200 steps. The KL coefficient comes from ../shared/reference/algorithms.md and the 200-step interval is ours;
# neither was checked against the paper.
_preset("prorl", **dict(_GRPO, clip_high=0.4), aggregation="token_mean", kl_coef=1e-4, kl_estimator="k3",
        group_filter="nonzero_std", max_gen_batches=3, ref_reset_every=200)
# PAPO — Perception-Aware Policy Optimization (arXiv:2507.06448): GRPO + maximised KL between the policy on the
# real and on the patch-masked image (γ = 0.01, mask ratio 0.6) + double entropy penalty (η = 0.03 per branch).
# These values are those of the authors' examples/configs/config_grpo_papo.yaml (MikeWangWZHL/PAPO@fb63bf4).
_preset("papo", **_GRPO, aggregation="token_mean", kl_coef=0.0, masked_kl_coef=0.01, mask_ratio=0.6,
        masked_entropy_coef=0.03)
# APO — Asymmetric Policy Optimization, View-R1 (arXiv:2506.21655): GRPO with k3 KL β = 1e-3 whose weight on
# positive samples shrinks with prompt difficulty (DADS), and longer-than-correct wrong answers penalised more
# (STCR, base 1.00001 → rate ln 1.00001).
_preset("apo", **_GRPO, aggregation="seq_mean_token_mean", kl_coef=1e-3, kl_estimator="k3",
        kl_weighting="difficulty", neg_length_rate=math.log(1.00001), correct_threshold=1.0)
# ACRE — "Answer-Consistent Chain-of-thought Reinforcement Learning for Multi-modal Large Language Models"
# (arXiv:2510.10104): GRPO; the method is its second pass and reward — recipes/algorithms/acre.yaml adds
# `rollout.extra_passes: [{kind: shuffle_options}]` and the `acre` reward.
_preset("acre", **_GRPO, aggregation="seq_mean_token_mean", kl_coef=0.0)
# VL-Rethinker — "Incentivizing Self-Reflection of Vision-Language Models with RL" (arXiv:2504.08837):
# mean-only advantages as in its released trainer, no KL; selective sample replay = drop groups whose
# advantages vanish and fill the batch from a buffer of past informative groups (∝ |Â|); forced rethinking is
# the recipe's `rollout.extra_passes: [{kind: rethink}]`.
_preset("vl_rethinker", **dict(_GRPO, scale="none"), aggregation="seq_mean_token_mean", kl_coef=0.0,
        group_filter="nonzero_std", max_gen_batches=1, replay_capacity=256, replay_alpha=1.0)
# DPH-RL — "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in Reinforcement Learning
# with Verifiable Reward" (arXiv:2509.07430): DAPO-style clip-higher without a reference KL, plus a mass-covering
# f-divergence (JS; forward KL is the other choice) to π₀ on the samples π₀ already solves, coefficient 0.01.
_preset("dph_rl", **dict(_GRPO, clip_high=0.28), aggregation="token_mean", kl_coef=0.0,
        rehearsal_coef=0.01, rehearsal_divergence="js")
# T-GRPO — Video-R1 (arXiv:2503.21776): GRPO; its temporal contrast is the recipe's
# `rollout.extra_passes: [{kind: shuffle_frames}]` and the `temporal_bonus` reward (α = 0.3, μ = 0.8).
_preset("t_grpo", **_GRPO, aggregation="seq_mean_token_mean", kl_coef=0.04, kl_estimator="k3")
# Lp-Reg — low-probability regularisation, "Low-probability Tokens Sustain Exploration in Reinforcement Learning
# with Verifiable Reward" (arXiv:2510.03222): on-policy, clipping effectively off (ε_low 1.0, ε_high 9.0, dual
# clip 10), k3 to a min-p proxy (κ = 0.02) on the lowest 1 % of negative tokens, β = 1.
_preset("lp_reg", **dict(_GRPO, clip_low=1.0, clip_high=9.0), clip_c=10.0, aggregation="token_mean", kl_coef=0.0,
        lp_reg_coef=1.0, lp_reg_kappa=0.02, lp_reg_share=0.01)
