"""Validating a built `Config`: every numeric field's range (`RANGES`) and the cross-field rules that need no
registry (`CHECKS`); one `ConfigError` lists every problem, in field order. Registry names are checked beside their
registries (`mmrl.algorithms.checks`, `mmrl.datasets.checks`, `mmrl.rewards.checks`, `mmrl.rollout.checks`);
`validate` runs those it is given (`mmrl.cli.checks` composes them), so this package imports no other part."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.config.sections import (
    AlgorithmConfig, Config, ConfigError, DataConfig, DataSource, KernelsConfig, LoraConfig, MixSource, ModelConfig,
    RewardConfig, RolloutConfig, StageConfig, ToolConfig, TrainerConfig, VideoConfig,
)


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
    ModelConfig: {"image_min_pixels": at_least(1, "or null = the checkpoint's"),
                  "image_max_pixels": at_least(1, "or null = the checkpoint's")},
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
        "tis_cap": above(0, "or null = off"), "max_turns": at_least(1), "turn_cap_penalty": ANY_NUMBER,
        "tool_image_max_pixels": at_least(1, "or null = the processor's"),
    },
    RewardConfig: {"weight": ANY_NUMBER, "timeout_s": above(0), "workers": at_least(1), "gate_min": ANY_NUMBER,
                   "gate_penalty": ANY_NUMBER, "memory_mb": at_least(1, "MB per worker; or null = no cap")},
    ToolConfig: {"timeout_s": above(0), "memory_mb": at_least(1, "MB; or null = no cap")},
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
    StageConfig: {"steps": at_least(0), "lr": above(0, "or null = trainer.lr"), "thought_dropout": PROBABILITY,
                  "warmup_steps": at_least(0, "or null = trainer.warmup_steps")},
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


# A check: (cfg, keys that failed their range or an earlier check) -> problems, one `key: …` line each.
Check = typing.Callable[[Config, set[str]], typing.Iterable[str]]


def validate(cfg: Config, checks: typing.Sequence[Check] = ()) -> None:
    """Ranges, then `checks` (the parts' registry names: `mmrl.cli.checks` passes them), then the cross-field
    `CHECKS`, before any model loads: one ConfigError with every problem, grouped by section in field order."""
    errors = list(range_errors(cfg))
    for check in [*checks, *CHECKS]:
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


def data_sources(cfg: Config) -> list[tuple[str, DataSource]]:
    """(key, source) of every data source the config holds: train, eval, the mix, each stage's own."""
    out = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    out += [(f"data.mix[{i}]", m) for i, m in enumerate(cfg.data.mix)]
    return out + [(f"stages[{i}].data", s.data) for i, s in enumerate(cfg.stages) if s.data is not None]


def reward_lists(cfg: Config) -> list[tuple[str, list[RewardConfig]]]:
    """(key, rewards) of every reward list the config holds: the run's, then each stage's own."""
    out = [("rewards", cfg.rewards)]
    return out + [(f"stages[{i}].rewards", s.rewards) for i, s in enumerate(cfg.stages) if s.rewards is not None]


def _check_video(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
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
    """vLLM's context and adapter mode (the engine and extra passes by name: `mmrl.rollout.checks`)."""
    r = cfg.rollout
    if r.vllm_max_model_len is not None and bad.isdisjoint({"rollout.vllm_max_model_len", "rollout.max_new_tokens"}) \
            and r.vllm_max_model_len <= r.max_new_tokens:
        yield (f"rollout.vllm_max_model_len: must exceed rollout.max_new_tokens ({r.max_new_tokens}) to leave room for"
               f" the prompt, got {r.vllm_max_model_len} (valid: ({r.max_new_tokens}, ∞) or null)")
    if r.tools:
        a = cfg.algorithm
        clash = [(bool(r.extra_passes), "rollout.extra_passes"),
                 (a.rehearsal_coef > 0, "algorithm.rehearsal_coef > 0"),
                 (a.replay_capacity > 0, "algorithm.replay_capacity > 0")]
        for hit, what in clash:
            if hit:
                yield (f"rollout.tools: multi-turn rollouts run without extra passes, rehearsal or replay for now; "
                       f"got {what} (valid: none of those)")
    m = cfg.model
    if r.tool_image_max_pixels is not None:
        if not r.tools:
            yield (f"rollout.tool_image_max_pixels: sizes the images tools return; set rollout.tools or leave it null, "
                   f"got {r.tool_image_max_pixels}")
        elif r.engine != "hf":
            yield (f"rollout.tool_image_max_pixels: tool images on their own pixel cap run on the hf engine only (vLLM "
                   f"processes a request's images under one cap), got rollout.engine={r.engine} (valid: hf, or null)")
        elif m.image_min_pixels and r.tool_image_max_pixels < m.image_min_pixels:
            yield (f"rollout.tool_image_max_pixels: must be >= model.image_min_pixels ({m.image_min_pixels}), got "
                   f"{r.tool_image_max_pixels}")
    if m.image_min_pixels and m.image_max_pixels and m.image_min_pixels > m.image_max_pixels:
        yield (f"model.image_min_pixels: must be <= model.image_max_pixels ({m.image_max_pixels}), got "
               f"{m.image_min_pixels}")
    adapter = r.engine == "vllm" and r.vllm_lora_sync == "adapter" and cfg.model.mode == "lora"
    if adapter and not cfg.model.freeze_vision:
        yield ("rollout.vllm_lora_sync: adapter serves language-model adapters only, got adapter with "
               "model.freeze_vision: false (valid: merged, or adapter with model.freeze_vision: true)")


def _check_model(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    """Prompt sharing needs a 4-D attention mask, which packing does not take (`auto` with flash-attention is
    refused when the policy loads)."""
    if cfg.model.share_prompt and cfg.model.packing == "always":
        yield ("model.share_prompt: runs each prompt once under a 4-D attention mask and does not combine with "
               "model.packing: always (valid: share_prompt false, or packing never / auto without flash-attention)")


def _check_runtime(cfg: Config, bad: set[str]) -> typing.Iterator[str]:
    from mmrl.runtime import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(cfg.runtime.device):
        yield f"runtime.device: {cfg.runtime.device!r} is not one of auto, cpu, cuda, cuda:N"
    if cfg.resume not in ("none", "auto") and not Path(cfg.resume).exists():
        yield f"resume: checkpoint {cfg.resume!r} does not exist"


# the cross-field checks that need no registry; run in order, all of them, after the parts' checks
CHECKS: list[Check] = [_check_model, _check_video, _check_rollout, _check_stages, _check_algorithm, _check_runtime]
