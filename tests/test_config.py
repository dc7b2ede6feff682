"""Config loading: unknown keys, wrong types, `extends:`, overrides, smoke blocks, presets, registry names."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mmrl import config
from mmrl.algorithms import BASELINES, POLICY_LOSSES, PRESETS
from mmrl.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str, overrides=()) -> config.Config:
    return config.load(write(tmp_path / "recipe.yaml", text), list(overrides))


def error_of(tmp_path: Path, text: str, overrides=()) -> str:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, text, overrides)
    return str(err.value)


# ------------------------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("text", "dotted", "hint"),
    [
        ("trainr: {lr: 1.0}", "trainr", "trainer"),
        ("trainer: {lrr: 1.0}", "trainer.lrr", "trainer.lr"),
        ("model: {lora: {rr: 8}}", "model.lora.rr", "model.lora.r"),
        ("data: {train: {task: rotation, seeed: 3}}", "data.train.seeed", "data.train.seed"),
        ("rewards: [{fn: format}, {fnn: iou}]", "rewards[1].fnn", "rewards[1].fn"),
        ("stages: [{name: a, stepz: 3}]", "stages[0].stepz", "stages[0].steps"),
    ],
)
def test_unknown_key_names_dotted_key_and_closest(tmp_path, text, dotted, hint):
    msg = error_of(tmp_path, text)
    assert f"unknown key {dotted!r}" in msg
    assert f"did you mean {hint!r}" in msg


def test_unknown_key_from_command_line(tmp_path):
    msg = error_of(tmp_path, "{}", ["trainer.lrr=1"])
    assert "'trainer.lrr'" in msg and "'trainer.lr'" in msg


# ------------------------------------------------------------------------------------------ wrong types


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("trainer: {seed: abc}", "trainer.seed", "expected an integer"),
        ("trainer: {seed: 1.5}", "trainer.seed", "expected an integer"),
        ("trainer: {seed: true}", "trainer.seed", "expected an integer"),
        ("trainer: {lr: true}", "trainer.lr", "expected a number"),
        ("trainer: {lr: fast}", "trainer.lr", "expected a number"),
        ("trainer: {betas: {a: 1}}", "trainer.betas", "expected a list"),
        ("trainer: {betas: [0.9, x]}", "trainer.betas[1]", "expected a number"),
        ("model: {freeze_vision: 1}", "model.freeze_vision", "expected true/false"),
        ("model: {path: 3}", "model.path", "expected a string"),
        ("model: [1, 2]", "model", "expected a mapping"),
        ("rewards: {fn: format}", "rewards", "expected a list"),
        ("stages: [{lr: fast}]", "stages[0].lr", "expected a number"),  # float | None
        ("trainer: {threads: two}", "trainer.threads", "expected an integer"),  # int | None
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, text, key, expected):
    msg = error_of(tmp_path, text)
    assert msg.startswith(f"{key}:") and expected in msg


def test_literal_names_choices_and_suggests(tmp_path):
    msg = error_of(tmp_path, "model: {mode: loar}")
    assert msg.startswith("model.mode:") and "'full'" in msg and "did you mean 'lora'" in msg


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `1e-3` as a string; float fields accept it (also inside `float | None`).
    cfg = load_text(tmp_path, "trainer: {lr: 1e-3}\nstages: [{lr: 2e-4}]")
    assert cfg.trainer.lr == pytest.approx(1e-3) and isinstance(cfg.trainer.lr, float)
    assert cfg.stages[0].lr == pytest.approx(2e-4)


def test_int_is_accepted_for_float(tmp_path):
    cfg = load_text(tmp_path, "trainer: {lr: 1}")
    assert cfg.trainer.lr == 1.0 and isinstance(cfg.trainer.lr, float)


def test_none_for_optional(tmp_path):
    assert load_text(tmp_path, "trainer: {threads: null}").trainer.threads is None


# ------------------------------------------------------------------------------------------ extends


def test_extends_chain_relative_deep_merge_and_list_replace(tmp_path):
    write(tmp_path / "root.yaml", """
        description: root
        trainer: {lr: 0.1, seed: 3, betas: [0.8, 0.9]}
        rewards: [{fn: format}, {fn: answer_match}]
    """)
    write(tmp_path / "base" / "base.yaml", """
        extends: ../root.yaml
        trainer: {lr: 0.2, warmup_steps: 5}
    """)
    child = write(tmp_path / "child.yaml", """
        extends: base/base.yaml
        trainer: {lr: 0.3, betas: [0.5]}
        rewards: [{fn: iou}]
    """)
    cfg = config.load(child)
    assert cfg.description == "root"
    assert cfg.trainer.lr == 0.3  # nearest file wins
    assert cfg.trainer.seed == 3 and cfg.trainer.warmup_steps == 5  # mappings merge deeply
    assert cfg.trainer.betas == [0.5]  # lists replace
    assert [r.fn for r in cfg.rewards] == ["iou"]


def test_extends_cycle(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        config.load(tmp_path / "a.yaml")


def test_extends_self_cycle(tmp_path):
    write(tmp_path / "a.yaml", "extends: ./a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        config.load(tmp_path / "a.yaml")


def test_extends_missing_file(tmp_path):
    msg = error_of(tmp_path, "extends: nope.yaml\n")
    assert "not found" in msg and "nope.yaml" in msg


def test_recipe_must_be_a_mapping(tmp_path):
    assert "mapping" in error_of(tmp_path, "- 1\n- 2\n")


def test_invalid_yaml(tmp_path):
    assert "invalid YAML" in error_of(tmp_path, "trainer: {lr: [1,\n")


# ------------------------------------------------------------------------------------------ overrides


def test_parse_override_values_are_yaml():
    assert config.parse_override("trainer.lr=1e-4") == {"trainer": {"lr": "1e-4"}}  # converted at build
    assert config.parse_override("rollout.group_size=4") == {"rollout": {"group_size": 4}}
    assert config.parse_override("run.backends=[jsonl, wandb]") == {"run": {"backends": ["jsonl", "wandb"]}}
    assert config.parse_override("data.system_prompt=null") == {"data": {"system_prompt": None}}
    assert config.parse_override("description=a=b") == {"description": "a=b"}
    assert config.parse_override("description=") == {"description": ""}


@pytest.mark.parametrize("text", ["trainer.lr", "=3", "trainer.lr=[1,"])
def test_bad_override(text):
    with pytest.raises(ConfigError, match="override"):
        config.load(None, [text])


def test_overrides_take_precedence(tmp_path):
    cfg = load_text(tmp_path, "trainer: {lr: 0.5, seed: 7}", ["trainer.lr=1e-3", "run.backends=[jsonl, wandb]"])
    assert cfg.trainer.lr == pytest.approx(1e-3)
    assert cfg.trainer.seed == 7
    assert cfg.run.backends == ["jsonl", "wandb"]


def test_later_override_wins():
    assert config.load(None, ["trainer.seed=1", "trainer.seed=2"]).trainer.seed == 2


def test_no_recipe_gives_defaults():
    assert config.load(None, []) == config.Config()


# ------------------------------------------------------------------------------------------ smoke


SMOKE = """
    rollout: {group_size: 8}
    trainer: {prompts_per_step: 16}
    stages: [{name: a, steps: 100}, {name: b, steps: 100}]
    smoke:
      rollout: {group_size: 2}
      stages: [{name: a, steps: 1}]
