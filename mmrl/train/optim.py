"""The optimizer and its LR schedule: AdamW per stage, warm-up then constant / linear / cosine decay, one schedule
step per training step however many optimizer steps that step takes (mini-batches × epochs)."""

from __future__ import annotations

import math

import torch

from mmrl.config import StageConfig, TrainerConfig
from mmrl.train import distributed


def lr_factor(i: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """The LR multiplier after `i` schedule steps: linear warm-up over `warmup` steps, then `schedule` down to
    `min_ratio` at step `total`."""
    if i < warmup:
        return (i + 1) / (warmup + 1)
    frac = min((i - warmup) / max(total - warmup, 1), 1.0)
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * frac
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return 1.0


class Optimization:
    """AdamW over the policy's trainable parameters with its LR schedule; `new(stage)` starts a stage's."""

    def __init__(self, policy, cfg: TrainerConfig):
        self.policy = policy
        self.cfg = cfg
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None

    def new(self, stage: StageConfig) -> None:
        """A fresh optimizer and schedule for `stage` (its own `lr` / `lr_schedule` / `warmup_steps` when it sets
        them)."""
        t = self.cfg
        lr = stage.lr if stage.lr is not None else t.lr
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=lr, betas=tuple(t.betas),
                                           weight_decay=t.weight_decay)
        total, schedule = max(stage.steps, 1), stage.lr_schedule or t.lr_schedule
        warmup = stage.warmup_steps if stage.warmup_steps is not None else t.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: lr_factor(
            i, total=total, warmup=warmup, schedule=schedule, min_ratio=t.min_lr_ratio))

    def step(self, advance_schedule: bool = True) -> float:
        """Clip, step, zero; returns the gradient norm before clipping. The schedule advances when
        `advance_schedule` (the training step's last optimizer step)."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        if advance_schedule:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return distributed.full_norm(grad_norm)

    def restart(self, stage: StageConfig) -> None:
        """A fresh optimizer state with the LR schedule where it was (ProRL's hard reset of the reference)."""
        schedule = self.scheduler.state_dict()
        self.new(stage)
        self.scheduler.load_state_dict(schedule)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> tuple[dict | None, dict | None]:
        """(optimizer state, scheduler state), None where there is none yet."""
        return (self.optimizer.state_dict() if self.optimizer else None,
                self.scheduler.state_dict() if self.scheduler else None)
