"""Config loading: unknown keys, wrong types, `extends:`, overrides, smoke blocks, presets, registry names, value
ranges and cross-field checks, every problem of a pass reported at once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from mmrl import config
from mmrl.algorithms import BASELINES, POLICY_LOSSES, PRESETS
from mmrl.cli.checks import load_config, validate_config
from mmrl.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str, overrides=()) -> config.Config:
    return load_config(write(tmp_path / "recipe.yaml", text), list(overrides))


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
        trainer: {lr: 0.3, betas: [0.5, 0.6]}
        rewards: [{fn: iou}]
    """)
    cfg = load_config(child)
    assert cfg.description == "root"
    assert cfg.trainer.lr == 0.3  # nearest file wins
    assert cfg.trainer.seed == 3 and cfg.trainer.warmup_steps == 5  # mappings merge deeply
    assert cfg.trainer.betas == [0.5, 0.6]  # lists replace (AdamW needs two betas: see the rewards for a shorter list)
    assert [r.fn for r in cfg.rewards] == ["iou"]


def test_extends_cycle(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_extends_self_cycle(tmp_path):
    write(tmp_path / "a.yaml", "extends: ./a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


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
        load_config(None, [text])


def test_overrides_take_precedence(tmp_path):
    cfg = load_text(tmp_path, "trainer: {lr: 0.5, seed: 7}", ["trainer.lr=1e-3", "run.backends=[jsonl, wandb]"])
    assert cfg.trainer.lr == pytest.approx(1e-3)
    assert cfg.trainer.seed == 7
    assert cfg.run.backends == ["jsonl", "wandb"]


def test_later_override_wins():
    assert load_config(None, ["trainer.seed=1", "trainer.seed=2"]).trainer.seed == 2


def test_no_recipe_gives_defaults():
    assert load_config(None, []) == config.Config()


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
    cfg = load_config(None, ["algorithm.preset=dapo"])
    for key, value in PRESETS.get("dapo").items():
        assert getattr(cfg.algorithm, key) == value, key
    assert cfg.algorithm.clip_high == 0.28 and cfg.algorithm.aggregation == "token_mean"


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_valid(name):
    cfg = load_config(None, [f"algorithm.preset={name}"])
    for key, value in PRESETS.get(name).items():
        assert getattr(cfg.algorithm, key) == value, key


def test_recipe_values_override_preset(tmp_path):
    cfg = load_text(tmp_path, "algorithm: {preset: dapo, clip_high: 0.3, kl_coef: 0.01}")
    assert cfg.algorithm.clip_high == 0.3 and cfg.algorithm.kl_coef == 0.01
    assert cfg.algorithm.clip_low == PRESETS.get("dapo")["clip_low"]


def test_preset_from_command_line_keeps_recipe_values():
    # demo.yaml sets `preset: dapo` and `kl_coef: 0.0`; switching the preset keeps the recipe's explicit value.
    cfg = load_config(DEMO, ["algorithm.preset=grpo"])
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
        load_config(None, [override])
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
        load_config(None, ["rollout.group_size=1"])


def test_batch_std_with_kl_in_the_reward_and_a_group_filter_is_refused():
    knobs = ["algorithm.scale=batch_std", "algorithm.kl_placement=reward", "algorithm.kl_coef=0.01"]
    with pytest.raises(ConfigError, match="algorithm.scale: batch_std .* group_filter"):
        load_config(None, [*knobs, "algorithm.group_filter=nonzero_std"])
    assert load_config(None, knobs).algorithm.group_filter == "none"  # without a filter the batch is the kept one


def test_duplicate_reward_names(tmp_path):
    assert "duplicate" in error_of(tmp_path, "rewards: [{fn: format}, {fn: format}]")
    load_text(tmp_path, "rewards: [{fn: format}, {fn: format, name: format2}]")


def test_missing_resume_checkpoint(tmp_path):
    assert error_of(tmp_path, f"resume: {tmp_path / 'nope'}").startswith("resume:")


# ------------------------------------------------------------------------------------------ real recipe


def test_demo_recipe_loads():
    cfg = load_config(DEMO)
    assert cfg.algorithm.clip_high == 0.28  # from the dapo preset
    assert [s.kind for s in cfg.stages] == ["sft", "rl"]
    assert cfg.run_dir == Path("runs/demo")


def test_demo_recipe_smoke():
    full, smoke = load_config(DEMO), load_config(DEMO, ["smoke=true"])
    assert smoke.run.name == "demo-smoke" and smoke.run_dir == Path("runs/demo-smoke")
    assert all(s.steps <= 2 for s in smoke.stages)
    assert smoke.data.train.task == full.data.train.task  # deep merge keeps the task …
    assert smoke.data.train.kwargs == full.data.train.kwargs  # … and its kwargs
    assert smoke.data.train.n < full.data.train.n


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    load_config(recipe)
    if "smoke" in config.loading._read_yaml(recipe):
        load_config(recipe, ["smoke=true"])


def test_dump_round_trip(tmp_path):
    cfg = load_config(DEMO, ["smoke=true"])
    config.dump(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


# ------------------------------------------------------------------------------------------ CLI


def test_cli_bad_key_exits_2_before_loading_a_model(tmp_path):
    run_dir = tmp_path / "x"
    proc = subprocess.run(  # -X importtime: every module imported is named on stderr
        [sys.executable, "-X", "importtime", "-m", "mmrl", "train", str(DEMO), "trainer.lrr=1", f"run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "'trainer.lrr'" in proc.stderr and "'trainer.lr'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists() and not (tmp_path / "runs").exists()
    imported = {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    assert "mmrl.config" in imported  # the listing works
    # config errors come before any model code: no transformers, policy, trainer, rewards or datasets (torch is
    # imported: the algorithm registry validates names)
    assert not imported & {"transformers", "mmrl.model.policy", "mmrl.train.trainer", "mmrl.rewards", "mmrl.datasets", "PIL"}


def test_reward_names_and_gates_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.fn: .*did you mean 'format'"):
        load_config(None, ["rewards=[{fn: formt}]"])
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.gate: 'acuracy'.*did you mean 'accuracy'"):
        load_config(None, ["rewards=[{fn: answer_match, name: accuracy}, {fn: format, gate: acuracy}]"])
    with pytest.raises(ConfigError, match="at least one must add"):
        load_config(None, ["rewards=[{fn: format, mode: gate}]"])
    cfg = load_config(None, ["rewards=[{fn: format, mode: gate}, {fn: answer_match, gate: format, gate_min: 0.5}]"])
    assert cfg.rewards[1].gate == "format" and cfg.rewards[0].mode == "gate"


def test_every_preset_has_a_recipe_that_uses_it():
    for name in PRESETS.names():
        path = ROOT / "recipes" / "algorithms" / f"{name}.yaml"
        assert path.exists(), f"preset {name!r} has no recipe"
        assert f"preset: {name}" in path.read_text()
        assert load_config(path).algorithm == load_config(None, [f"algorithm.preset={name}"]).algorithm


def test_a_new_task_starts_its_kwargs_afresh():
    demo = load_config(DEMO)
    assert demo.data.eval.kwargs  # the rotation prompt and size
    other = load_config(DEMO, ["data.eval={task: grounding, n: 4}"])
    assert other.data.eval.task == "grounding" and other.data.eval.kwargs == {}
    same = load_config(DEMO, ["data.eval={task: rotation, n: 4}"])
    assert same.data.eval.kwargs == demo.data.eval.kwargs  # the same task keeps its options
    assert load_config(DEMO, ["data.eval={path: x.jsonl}"]).data.eval.kwargs == {}


# ------------------------------------------------------------------------------------------ ranges


@pytest.mark.parametrize(
    ("override", "key", "got"),
    [
        ("rollout.temperature=0", "rollout.temperature", "got 0"),  # divided by in every log-prob pass
        ("rollout.temperature=-1", "rollout.temperature", "got -1"),
        ("rollout.top_p=2", "rollout.top_p", "got 2"),
        ("rollout.top_p=0", "rollout.top_p", "got 0"),
        ("rollout.top_k=-2", "rollout.top_k", "got -2"),
        ("rollout.max_new_tokens=0", "rollout.max_new_tokens", "got 0"),
        ("trainer.lr=-1", "trainer.lr", "got -1"),
        ("trainer.lr=-1e-3", "trainer.lr", "got -0.001"),
        ("trainer.lr=nan", "trainer.lr", "got nan"),
        ("trainer.lr=.inf", "trainer.lr", "got inf"),
        ("trainer.lr=0", "trainer.lr", "got 0"),
        ("algorithm.kl_coef=-1", "algorithm.kl_coef", "got -1"),
        ("trainer.prompts_per_step=0", "trainer.prompts_per_step", "got 0"),
        ("trainer.sft_batch_size=0", "trainer.sft_batch_size", "got 0"),
        ("trainer.micro_batch_size=0", "trainer.micro_batch_size", "got 0"),
        ("trainer.eval_batch=0", "trainer.eval_batch", "got 0"),
        ("trainer.betas=[0.9]", "trainer.betas", "got [0.9]"),
        ("trainer.betas=[0.9, 1.0]", "trainer.betas", "got [0.9, 1.0]"),
        ("trainer.grad_clip=0", "trainer.grad_clip", "got 0"),
        ("trainer.warmup_steps=-1", "trainer.warmup_steps", "got -1"),
        ("trainer.min_lr_ratio=1.5", "trainer.min_lr_ratio", "got 1.5"),
        ("trainer.seed=18446744073709551616", "trainer.seed", "got 18446744073709551616"),
        ("stages=[{name: a, kind: sft, steps: 1, lr: -1}]", "stages[0].lr", "got -1"),
        ("stages=[{name: a, kind: sft, steps: -1}]", "stages[0].steps", "got -1"),
        ("algorithm.clip_low=-0.1", "algorithm.clip_low", "got -0.1"),
        ("algorithm.clip_c=0.5", "algorithm.clip_c", "got 0.5"),
        ("algorithm.tau_neg=0", "algorithm.tau_neg", "got 0"),
        ("algorithm.neg_weight=-1", "algorithm.neg_weight", "got -1"),
        ("algorithm.lp_reg_kappa=0", "algorithm.lp_reg_kappa", "got 0"),
        ("algorithm.lp_reg_share=2", "algorithm.lp_reg_share", "got 2"),
        ("algorithm.ppo_epochs=0", "algorithm.ppo_epochs", "got 0"),
        ("model.lora.r=0", "model.lora.r", "got 0"),
        ("model.lora.dropout=1", "model.lora.dropout", "got 1"),
        ("kernels.chunk_size=0", "kernels.chunk_size", "got 0"),
        ("data.train.n=0", "data.train.n", "got 0"),
        ("data.video.max_frames=0", "data.video.max_frames", "got 0"),
        ("data.mix=[{task: rotation, weight: 0}]", "data.mix[0].weight", "got 0"),
        ("rewards=[{fn: format, timeout_s: 0}]", "rewards[0].timeout_s", "got 0"),
        ("rollout.vllm_sleep_level=3", "rollout.vllm_sleep_level", "got 3"),
    ],
)
def test_out_of_range_value_names_key_value_and_range(override, key, got):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    msg = str(err.value)
    assert msg.startswith(f"{key}: ") and f", {got} (valid: " in msg, msg
    assert "\n" not in msg  # one mistake, one line


def test_range_message_format():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["rollout.temperature=0"])
    assert str(err.value) == "rollout.temperature: must be > 0, got 0 (valid: (0, ∞))"
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["trainer.lr=nan"])
    assert str(err.value) == "trainer.lr: must be a number, got nan (valid: (0, ∞))"


@pytest.mark.parametrize(
    "override",
    ["rollout.top_k=-1", "rollout.top_k=0", "rollout.top_p=1", "algorithm.kl_coef=0", "trainer.grad_clip=.inf",
     "algorithm.entropy_coef=-0.01", "trainer.seed=-1", "algorithm.clip_c=null", "algorithm.clip_c=3",
     "rollout.tis_cap=null", "trainer.keep_checkpoints=0", "trainer.eval_every=0", "algorithm.pos_weight=0",
     "stages=[{name: a, kind: sft, steps: 0}]", "stages=[{name: a, kind: sft, steps: 1, lr: null}]",
     "rewards=[{fn: format, weight: -0.5}]", "data.video.max_pixels=null", "trainer.lr=1"],
)
def test_documented_edge_values_are_accepted(override):
    load_config(DEMO, [override])


def test_booleans_are_not_numbers():
    with pytest.raises(ConfigError, match="rollout.temperature: expected a number"):
        load_config(None, ["rollout.temperature=true"])
    cfg = config.Config()
    cfg.rollout.max_new_tokens = True  # built in code, not loaded: validation still refuses it
    with pytest.raises(ConfigError, match=r"rollout.max_new_tokens: must be >= 1, got True"):
        validate_config(cfg)


def _numeric_fields(cls: type, seen: set) -> list[tuple[type, str]]:
    """(dataclass, field) of every int / float / list[float] field reachable from `cls`."""
    if cls in seen:
        return []
    seen.add(cls)
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        inner = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
        for t in inner + [a for x in inner for a in typing.get_args(x)]:
            if t in (int, float) and (cls, name) not in out:
                out.append((cls, name))
            if dataclasses.is_dataclass(t):
                out += _numeric_fields(t, seen)
    return out


def test_every_numeric_field_has_a_range():
    fields = _numeric_fields(config.Config, set())
    assert ("TrainerConfig", "betas") in [(c.__name__, n) for c, n in fields]  # list[float] counts too
    missing = [f"{c.__name__}.{n}" for c, n in fields if n not in config.ranges_of(c)]
    assert not missing, missing
    for cls, rules in config.RANGES.items():  # no range for a field that does not exist
        assert set(rules) <= {f.name for f in dataclasses.fields(cls)}, cls


def test_stages_must_not_be_empty():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["stages=[]"])
    assert str(err.value).startswith("stages: must list at least one stage, got []")


def test_mini_batches_at_most_the_completions_per_step():
    knobs = ["trainer.prompts_per_step=2", "rollout.group_size=2"]
    with pytest.raises(ConfigError) as err:
        load_config(None, [*knobs, "algorithm.mini_batches=5"])
    assert str(err.value) == ("algorithm.mini_batches: must be <= the completions per step (trainer.prompts_per_step"
                              " × rollout.group_size = 2 × 2 = 4), got 5 (valid: [1, 4])")
    assert load_config(None, [*knobs, "algorithm.mini_batches=4"]).algorithm.mini_batches == 4
    sft_only = ["stages=[{name: a, kind: sft, steps: 1}]", "algorithm.mini_batches=5"]  # no RL update
    assert load_config(None, [*knobs, *sft_only]).algorithm.mini_batches == 5


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        (["data.video.num_frames=8"], "data.video.num_frames: set only one of fps / num_frames"),
        (["rollout.vllm_max_model_len=32", "rollout.max_new_tokens=32"], "rollout.vllm_max_model_len: must exceed"),
        (["algorithm.cov_mode=clip_cov", "algorithm.cov_low=2", "algorithm.cov_high=1"],
         "algorithm.cov_high: must be > algorithm.cov_low (2)"),
        (["rollout.engine=vlm"], "rollout.engine: unknown engine 'vlm'; did you mean 'vllm'?"),
        (["rewards=[{fn: format, name: total}]"], "rewards[0].name: must be non-empty"),
        (["rollout.engine=vllm", "model.mode=lora", "model.freeze_vision=false", "rollout.vllm_lora_sync=adapter"],
         "rollout.vllm_lora_sync: adapter serves language-model adapters only"),
    ],
)
def test_cross_field_checks(overrides, start):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith(start), str(err.value)


def test_fps_or_num_frames():
    assert load_config(None, ["data.video.num_frames=8", "data.video.fps=null"]).data.video.num_frames == 8


# ------------------------------------------------------------------------------------------ all at once


def test_three_mistakes_are_reported_at_once_in_field_order():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["trainer.lr=-1", "stages=[]", "rollout.temperature=0"])
    assert err.value.errors == [
        "rollout.temperature: must be > 0, got 0 (valid: (0, ∞))",
        "stages: must list at least one stage, got [] (valid: a non-empty list of {name, kind, steps, …})",
        "trainer.lr: must be > 0, got -1 (valid: (0, ∞))",
    ]
    assert str(err.value) == "3 config errors:\n" + "\n".join(f"  {e}" for e in err.value.errors)


