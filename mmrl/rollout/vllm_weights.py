"""Weights for the `vllm` rollout engine (`mmrl.rollout.vllm`): the policy's tensors under the names vLLM's
`load_weights` expects, LoRA merged or served as an adapter, and when they must be pushed again.

The policy's HF-named tensors go to the worker's `reload_weights` (vLLM's in-place reload: loads through the model's
`load_weights`, redoes the backend's weight processing, e.g. the CPU build's repacking, and clears the encoder /
multimodal caches) in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, so nothing is serialised). LoRA:
`rollout.vllm_lora_sync: merged` pushes base + ΔW (`lora_free_weights(with_delta=True)`); `adapter` saves the peft
adapter and serves it with a `LoRARequest` (base weights pushed only when a stage merge changed them). The engine
also pushes by itself when `fingerprint` changes (the trainable parameters' in-place version counters,
`torch.Tensor._version`), so stale weights are never sampled from.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig: allowed max_lora_rank values


def vllm_weight_name(name: str) -> str:
    """HF parameter name as vLLM's `load_weights` maps it: wrappers (compile / checkpointing / FSDP) removed."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def lora_free_weights(model: torch.nn.Module, with_delta: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under base names (peft's `.base_layer.` removed, adapter tensors left out); with
    `with_delta`, each adapted weight is base + ΔW of its active unmerged adapters (what `merge_and_unload`
    gives, without touching the model)."""
    deltas: dict[str, torch.Tensor] = {}
    if with_delta:
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            deltas = _lora_deltas(model, LoraLayer)
    for name, t in model.state_dict().items():
        if ".lora_" in name:
            continue
        base = vllm_weight_name(name.replace(".base_layer.", "."))
        yield base, (t + deltas[base].to(t.dtype) if base in deltas else t)


def _lora_deltas(model: torch.nn.Module, layer_type) -> dict[str, torch.Tensor]:
    """ΔW = scale · B·A (summed over active, unmerged adapters) per adapted weight name."""
    deltas: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, layer_type) and not mod.merged and not getattr(mod, "disable_adapters", False):
            for a in mod.active_adapters:
                if a in mod.lora_A:
                    key = vllm_weight_name(name + ".weight")
                    d = mod.get_delta_weight(a)
                    deltas[key] = deltas[key] + d if key in deltas else d
    return deltas


def lora_rank(r: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that fits rank r."""
    fits = [k for k in LORA_RANKS if k >= r]
    if not fits:
        raise ValueError(f"model.lora.r={r} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}")
    return fits[0]


def fingerprint(policy) -> tuple:
    """Changes whenever a trainable parameter is modified in place (optimizer steps, checkpoint loads) or a stage
    merge replaces the model."""
    return id(policy.hf), len(policy.merged_adapters), tuple(p._version for p in policy.parameters())