"""


def test_smoke_block_merges(tmp_path):
    cfg = load_text(tmp_path, SMOKE, ["smoke=true"])
    assert cfg.rollout.group_size == 2
    assert cfg.trainer.prompts_per_step == 16  # untouched by the smoke block
    assert [(s.name, s.steps) for s in cfg.stages] == [("a", 1)]  # the list is replaced


def test_smoke_block_ignored_without_flag(tmp_path):
    for overrides in ([], ["smoke=false"]):
        cfg = load_text(tmp_path, SMOKE, overrides)
        assert cfg.rollout.group_size == 8 and len(cfg.stages) == 2


def test_command_line_beats_smoke_block(tmp_path):
    for overrides in (["smoke=true", "rollout.group_size=3"], ["rollout.group_size=3", "smoke=true"]):
        assert load_text(tmp_path, SMOKE, overrides).rollout.group_size == 3


def test_smoke_without_block_fails(tmp_path):
    assert "smoke" in error_of(tmp_path, "trainer: {seed: 1}", ["smoke=true"])


# ------------------------------------------------------------------------------------------ presets


def test_dapo_preset_expands():
    cfg = config.load(None, ["algorithm.preset=dapo"])
    for key, value in PRESETS.get("dapo").items():
        assert getattr(cfg.algorithm, key) == value, key
    assert cfg.algorithm.clip_high == 0.28 and cfg.algorithm.aggregation == "token_mean"


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_valid(name):
    cfg = config.load(None, [f"algorithm.preset={name}"])
    for key, value in PRESETS.get(name).items():
        assert getattr(cfg.algorithm, key) == value, key


def test_recipe_values_override_preset(tmp_path):
    cfg = load_text(tmp_path, "algorithm: {preset: dapo, clip_high: 0.3, kl_coef: 0.01}")
    assert cfg.algorithm.clip_high == 0.3 and cfg.algorithm.kl_coef == 0.01
    assert cfg.algorithm.clip_low == PRESETS.get("dapo")["clip_low"]


def test_preset_from_command_line_keeps_recipe_values():
    # demo.yaml sets `preset: dapo` and `kl_coef: 0.0`; switching the preset keeps the recipe's explicit value.
    cfg = config.load(DEMO, ["algorithm.preset=grpo"])
    assert cfg.algorithm.aggregation == PRESETS.get("grpo")["aggregation"]
    assert cfg.algorithm.kl_coef == 0.0


@pytest.mark.parametrize(
    ("override", "key", "hint", "valid"),
    [
        ("algorithm.preset=dapoo", "algorithm.preset", "dapo", PRESETS.names()),
        ("algorithm.baseline=group_maen", "algorithm.baseline", "group_mean", BASELINES.names()),
        ("algorithm.policy_loss=ppo_clp", "algorithm.policy_loss", "ppo_clip", POLICY_LOSSES.names()),
        ("algorithm.kl_estimator=k4", "algorithm.kl_estimator", None, ["k1", "k2", "k3"]),
    ],
)
def test_unknown_registry_name(override, key, hint, valid):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    msg = str(err.value)
    assert msg.startswith(f"{key}:")
    if hint:
        assert f"did you mean {hint!r}" in msg
    assert all(name in msg for name in valid)


# ------------------------------------------------------------------------------------------ cross-field


@pytest.mark.parametrize(
    "source", ["{task: rotation, path: x.jsonl}", "{n: 5}", "{task: null, path: null}"]
)
def test_data_source_needs_exactly_one_of_task_or_path(tmp_path, source):
    msg = error_of(tmp_path, f"data: {{train: {source}}}")
    assert msg.startswith("data.train:") and "task" in msg and "path" in msg


def test_data_source_path_only(tmp_path):
    cfg = load_text(tmp_path, "data: {eval: {path: x.jsonl}}")
    assert cfg.data.eval.path == "x.jsonl" and cfg.data.eval.task is None


def test_group_size_one_rejected_for_rl():
    with pytest.raises(ConfigError, match="rollout.group_size"):
        config.load(None, ["rollout.group_size=1"])


def test_batch_std_with_kl_in_the_reward_and_a_group_filter_is_refused():
    knobs = ["algorithm.scale=batch_std", "algorithm.kl_placement=reward", "algorithm.kl_coef=0.01"]
    with pytest.raises(ConfigError, match="algorithm.scale: batch_std .* group_filter"):
        config.load(None, [*knobs, "algorithm.group_filter=nonzero_std"])
    assert config.load(None, knobs).algorithm.group_filter == "none"  # without a filter the batch is the kept one


def test_duplicate_reward_names(tmp_path):
    assert "duplicate" in error_of(tmp_path, "rewards: [{fn: format}, {fn: format}]")
    load_text(tmp_path, "rewards: [{fn: format}, {fn: format, name: format2}]")


def test_missing_resume_checkpoint(tmp_path):
    assert error_of(tmp_path, f"resume: {tmp_path / 'nope'}").startswith("resume:")


# ------------------------------------------------------------------------------------------ real recipe


def test_demo_recipe_loads():
    cfg = config.load(DEMO)
    assert cfg.algorithm.clip_high == 0.28  # from the dapo preset
    assert [s.kind for s in cfg.stages] == ["sft", "rl"]
    assert cfg.run_dir == Path("runs/demo")


def test_demo_recipe_smoke():
    full, smoke = config.load(DEMO), config.load(DEMO, ["smoke=true"])
    assert smoke.run.name == "demo-smoke" and smoke.run_dir == Path("runs/demo-smoke")
    assert all(s.steps <= 2 for s in smoke.stages)
    assert smoke.data.train.task == full.data.train.task  # deep merge keeps the task …
    assert smoke.data.train.kwargs == full.data.train.kwargs  # … and its kwargs
    assert smoke.data.train.n < full.data.train.n


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    config.load(recipe)
    if "smoke" in config._read_yaml(recipe):
        config.load(recipe, ["smoke=true"])


def test_dump_round_trip(tmp_path):
    cfg = config.load(DEMO, ["smoke=true"])
    config.dump(cfg, tmp_path / "resolved.yaml")
    assert config.load(tmp_path / "resolved.yaml") == cfg


# ------------------------------------------------------------------------------------------ CLI


def test_cli_bad_key_exits_2_before_loading_a_model(tmp_path):
    run_dir = tmp_path / "x"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mmrl", "train", str(DEMO), "trainer.lrr=1", f"run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert "'trainer.lrr'" in proc.stderr and "'trainer.lr'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists() and not (tmp_path / "runs").exists()
    assert elapsed < 20  # config errors come before any model or heavy import (generous for a busy 2-core box)


def test_reward_names_and_gates_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.fn: .*did you mean 'format'"):
        config.load(None, ["rewards=[{fn: formt}]"])
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.gate: 'acuracy'.*did you mean 'accuracy'"):
        config.load(None, ["rewards=[{fn: answer_match, name: accuracy}, {fn: format, gate: acuracy}]"])
    with pytest.raises(ConfigError, match="at least one must add"):
        config.load(None, ["rewards=[{fn: format, mode: gate}]"])
    cfg = config.load(None, ["rewards=[{fn: format, mode: gate}, {fn: answer_match, gate: format, gate_min: 0.5}]"])
    assert cfg.rewards[1].gate == "format" and cfg.rewards[0].mode == "gate"


def test_every_preset_has_a_recipe_that_uses_it():
    for name in PRESETS.names():
        path = ROOT / "recipes" / "algorithms" / f"{name}.yaml"
        assert path.exists(), f"preset {name!r} has no recipe"
        assert f"preset: {name}" in path.read_text()
        assert config.load(path).algorithm == config.load(None, [f"algorithm.preset={name}"]).algorithm


def test_a_new_task_starts_its_kwargs_afresh():
    demo = config.load(DEMO)
    assert demo.data.eval.kwargs  # the rotation prompt and size
    other = config.load(DEMO, ["data.eval={task: grounding, n: 4}"])
    assert other.data.eval.task == "grounding" and other.data.eval.kwargs == {}
    same = config.load(DEMO, ["data.eval={task: rotation, n: 4}"])
    assert same.data.eval.kwargs == demo.data.eval.kwargs  # the same task keeps its options
    assert config.load(DEMO, ["data.eval={path: x.jsonl}"]).data.eval.kwargs == {}