def test_unknown_keys_and_wrong_types_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["trainer.lrr=1", "model.lora.rr=8", "trainer.seed=x", "stages=[{lr: a}, {steps: b}]"])
    keys = [e.split(" ")[2] if e.startswith("unknown key") else e.split(":")[0] for e in err.value.errors]
    assert sorted(keys) == sorted(["'trainer.lrr';", "'model.lora.rr';", "trainer.seed", "stages[0].lr",
                                   "stages[1].steps"])
    assert str(err.value).startswith("5 config errors:\n")


def test_a_check_that_depends_on_a_failed_one_is_skipped():
    # an unknown pass: its options cannot be checked (and must not crash the check)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["rollout.extra_passes=[{kind: shuffle_optins, kwargs: {colum: x}}]"])
    assert len(err.value.errors) == 1 and "did you mean 'shuffle_options'" in str(err.value)
    # a group size out of range gives one line, not also the RL group-size and mini-batch lines
    for override in ("rollout.group_size=0", "trainer.prompts_per_step=0"):
        with pytest.raises(ConfigError) as err:
            load_config(None, [override, "algorithm.mini_batches=4"])
        assert len(err.value.errors) == 1, err.value.errors


def test_cli_out_of_range_exits_2_naming_the_key_before_building_anything(tmp_path):
    run_dir = tmp_path / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "mmrl", "train", str(DEMO), "rollout.temperature=0", f"run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "mmrl: error: rollout.temperature: must be > 0, got 0 (valid: (0, ∞))" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists() and not (tmp_path / "runs").exists()  # no run (and no model) was started


def test_prompt_sharing_with_packing_always_is_refused_at_load():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.share_prompt=true", "model.packing=always"])
    assert str(err.value).startswith("model.share_prompt: runs each prompt once under a 4-D attention mask")
    assert load_config(None, ["model.share_prompt=true", "model.packing=never"]).model.share_prompt
