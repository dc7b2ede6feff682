"""Integration: short in-process runs on the tiny offline Qwen2-VL (full and LoRA), checkpoints, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl import config
from mmrl.train import checkpoint
from mmrl.errors import BadSampleError
from mmrl.train.build import load_weights
from mmrl.train.data import batch_indices
from mmrl.train.trainer import Trainer

pytestmark = pytest.mark.integration


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _logprobs(trainer: Trainer) -> torch.Tensor:
    """Log-probs of fixed completions on two eval prompts (the policy's own scoring path)."""
    prompts = trainer.batches.encode(trainer.data.eval[:2])
    batch = trainer.policy.collate(prompts)
    ids = trainer.policy.tokenizer(["<answer>90</answer>", "<answer>180</answer>"], add_special_tokens=False,
                                   padding=True, padding_side="right", return_tensors="pt")
    with torch.no_grad():
        logp, _ = trainer.policy.completion_logprobs(batch, ids["input_ids"], ids["attention_mask"])
    return logp


def test_batch_indices_cover_each_epoch_once():
    seen = [i for step in range(5) for i in batch_indices(10, 4, step, seed=3)]
    assert sorted(seen[:10]) == list(range(10))  # steps 0-2 → first epoch (+ 2 of the next)
    assert batch_indices(10, 4, 2, seed=3) == batch_indices(10, 4, 2, seed=3)
    assert batch_indices(10, 4, 0, seed=3) != batch_indices(10, 4, 0, seed=4)


def test_full_mode_trains_and_writes_run_dir(tmp_path, tiny, length_reward):
    cfg = tiny(tmp_path / "run", f"rewards=[{{fn: '{length_reward}', name: len}}, {{fn: format}}]",
               "algorithm.kl_coef=0.05")
    trainer = Trainer(cfg, log=lambda *a: None)
    before = _snapshot(trainer.policy.hf)
    summary = trainer.run()
    after = trainer.policy.hf.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("visual" in k for k in changed) and any("language_model" in k for k in changed)

    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rows if r.get("train/stage") == "rl"]
    assert len(rl_rows) == 3 and [r["train/step"] for r in rl_rows] == [3, 4, 5]
    assert rl_rows[0]["actor/kl"] == 0.0  # the reference is the policy at the start of RL
    assert rl_rows[-1]["actor/kl"] > 0.0
    assert rl_rows[0]["reward/len/mean"] > 0 and rl_rows[0]["adv/zero_frac"] < 1.0
    assert set(summary) >= {"eval_before", "eval_after"} and "eval/len" in summary["eval_after"]
    assert (run / "config.yaml").exists() and (run / "rollouts.jsonl").exists()
    # rewards → advantages end to end, on the logged groups: each component is its function's value, the total
    # their weighted sum (weights 1), and each group's advantages the configured estimator's on those totals
    from mmrl.algorithms.advantages import advantages
    from mmrl.rewards import get

    logged = [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 3 * 2 * 4  # 3 RL steps × 2 groups × G 4
    a = cfg.algorithm
    for g in range(0, len(logged), 4):
        group = logged[g : g + 4]
        for r in group:
            assert r["components"]["len"] == min(len(r["completion"]), 40) / 10
            assert r["components"]["format"] == get("format")([r["completion"]])[0]
            assert r["reward"] == pytest.approx(r["components"]["len"] + r["components"]["format"])
        want = advantages(torch.tensor([r["reward"] for r in group]), group_size=4, baseline=a.baseline,
                          scale=a.scale, eps=a.adv_eps)
        torch.testing.assert_close(torch.tensor([r["advantage"] for r in group]), want, atol=1e-5, rtol=1e-5)
    assert {p.name for p in (run / "plots").iterdir()} >= {"rewards.png", "eval.png"}
    ckpts = checkpoint.list_complete(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_000002", "step_000005"]
    saved = load_file(str(ckpts[-1] / "model.safetensors"))
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)
    assert (ckpts[-1] / "reference.safetensors").exists()


def test_lora_rl_changes_only_adapters_and_reloads(tmp_path, tiny, length_reward):
    cfg = tiny(tmp_path / "run", "model.mode=lora", f"rewards=[{{fn: '{length_reward}', name: len}}]",
               "stages=[{name: rl, kind: rl, steps: 2, lr: 5.0e-3}]", "algorithm.kl_coef=0.05")
    trainer = Trainer(cfg, log=lambda *a: None)
    base_before = {k: v for k, v in _snapshot(trainer.policy.model).items() if "lora_" not in k}
    lora_before = {k: v for k, v in _snapshot(trainer.policy.model).items() if "lora_" in k}
    trainer.run()
    state = trainer.policy.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base_before.items()), "a base weight changed in LoRA mode"
    assert any(not torch.equal(state[k], v) for k, v in lora_before.items()), "no adapter weight changed"
    assert any("visual" in k for k in lora_before), "freeze_vision=false puts adapters on the vision tower"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["actor/kl"] for r in rows if "actor/kl" in r][0] == 0.0
    expected = _logprobs(trainer)

    # A fresh policy + the saved adapter gives identical log-probs.
    fresh = Trainer(cfg, log=lambda *a: None)
    assert not torch.equal(_logprobs(fresh), expected)
    load_weights(fresh.policy, checkpoint.latest(tmp_path / "run" / "checkpoints"))
    assert torch.equal(_logprobs(fresh), expected)


