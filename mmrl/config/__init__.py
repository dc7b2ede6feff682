"""Typed configuration: YAML recipes validated against a dataclass tree.

Precedence: dataclass defaults < algorithm preset < `extends:` chain < the recipe < its `smoke:` block (with
`smoke=true`) < command-line `key=value` overrides; mappings merge deeply, lists replace.
Unknown keys and wrong types raise `ConfigError` naming the dotted key (and the closest valid key) before any
model loads; then `validate` checks every numeric field's range (`RANGES`), the registry names (each part checks
its own: `mmrl.<part>.checks`, composed by `mmrl.cli.checks.load_config`, the loader to call) and cross-field rules
(`CHECKS`). Each phase reports every problem it finds at once, one `key: what is wrong, got V (valid: RANGE)` line
each; the CLI turns that into exit status 2. This package imports no other part of mmrl: they all import it.

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

from mmrl.config.loading import deep_merge, dump, load, merge_layer, parse_override, to_dict
from mmrl.config.sections import (
    AlgorithmConfig, Config, ConfigError, DataConfig, DataSource, DistributedConfig, ExtraPassConfig,
    KernelsConfig, LoraConfig, MixSource, ModelConfig, RewardConfig, RolloutConfig, RunConfig, RuntimeConfig,
    StageConfig, ToolConfig, TrainerConfig, VideoConfig,
)
from mmrl.config.validation import RANGES, Check, Range, data_sources, range_errors, ranges_of, reward_lists, validate

__all__ = [
    "AlgorithmConfig", "Check", "Config", "ConfigError", "DataConfig", "DataSource", "DistributedConfig",
    "ExtraPassConfig", "KernelsConfig", "LoraConfig", "MixSource", "ModelConfig", "RANGES", "Range", "RewardConfig",
    "RolloutConfig", "RunConfig", "RuntimeConfig", "StageConfig", "ToolConfig", "TrainerConfig", "VideoConfig",
    "data_sources", "deep_merge", "dump", "load", "merge_layer", "parse_override", "range_errors", "ranges_of",
    "reward_lists", "to_dict", "validate",
]
