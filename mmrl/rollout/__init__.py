"""Rollout engines: `generate(prompts, n, sampling) -> Rollouts` and `sync_weights(policy)`.

Backends: `hf` (the training model itself, each prompt prefilled once per group; CPU and GPU), `vllm` (vLLM >= 0.32 offline engine, on a GPU or through its
CPU build; import-guarded: without vLLM, creating it raises a clear ImportError — see `mmrl.rollout.vllm`).
"""

from mmrl.rollout.hf import HFEngine
from mmrl.rollout.types import Rollouts, SamplingParams
from mmrl.rollout.vllm import VLLMEngine

# name -> factory(policy, rollout: RolloutConfig | None, video: VideoConfig | None)
ENGINES = {
    "hf": lambda policy, rollout, video: HFEngine(policy, loop=rollout.hf_loop if rollout else "mmrl"),
    "vllm": lambda policy, rollout, video: VLLMEngine(policy, rollout, video),
}


def make_engine(name: str, policy, rollout=None, video=None):
    """The engine `name` for `policy`; `rollout` (RolloutConfig) and `video` (the run's data.video, with which
    prompts were encoded) configure engines that need them (`vllm`); defaults when None."""
    from mmrl.registry import closest

    if name not in ENGINES:
        hint = closest(name, list(ENGINES))
        raise ValueError(f"rollout.engine: unknown engine {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
                         + f" (valid: {', '.join(ENGINES)})")
    return ENGINES[name](policy, rollout, video)


__all__ = ["HFEngine", "Rollouts", "SamplingParams", "VLLMEngine", "make_engine"]