def test_lora_sft_then_rl_merges_adapter_at_the_boundary(tmp_path, tiny, length_reward):
    cfg = tiny(tmp_path / "run", "model.mode=lora", f"rewards=[{{fn: '{length_reward}', name: len}}]",
               "algorithm.kl_coef=0.05")
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.run()
    assert len(trainer.policy.merged_adapters) == 1  # the SFT adapter, folded into the base
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["actor/kl"] for r in rows if "actor/kl" in r]
    assert kls[0] == 0.0 and kls[-1] > 0.0
    expected = _logprobs(trainer)
    fresh = Trainer(cfg, log=lambda *a: None)
    load_weights(fresh.policy, checkpoint.latest(tmp_path / "run" / "checkpoints"))
    assert torch.equal(_logprobs(fresh), expected)


def test_interrupted_checkpoint_write_leaves_previous_loadable(tmp_path, tiny, monkeypatch):
    cfg = tiny(tmp_path / "run", "stages=[{name: s, kind: sft, steps: 2, labels: random}]",
               "trainer.checkpoint_every=1")
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.run()
    root = tmp_path / "run" / "checkpoints"
    good = checkpoint.latest(root)

    def killed(*args, **kwargs):  # the process dies after the weights, before the state file
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoint.torch, "save", killed)
    trainer.progress.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert list(root.glob(".tmp-step_*")), "the partial checkpoint stays hidden in a temp folder"
    assert checkpoint.latest(root) == good
    assert checkpoint.load(good)["state"]["progress"]["step"] == 2
    checkpoint.clean_partial(root)
    assert not list(root.glob(".tmp-step_*"))


KNOB_RUN = ("stages=[{name: rl, kind: rl, steps: 2, lr: 1.0e-3}]",)


def _rl_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "actor/loss" in r]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny, length_reward) -> tuple[list[dict], torch.Tensor]:
    """The knob tests' run in fp32 without checkpointing: its RL rows and its initial log-probs."""
    run = tmp_path_factory.mktemp("plain") / "run"
    trainer = Trainer(tiny(run, f"rewards=[{{fn: '{length_reward}', name: len}}]", *KNOB_RUN), log=lambda *a: None)
    logp = _logprobs(trainer)
    trainer.run()
    return _rl_rows(run), logp


