"""Loading a config checked in full: `mmrl.config`'s own checks (types, ranges, cross-field rules) composed with
each part's registry checks, which live beside their registries (`mmrl.algorithms.checks`, `mmrl.datasets.checks`,
`mmrl.rewards.checks`, `mmrl.rollout.checks`), and the algorithm presets. `load_config` is the loader to call:
`mmrl train`, `mmrl eval`, the benchmarks and the tests use it.

Why the composition lives here: `mmrl.config` sits at the bottom of the dependency graph (every part imports its
sections), so it cannot look names up in the parts' registries without pointing upward and closing an import
cycle; and the parts cannot register their checks into `mmrl.config` when imported, because nothing imports them
before a config is loaded. The command line is the first code that needs a config checked in full and it already
depends on every part, so the composition sits one level up from the parts, here. The parts are imported inside
the checks, which run only once the YAML has built into a `Config`: a bad key or type exits 2 without importing
them (nor transformers).
"""

from __future__ import annotations

from pathlib import Path

from mmrl import config
from mmrl.config import Config


def _preset(name: str) -> dict:
    from mmrl.algorithms import PRESETS

    return PRESETS.get(name)


def _algorithm_names(cfg: Config, bad: set[str]) -> list[str]:
    from mmrl.algorithms.checks import check_algorithm

    return check_algorithm(cfg.algorithm)


def _data_sources(cfg: Config, bad: set[str]) -> list[str]:
    from mmrl.datasets.checks import check_sources

    return check_sources(config.data_sources(cfg))


def _rollout_names(cfg: Config, bad: set[str]) -> list[str]:
    from mmrl.rollout.checks import check_rollout

    return check_rollout(cfg.rollout)


def _rewards(cfg: Config, bad: set[str]) -> list[str]:
    from mmrl.rewards.checks import check_rewards
    from mmrl.rewards.tools import TRAJECTORY_REWARDS

    errors = [e for key, rewards in config.reward_lists(cfg) for e in check_rewards(rewards, key)]
    if not cfg.rollout.tools:  # these score a multi-turn rollout's calls: without tools they have nothing to read
        errors += [f"{key}[{i}].fn: reward {r.fn!r} scores tool calls and needs rollout.tools (multi-turn rollouts)"
                   for key, rewards in config.reward_lists(cfg) for i, r in enumerate(rewards)
                   if r.fn in TRAJECTORY_REWARDS]
    return errors + _turn_rewards(cfg)


def _turn_rewards(cfg: Config) -> list[str]:
    """`algorithm.turn_rewards` name adding rewards of every RL stage's list, leave an outcome reward beside them, and
    need tool calls to credit."""
    from mmrl.rewards.checks import reward_names

    turn = cfg.algorithm.turn_rewards
    if not turn:
        return []
    if not cfg.rollout.tools:
        return [f"algorithm.turn_rewards: credits the turns that call a tool and needs rollout.tools (multi-turn "
                f"rollouts), got {turn}"]
    lists = [(f"stages[{i}].rewards", s.rewards) for i, s in enumerate(cfg.stages) if s.kind == "rl" and s.rewards]
    if any(s.kind == "rl" and s.rewards is None for s in cfg.stages):
        lists.insert(0, ("rewards", cfg.rewards))
    errors = []
    for key, rewards in lists:
        adding = {n for r, n in zip(rewards, reward_names(rewards)) if r.mode == "add"}
        if any(r.mode == "gate" for r in rewards):
            errors.append(f"algorithm.turn_rewards: a reward in `mode: gate` ({key}) overrides the whole total, which"
                          f" per-turn credit splits; use `gate:` on single rewards instead")
        missing = [n for n in turn if n not in adding]
        if missing:
            errors.append(f"algorithm.turn_rewards: {missing} are not adding rewards of {key} (rewards there: "
                          f"{sorted(adding)})")
        elif adding <= set(turn):
            errors.append(f"algorithm.turn_rewards: every reward of {key} is a turn reward; leave at least one (the "
                          f"answer's) out, got {turn}")
    return errors


# Each part's checks; `config.validate` runs them after the ranges and before its own cross-field CHECKS, which keeps
# every section's lines in the order they had when all checks lived in mmrl.config (names before cross-field rules).
PART_CHECKS: list[config.Check] = [_algorithm_names, _data_sources, _rollout_names, _rewards]


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`mmrl.config.load` with the algorithm presets and every part's checks: a recipe (+ `extends:` chain) and
    command-line overrides into a `Config`, or one `ConfigError` listing every problem of the pass that failed."""
    return config.load(recipe, overrides, preset=_preset, checks=PART_CHECKS)


def validate_config(cfg: Config) -> None:
    """`mmrl.config.validate` with every part's checks, for a `Config` built in code."""
    config.validate(cfg, PART_CHECKS)
