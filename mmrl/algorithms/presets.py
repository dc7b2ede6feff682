"""Presets: named bundles of algorithm knobs (a recipe's `algorithm.preset`); recipe values override them."""

from __future__ import annotations

from mmrl.registry import Registry

PRESETS: Registry = Registry("algorithm preset")

# GRPO — DeepSeekMath (arXiv:2402.03300): group-normalised advantages, PPO clip, k3 KL to the reference.
PRESETS.register("grpo")(dict(advantage="group_norm", policy_loss="ppo_clip", clip_low=0.2, clip_high=0.2,
                              aggregation="seq_mean_token_mean", kl_coef=0.04, kl_estimator="k3"))
# Dr. GRPO — arXiv:2503.20783: no std scaling; (the constant-normaliser aggregation comes with the algorithms issue).
PRESETS.register("dr_grpo")(dict(advantage="group_center", policy_loss="ppo_clip", clip_low=0.2, clip_high=0.2,
                                 aggregation="token_mean", kl_coef=0.0))
# DAPO — arXiv:2503.14476: clip-higher (0.2 / 0.28), token-level mean, no KL.
PRESETS.register("dapo")(dict(advantage="group_norm", policy_loss="ppo_clip", clip_low=0.2, clip_high=0.28,
                              aggregation="token_mean", kl_coef=0.0))