@pytest.mark.parametrize("knob", ["model.dtype=bfloat16", "model.gradient_checkpointing=true"])
def test_bf16_and_gradient_checkpointing_knobs_train(tmp_path, tiny, length_reward, knob, plain_run):
    """Checkpointing recomputes the same numbers (the first step equals the plain run's); bf16 stays within
    bf16's precision of fp32 on the same completions, and trains."""
    cfg = tiny(tmp_path / "run", knob, f"rewards=[{{fn: '{length_reward}', name: len}}]", *KNOB_RUN)
    trainer = Trainer(cfg, log=lambda *a: None)
    before = _snapshot(trainer.policy.hf)
    logp = _logprobs(trainer)
    trainer.run()
    after = trainer.policy.hf.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows, (plain, plain_logp) = _rl_rows(tmp_path / "run"), plain_run
    assert len(rows) == 2 and all(math.isfinite(r["actor/loss"]) and r["actor/grad_norm"] > 0 for r in rows)
    if knob.startswith("model.dtype"):
        assert after["lm_head.weight"].dtype == torch.bfloat16
        gap = (logp.float() - plain_logp).abs().max().item()
        assert 0 < gap < 0.05, gap  # bf16 rounding (8 mantissa bits), not a different model
    else:
        hf = trainer.policy.hf
        assert getattr(hf, "is_activation_checkpointing", None) or hf.is_gradient_checkpointing
        torch.testing.assert_close(logp, plain_logp, rtol=0, atol=0)
        first, ref = rows[0], plain[0]
        assert first["reward/total/mean"] == ref["reward/total/mean"]  # the same completions
        for key in ("actor/loss", "actor/grad_norm", "actor/entropy"):
            assert first[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key


def test_over_long_prompts_are_dropped_whole_and_counted(tmp_path, tiny):
    from mmrl.datasets.synthetic import make
    from mmrl.train.trainer import Trainer

    trainer = Trainer(tiny(tmp_path / "run"), log=lambda *a: None)
    short, long = make("rotation", 2, seed=0)[0], make("rotation", 2, seed=0, choices=True)[0]
    lengths = [trainer.policy.encode(s, trainer.cfg.data.system_prompt).length for s in (short, long)]
    assert lengths[0] < lengths[1]
    trainer.cfg.data.max_prompt_tokens = lengths[0]
    kept = trainer.batches.encode([short, long])
    assert [p.sample.id for p in kept] == [short.id] and trainer.progress.too_long == 1
    assert kept[0].length == lengths[0]  # kept prompts are untouched, never truncated
    trainer.cfg.data.max_prompt_tokens = lengths[0] - 1
    with pytest.raises(BadSampleError, match="max_prompt_tokens"):
        trainer.batches.encode([short, long])


def test_weighted_mix_of_sources_splits_each_batch(tmp_path, tiny, length_reward, check_logged_run):
    cfg = tiny(tmp_path / "run", "data.mix=[{task: rotation, n: 16, weight: 3}, {task: motion, n: 16, weight: 1}]",
               "stages=[{name: rl, kind: rl, steps: 2}]", f"rewards=[{{fn: answer_match, name: accuracy}},"
               f" {{fn: format, weight: 0.1}}, {{fn: '{length_reward}', name: len}}]")  # + characters / 10: a gradient
    trainer = Trainer(cfg, log=lambda *a: None)
    assert len(trainer.data.train) == 32
    batches = []
    for step in range(3):
        trainer.progress.step = step
        batch = trainer.batches.samples(4)
        assert sorted(s.task for s in batch) == ["puzzle/rotation"] * 3 + ["temporal/motion"]
        batches.append(batch)
    data = {s.id: s for s in trainer.data.train}
    trainer.progress.step = 0
    trainer.run()
    logged = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 16  # the first 2 groups of G 4, each step
    for step, batch in enumerate(batches[:2]):  # the completions logged at step s answer prompts of batch s
        assert {r["sample_id"] for r in logged if r["train/step"] == step} <= {s.id for s in batch}
    assert all(r["answer"] == data[r["sample_id"]].answer for r in logged)
    rl = check_logged_run(tmp_path / "run", cfg, list(data))
    assert len(rl) == 2 and any(r["adv/zero_frac"] < 1 for r in rl)


def test_thought_dropout_in_sft_targets(tmp_path, tiny):
    import doctest

    import mmrl.train.sft_step as sft_module
    from mmrl.config import StageConfig

    result = doctest.testmod(sft_module)
    assert result.failed == 0 and result.attempted > 0
    trainer = Trainer(tiny(tmp_path / "run"), log=lambda *a: None)
    prompts = trainer.batches.encode(trainer.batches.samples(4))
    for p in prompts:
        p.sample.meta["response"] = f"<think>because {p.sample.answer}</think><answer>{p.sample.answer}</answer>"
    kept = trainer.sft.targets(prompts, StageConfig(kind="sft", thought_dropout=0.0))
    dropped = trainer.sft.targets(prompts, StageConfig(kind="sft", thought_dropout=1.0))
    assert all(t.startswith("<think>because") for t in kept)
    assert all(t.startswith("<think>\n\n</think><answer>") for t in dropped)


def test_stages_with_their_own_data_and_rewards(tmp_path, tiny, length_reward):
    """Perception RL → reasoning RL in one recipe: each stage trains on its own data with its own rewards, and
    held-out evaluation keeps the run's top-level rewards throughout."""
    cfg = tiny(tmp_path / "run", f"rewards=[{{fn: '{length_reward}', name: len}}]",
               "stages=[{name: perceive, kind: rl, steps: 2, data: {task: grounding, n: 8},"
               " rewards: [{fn: iou}, {fn: format}]},"
               " {name: reason, kind: rl, steps: 2, rewards: [{fn: rotation_exact, name: angle}]}]")
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    perceive = [r for r in rows if r.get("train/stage") == "perceive"]
    reason = [r for r in rows if r.get("train/stage") == "reason"]
    assert len(perceive) == len(reason) == 2
    assert all("reward/iou/mean" in r and "reward/angle/mean" not in r for r in perceive)
    assert all("reward/angle/mean" in r and "reward/iou/mean" not in r for r in reason)
    rollouts = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert {r["sample_id"].split("-")[0] for r in rollouts if r["train/step"] < 2} == {"grounding"}
    assert {r["sample_id"].split("-")[0] for r in rollouts if r["train/step"] >= 2} == {"rotation"}
    assert "eval/len" in trainer.summary["eval_before"] and "eval/len" in trainer.summary["eval_after"]
    assert "eval/iou" not in trainer.summary["eval_after"]


def test_stage_rewards_are_validated_like_the_top_level_ones(tmp_path, tiny):
    from mmrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"stages\[0\]\.rewards\[0\]\.fn: .*ioo"):
        tiny(tmp_path, "stages=[{name: rl, kind: rl, steps: 1, rewards: [{fn: ioo}]}]")


