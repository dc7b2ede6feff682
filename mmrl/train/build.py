"""Builders: the pieces a run is made of, from its config. The trainer, `mmrl eval` and `mmrl export` build through
these, so a policy, an engine or the rewards are made the same way everywhere (eval and export never load the
training data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmrl.config import Config
from mmrl.datasets.sample import Sample
from mmrl.model import zoo
from mmrl.model.policy import Policy
from mmrl.model.sharding import Root
from mmrl.rewards.errors import ErrorReport
from mmrl.rewards.isolation import make_term
from mmrl.rollout import make_engine
from mmrl.runtime import Runtime
from mmrl.train import checkpoint
from mmrl.train.data import load_samples


def build_terms(rewards, key: str, report: ErrorReport | None = None) -> list:
    """The reward terms of a `rewards` list (config key `key`, e.g. `stages[1].rewards`); plug-in failures are
    reported to `report`."""
    return [make_term(r.fn, name=r.name, weight=r.weight, kwargs=r.kwargs, on_error=r.on_error,
                      timeout_s=r.timeout_s, style=r.style, isolate=r.isolate, gate=r.gate, mode=r.mode,
                      gate_min=r.gate_min, gate_penalty=r.gate_penalty, workers=r.workers, memory_mb=r.memory_mb,
                      report=report, config_key=f"{key}[{i}]")
            for i, r in enumerate(rewards)]


def build_rewards(cfg: Config, report: ErrorReport | None = None) -> tuple[list, dict[int, list]]:
    """(the run's reward terms, {stage index: its own terms} for stages that set `rewards`)."""
    base = build_terms(cfg.rewards, "rewards", report)
    return base, {i: build_terms(s.rewards, f"stages[{i}].rewards", report)
                  for i, s in enumerate(cfg.stages) if s.rewards is not None}


def build_eval_data(cfg: Config) -> tuple[list[Sample], int]:
    """(`data.eval`'s samples, how many bad ones were skipped)."""
    return load_samples(cfg.data.eval, "eval", cfg.data.on_bad_sample)


def build_policy(cfg: Config) -> Policy:
    """The policy of `model.path` on the runtime `runtime.device` asks for (a process group when launched under
    torchrun), seeded by `trainer.seed`, with `trainer.threads` CPU threads."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.trainer.seed)
    zoo.resolve(cfg.model.path)  # build a zoo model first: under a process group transformers saves on rank 0 only
    runtime = Runtime.create(cfg.runtime.device, autocast=cfg.model.autocast)
    return Policy.load(cfg.model, cfg.kernels, runtime)


def build_engine(cfg: Config, policy: Policy):
    """The sampling engine `rollout.engine` names, for `policy`; with `rollout.tools`, multi-turn rollouts that
    call them (`mmrl.rollout.tool_engine`)."""
    r = cfg.rollout
    if r.tools:
        from mmrl.rollout.tool_engine import ToolEngine
        from mmrl.tools.toolbox import Toolbox

        toolbox = Toolbox.from_configs(r.tools, r.tool_format, key="rollout.tools")
        vllm = make_engine(r.engine, policy, r, cfg.data.video) if r.engine == "vllm" else None
        return ToolEngine(policy, toolbox, max_turns=r.max_turns, stops=r.tool_stops,
                          system_prompt=cfg.data.system_prompt, vllm=vllm,
                          tool_image_max_pixels=r.tool_image_max_pixels)
    return make_engine(r.engine, policy, r, cfg.data.video)


def load_weights(policy: Policy, path: Path) -> dict[str, Any]:
    """Put checkpoint `path`'s weights into `policy` (replaying merged LoRA stages); return the checkpoint."""
    if checkpoint.is_sharded(path):  # written across processes: read back into this policy's own layout
        return checkpoint.load_sharded(path, policy.root or Root(policy.hf))
    ck = checkpoint.load(path)
    if ck["merged"]:
        policy.replay_merged_adapters(ck["merged"])
    policy.load_checkpoint_state(ck["weights"])
    return ck
