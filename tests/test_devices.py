"""The runtime boundary (mmrl.runtime) and device-strict runs of the whole step (tests/strict_devices.py).

Every tensor factory mmrl calls while training names its device, and every model input is on the runtime's
device: an SFT → RL run with checkpoints and evaluation (padded and packed, full and LoRA), an RL step of every
algorithm preset (PAPO's masked pass, Lp-Reg, rehearsal, KL in the loss and in the reward, Clip-/KL-Cov, replay),
the extra-pass recipes, sampled evaluation, and a 2-process gloo run. On a CUDA machine the same tests run with
`runtime.device=cuda` (marked `gpu`), where the input hook also sees any host tensor reaching the model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.cli.checks import load_config
from mmrl.algorithms import PRESETS
from mmrl.config import AlgorithmConfig, ConfigError
from mmrl.runtime import DeviceError, Runtime, resolve_device

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("strict_devices", Path(__file__).with_name("strict_devices.py"))
strict_devices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strict_devices)
StrictDevices = strict_devices.StrictDevices
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def test_device_names_resolve_or_fail_naming_the_key():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DeviceError, match="runtime.device=cuda:1: CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="'gpu' is not one of auto, cpu, cuda, cuda:N"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="runtime.device: 'cuda0' is not one of"):
        load_config(REPO / "recipes" / "demo.yaml", ["runtime.device=cuda0"])
    rt = Runtime()
    assert rt.rows([4, 5, 6]) == [4, 5, 6] and rt.sum({"a": 1.5}) == {"a": 1.5} and rt.main
    assert torch.equal(rt.gather_rows(torch.arange(6, device="cpu").view(3, 2), 2), torch.tensor([[0, 1], [2, 3]]))


def _strict_run(cfg):
    from mmrl.train.trainer import Trainer

    strict = StrictDevices()
    with strict:
        trainer = Trainer(cfg, log=lambda *a: None)
        strict.check_inputs(trainer.policy.hf, trainer.runtime.device)
        summary = trainer.run()
    return trainer, summary, strict


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode, packing", [("full", "always"), ("lora", "never")])
def test_sft_rl_eval_and_checkpoints_name_their_devices(tmp_path, tiny, device, mode, packing):
    cfg = tiny(tmp_path / "run", f"runtime.device={device}", f"model.mode={mode}", f"model.packing={packing}",
               "algorithm.kl_coef=0.05", "trainer.checkpoint_every=2")
    trainer, summary, strict = _strict_run(cfg)
    assert not strict.report(), "\n".join(strict.report())
    assert summary["eval_after"]["eval/n"] > 0
    on = {p.device.type for p in trainer.policy.model.parameters()}
    assert on == {device}, on
    ref = trainer.policy.reference
    assert ref is None or {p.device.type for p in ref.parameters()} == {device}
    if device == "cuda":
        state = trainer.optim.optimizer.state_dict()["state"]
        assert all(v.device.type == "cuda" for s in state.values() for k, v in s.items() if k != "step")


@pytest.fixture(scope="module")
def plugin(reward_plugins) -> str:
    return reward_plugins  # `spread` and `odd_only` (tests/conftest.py)


@pytest.fixture(scope="module", params=DEVICES)
def rl_trainer(request, tmp_path_factory, tiny, plugin):
    """One trainer in the RL stage with a frozen reference, on the parametrised device."""
    from mmrl.train.trainer import Trainer

    cfg = tiny(tmp_path_factory.mktemp("dev") / "run", f"runtime.device={request.param}", "algorithm.kl_coef=0.01",
               "stages=[{name: rl, kind: rl, steps: 100}]", "trainer.log_rollouts_every=0",
               f"rewards=[{{fn: '{plugin}:spread', name: spread, isolate: never}}]")
    t = Trainer(cfg, log=lambda *a: None)
    t.policy.begin_rl(needs_reference=True, adapter_trained=False)
    t.optim.new(cfg.stages[0])
    yield t


VARIANTS = [dict(PRESETS.get(name), _name=name) for name in PRESETS.names()] + [
    dict(cov_mode="clip_cov", cov_ratio=0.5, cov_low=-10.0, cov_high=10.0, _name="clip_cov"),
    dict(cov_mode="kl_cov", cov_ratio=0.5, _name="kl_cov"),
    dict(kl_coef=0.05, kl_placement="reward", kl_estimator="k1", _name="kl_in_reward"),
    dict(group_filter="nonzero_std", max_gen_batches=1, replay_capacity=8, _name="filter_replay"),
    dict(ppo_epochs=2, mini_batches=2, tis_cap=2.0, _name="epochs_tis"),
    # the preset's 1 % of ~24 negative tokens per micro-batch rounds to none: a wider share makes Lp-Reg act
    dict(PRESETS.get("lp_reg"), lp_reg_share=0.25, _name="lp_reg_wide"),
]
ACTIVE = {"clip_cov": "actor/cov_selected_frac", "kl_cov": "actor/cov_selected_frac",
          "lp_reg_wide": "actor/lp_reg_frac", "kl_in_reward": "actor/kl_in_reward"}  # traces of the variant's branch


def _variant_steps(t, variant, plugin) -> list[dict]:
    """One RL step of the variant (two for filter_replay, on `odd_only`: the second draws from the buffer)."""
    from mmrl.rewards.isolation import make_term
    from mmrl.rollout.replay import ReplayBuffer

    knobs = {k: v for k, v in variant.items() if k not in ("_name", "tis_cap")}
    t.cfg.algorithm = dataclasses.replace(AlgorithmConfig(), **knobs)
    t.cfg.rollout.tis_cap = variant.get("tis_cap")
    t.rl.replay = ReplayBuffer(t.cfg.algorithm.replay_capacity, t.cfg.algorithm.replay_alpha)
    if t.cfg.algorithm.rehearsal_coef > 0 and t.rl.rehearsal is None:
        t.rl.build_rehearsal()
    terms, steps = t.rl.scorer.terms, 2 if variant["_name"] == "filter_replay" else 1
    if steps == 2:
        t.rl.scorer.terms = [make_term(f"{plugin}:odd_only", name="odd", isolate="never")]
    try:
        out = []
        for _ in range(steps):
            out.append(t.rl.run())
            t.progress.step += 1
        return out
    finally:
        t.rl.scorer.terms = terms


def test_every_preset_step_and_sampled_eval_name_their_devices(rl_trainer, plugin):
    t = rl_trainer
    strict = StrictDevices()
    with strict:
        strict.check_inputs(t.policy.hf, t.runtime.device)
        for variant in VARIANTS:
            name = variant["_name"]
            steps = _variant_steps(t, variant, plugin)
            metrics = steps[-1]
            bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
            assert not bad, (name, bad)
            # the step did work: groups kept, non-zero advantages, a gradient, and the variant's own branch ran
            assert metrics["rollout/kept_groups"] > 0 and metrics["adv/zero_frac"] < 1, (name, metrics)
            assert metrics["actor/grad_norm"] > 0, (name, metrics)
            if name in ACTIVE:
                assert metrics[ACTIVE[name]] != 0, (name, ACTIVE[name], metrics)
            if name == "filter_replay":
                assert steps[0]["rollout/kept_groups"] == 2 and metrics["rollout/replayed_groups"] == 2, steps
        t.cfg.rollout.tis_cap = None
        t.evaluate()
        t.evaluator.sampled(2, temperature=1.0, step=t.progress.step)
    assert not strict.report(), "\n".join(strict.report())
    assert t.rl.rehearsal is None or t.rl.rehearsal.logp0.device.type == t.runtime.device.type


@pytest.mark.parametrize("recipe", ["acre", "vl_rethinker", "video_r1"])
def test_extra_pass_recipes_name_their_devices(tmp_path, zoo_cache, recipe):
    """ACRE's option shuffle, VL-Rethinker's forced rethinking, T-GRPO's shuffled frames (+ replay, video)."""
    if recipe == "video_r1":
        pytest.importorskip("av")
    cfg = load_config(REPO / "recipes" / f"{recipe}.yaml", ["smoke=true", f"run.dir={tmp_path / 'run'}",
                                                             "run.progress=false"])
    cfg.stages = [dataclasses.replace(s, steps=min(s.steps, 1)) for s in cfg.stages]
    _, summary, strict = _strict_run(cfg)
    assert not strict.report(), "\n".join(strict.report())
    assert "eval_after" in summary


def test_two_processes_name_their_devices(tmp_path, tiny):
    """One SFT and two RL steps with FSDP2 on gloo, each rank under StrictDevices (a real torchrun)."""
    out = tmp_path / "strict"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("strict_devices.py")), str(out), "-m", "mmrl", "train",
           str(REPO / "recipes" / "demo.yaml"),
           *tiny.overrides(tmp_path / "run", "trainer.threads=1", "algorithm.kl_coef=0.05",
                           "stages=[{name: warm, kind: sft, steps: 1, lr: 1.0e-3, labels: random}, "
                           "{name: rl, kind: rl, steps: 2}]")]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads(Path(f"{out}.{rank}").read_text())
        assert not report, f"rank {rank}:\n" + "\n".join(report)