def test_a_run_directory_that_holds_a_run_is_never_overwritten_by_accident(tmp_path, tiny, capsys):
    """A second `mmrl train` into a finished run's directory exits 2 naming it and both ways out, and touches
    nothing; `run.overwrite=true` starts afresh (the old run's files gone); `resume=auto` continues it."""
    from mmrl.cli import main

    run = tmp_path / "run"
    sft = ["stages=[{name: s, kind: sft, steps: 2, labels: random}]", "trainer.checkpoint_every=1"]
    Trainer(tiny(run, *sft), log=lambda *a: None).run()
    metrics = (run / "metrics.jsonl").read_text()
    ckpts = [p.name for p in checkpoint.list_complete(run / "checkpoints")]
    assert ckpts == ["step_000001", "step_000002"]

    assert main(["train", "recipes/demo.yaml", *tiny.overrides(run, *sft)]) == 2
    err = capsys.readouterr().err
    assert f"run.dir: {run} already holds a run" in err and "resume=auto" in err and "run.overwrite=true" in err
    assert (run / "metrics.jsonl").read_text() == metrics  # untouched
    with pytest.raises(config.ConfigError, match="already holds a run"):  # programmatic runs refuse too
        Trainer(tiny(run, *sft), log=lambda *a: None).run()

    shorter = ["stages=[{name: s, kind: sft, steps: 1, labels: random}]", "trainer.checkpoint_every=1"]
    Trainer(tiny(run, *shorter, "run.overwrite=true"), log=lambda *a: None).run()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/step"] for r in rows if "train/stage" in r] == [1]  # the old run's rows are gone
    assert [p.name for p in checkpoint.list_complete(run / "checkpoints")] == ["step_000001"]  # and its step 2


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, tiny):
    """Resuming step 1 of a 3-step run into a 2-step plan: the old steps 2 and 3 belong to the abandoned
    continuation. They move to checkpoints/superseded/ (kept), so the stale step 3 no longer outranks the new
    run's checkpoints for resume=auto, export or pruning."""
    run = tmp_path / "run"
    plan = lambda n: [f"stages=[{{name: s, kind: sft, steps: {n}, labels: random}}]",  # noqa: E731
                      "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    Trainer(tiny(run, *plan(3)), log=lambda *a: None).run()
    root = run / "checkpoints"
    assert [p.name for p in checkpoint.list_complete(root)] == ["step_000001", "step_000002", "step_000003"]
    Trainer(tiny(run, *plan(2), f"resume={root / 'step_000001'}"), log=lambda *a: None).run()
    assert sorted(p.name for p in (root / "superseded").iterdir()) == ["step_000002", "step_000003"]
    assert [p.name for p in checkpoint.list_complete(root)] == ["step_000001", "step_000002"]
    assert checkpoint.latest(root) == root / "step_000002"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train/stage" in x]
    assert [r["train/step"] for r in rows] == [1, 2]


def test_resume_auto_skips_a_damaged_newest_checkpoint_and_says_so(tmp_path, tiny):
    """A truncated model.safetensors in the newest checkpoint: resume=auto continues from the previous one, logs
    which it skipped and why, and sets the damaged one aside; it used to crash with a raw traceback."""
    run = tmp_path / "run"
    plan = lambda n: [f"stages=[{{name: s, kind: sft, steps: {n}, labels: random}}]",  # noqa: E731
                      "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    Trainer(tiny(run, *plan(2)), log=lambda *a: None).run()
    root = run / "checkpoints"
    weights = root / "step_000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    lines: list[str] = []
    Trainer(tiny(run, *plan(3), "resume=auto"), log=lambda *a: lines.append(" ".join(map(str, a)))).run()
    assert any("skipped" in x and "step_000002" in x and "model.safetensors" in x for x in lines), lines
    assert any("resumed from" in x and "step_000001" in x for x in lines), lines
    assert (root / "superseded" / "step_000002").is_dir()
    assert [p.name for p in checkpoint.list_complete(root)] == ["step_000001", "step_000002", "step_000003"]
    assert all(checkpoint.verify(p) is None for p in checkpoint.list_complete(root))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train/stage" in x]
    assert [r["train/step"] for r in rows] == [1, 2, 3]


def test_checkpoints_by_time_and_wall_time_across_a_resume(tmp_path, tiny):
    """`trainer.checkpoint_minutes` saves on the clock (here: after every step), and `wall_s` in the summary counts
    the time before a resume too (it used to restart at the resume)."""
    run = tmp_path / "run"
    plan = lambda n: [f"stages=[{{name: s, kind: sft, steps: {n}, labels: random}}]",  # noqa: E731
                      "trainer.keep_checkpoints=0", "trainer.checkpoint_every=0"]
    Trainer(tiny(run, *plan(2), "trainer.checkpoint_minutes=1e-9"), log=lambda *a: None).run()
    root = run / "checkpoints"
    assert [p.name for p in checkpoint.list_complete(root)] == ["step_000001", "step_000002"]
    before = checkpoint.read_state(root / "step_000002")["summary"]["wall_s"]
    assert before > 0
    summary = Trainer(tiny(run, *plan(4), "resume=auto", "trainer.checkpoint_minutes=0"), log=lambda *a: None).run()
    assert summary["wall_s"] > before
    assert [p.name for p in checkpoint.list_complete(root)] == ["step_000001", "step_000002", "step_000004"]
