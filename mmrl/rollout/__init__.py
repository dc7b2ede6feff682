"""Rollout engines: `generate(prompts, n, sampling) -> Rollouts` and `sync_weights(policy)`.

Backends: `hf` (transformers generate; CPU and GPU). `vllm` arrives with the scale-out issue.
"""

from mmrl.rollout.types import Rollouts, SamplingParams
from mmrl.rollout.hf import HFEngine

ENGINES = {"hf": HFEngine}


def make_engine(name: str, policy):
    from mmrl.registry import closest

    if name not in ENGINES:
        hint = closest(name, list(ENGINES))
        raise ValueError(f"rollout.engine: unknown engine {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
                         + f" (valid: {', '.join(ENGINES)})")
    return ENGINES[name](policy)


__all__ = ["Rollouts", "SamplingParams", "HFEngine", "make_engine"]
