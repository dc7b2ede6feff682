"""Multi-process training on PyTorch's own engines: torchrun + FSDP2 `fully_shard` + torch.distributed.checkpoint.

`torchrun --nproc_per_node=K -m mmrl train RECIPE` (multi-node: add `--nnodes`, `--node_rank`, `--rdzv_endpoint`)
starts K processes; each reads RANK / WORLD_SIZE from the environment and joins one process group (NCCL on GPU,
gloo on CPU). A run gives the same losses and weights with 1 or K processes for the same global batch:

- **The model** is sharded with FSDP2 (`mmrl.model.sharding`): every decoder layer and vision block (the classes the model lists in
  `_no_split_modules`) is its own `fully_shard` unit, and a root unit (`Root`) holds the rest (embeddings, patch
  embedding, merger, final norm, lm_head). Everything that runs the model — generation, log-prob passes — goes
  through `Root.forward(fn)` so the root's parameters are gathered and its gradients reduced by FSDP itself.
  Gradients are *summed* across ranks (divide factor 1): each rank's loss already carries the global
  normalisers, so the sum is the single-process gradient. `distributed.mixed_precision: bfloat16` computes in
  bf16 with fp32 gradient reduction (`MixedPrecisionPolicy`).
- **Work** is split by completion rows, never inside a group's statistics: every rank draws the same prompts,
  generation is split by prompt (`ShardedEngine`; generation keeps running in lock-step until every rank is done,
  `synced_gpus`) and the completions are gathered, so rewards, group filters and advantages are computed on the
  whole batch exactly as in one process. Log-prob passes and the update then take a contiguous block of rows per
  rank (`Dist.block`), padded with zero-weight rows so every rank runs the same number of forward/backward
  passes (FSDP's collectives must match).
- Metrics are reduced across ranks; only rank 0 writes logs, rollouts, plots and the trainer state.

Sampling is seeded per (seed, step, prompt id, completion), so which rank generates a prompt does not matter.
"""

from __future__ import annotations

from typing import Any

import torch

from mmrl.runtime import HOST, Dist


def full_norm(norm: torch.Tensor) -> float:
    """A gradient norm as a float, whether it is a plain tensor or a DTensor (FSDP parameters)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


class ShardedEngine:
    """A rollout engine split across ranks by prompt: each rank generates ⌈B/K⌉ prompts (padded with copies of its
    last one, discarded), then every rank receives all the completions, prompt-major as one engine gives them
    (exchanged through the host, back on `device`)."""

    def __init__(self, engine, dist: Dist, device: torch.device):
        self.engine, self.dist, self.device = engine, dist, device

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(self, prompts, n: int, params, batch_prompts: int = 16):
        from mmrl.rollout.types import concat_rollouts, select_groups

        rows, pad = self.dist.block(len(prompts))
        mine = [prompts[i] for i in rows] + [prompts[rows[-1] if rows else 0]] * pad
        local = self.engine.generate(mine, n, params, batch_prompts=batch_prompts)
        local = select_groups(local, list(range(len(rows))))  # drop the padding prompts' groups
        parts = self.dist.gather(local.to(HOST))
        offsets = [min(r * -(-len(prompts) // self.dist.size), len(prompts)) for r in range(self.dist.size)]
        keep = [(p, o) for p, o in zip(parts, offsets) if len(p)]
        return concat_rollouts([p for p, _ in keep], [o for _, o in keep]).to(self.device)
