"""FSDP2 sharding of a transformers model (`Policy.shard`): every `_no_split_modules` block is its own
`fully_shard` unit, a `Root` around the model holds the rest; gradients are summed across ranks. How a run of
several processes uses it: `mmrl.train.distributed`."""

from __future__ import annotations

from typing import Any, Callable

import torch


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
