"""Multi-process training on PyTorch's own engines: torchrun + FSDP2 `fully_shard` + torch.distributed.checkpoint.

`torchrun --nproc_per_node=K -m mmrl train RECIPE` (multi-node: add `--nnodes`, `--node_rank`, `--rdzv_endpoint`)
starts K processes; each reads RANK / WORLD_SIZE from the environment and joins one process group (NCCL on GPU,
gloo on CPU). A run gives the same losses and weights with 1 or K processes for the same global batch:

- **The model** is sharded with FSDP2: every decoder layer and vision block (the classes the model lists in
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

from typing import Any, Callable

import torch

from mmrl.runtime import HOST, Dist


class Root(torch.nn.Module):
    """The root FSDP unit around a transformers model: `root(fn)` runs `fn(model)` inside the root's forward, so
    FSDP gathers the root-level parameters first and reduces their gradients afterwards."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[[torch.nn.Module], Any]) -> Any:  # noqa: D401
        return fn(self.module)


def shard(model: torch.nn.Module, device: torch.device, *, mixed_precision: str = "none",
          reshard_after_forward: bool = True) -> Root:
    """FSDP2-shard `model` in place over the processes' `device`s (each rank's shards move there): each
    `_no_split_modules` block (decoder layers, vision blocks), then a `Root` over the rest; gradients summed across
    ranks. Returns the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    kw: dict[str, Any] = {"reshard_after_forward": reshard_after_forward, "mesh": mesh}
    if mixed_precision == "bfloat16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no `_no_split_modules`: cannot choose FSDP units")
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, **kw)
    root = Root(model)
    fully_shard(root, **kw)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum: each rank's loss has the global normalisers
            module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
    return root


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
