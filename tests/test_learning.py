"""Learning: GRPO itself learns the rotation puzzle, and a shuffled-reward control does not.

Both runs share one format warm start (SFT on random labels) and then run the same number of GRPO steps on
one thread with a fixed seed (with two, CPU runs of the same seed differ from process to process, and 100 GRPO
steps amplify that: held-out accuracies of 0.69 to 1.0 were seen for one seed); the control shuffles the rewards within each group before the advantage, which
keeps every statistic of the reward signal except its link to the completions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrl import config
from mmrl.cli.checks import load_config
from mmrl.train import checkpoint
from mmrl.algorithms import BASELINES
from mmrl.algorithms.advantages import group_mean
from mmrl.rollout.types import row_seed
from mmrl.train.trainer import Trainer

pytestmark = pytest.mark.learning
REPO = Path(__file__).resolve().parent.parent

if "test_shuffled_group_mean" not in BASELINES:

    @BASELINES.register("test_shuffled_group_mean")
    def shuffled_group_mean(r: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative control: the group-mean baseline of rewards randomly permuted within each group [B, G]
        (the group std, permutation-invariant, is unchanged)."""
        gen = torch.Generator().manual_seed(row_seed("shuffle", *r.reshape(-1).tolist()))
        perm = torch.argsort(torch.rand(r.shape, generator=gen), dim=1)
        return group_mean(r.gather(1, perm))


def _cfg(run_dir: Path, *extra: str) -> config.Config:
    return load_config(REPO / "recipes" / "demo.yaml", [
        f"run.dir={run_dir}", "run.progress=false", "trainer.threads=1", "trainer.seed=0",
        "trainer.eval_every=0", "trainer.checkpoint_every=0", "trainer.keep_checkpoints=0",
        "trainer.log_rollouts_every=0", "data.eval.n=200", *extra,
    ])  # the demo's own stages: a 40-step format warm start, then GRPO


def test_grpo_learns_rotation_and_shuffled_rewards_do_not(tmp_path, zoo_cache):
    cfg = _cfg(tmp_path / "grpo")
    assert [s.kind for s in cfg.stages] == ["sft", "rl"] and cfg.stages[1].steps <= 120
    learned = Trainer(cfg, log=lambda *a: None).run()
    warm = checkpoint.list_complete(tmp_path / "grpo" / "checkpoints")[0]  # end of the SFT stage
    assert json.loads((warm / checkpoint.STATE_FILE).read_text())["progress"]["stage_step"] == 40

    control = Trainer(_cfg(tmp_path / "control", f"resume={warm}",
                           "algorithm.baseline=test_shuffled_group_mean"), log=lambda *a: None).run()

    assert learned["eval_before"]["eval/accuracy"] <= 0.40
    assert learned["eval_after"]["eval/accuracy"] >= 0.70, learned
    assert control["eval_before"] == learned["eval_before"]  # the same warm start
    assert control["eval_after"]["eval/accuracy"] <= 0.40, control


@pytest.mark.vllm
def test_demo_learns_with_vllm_rollouts(tmp_path, zoo_cache):
    """`rollout.engine=vllm` (the real engine, its CPU build) trains the demo: warm start, then GRPO sampling from
    vLLM, whose weights follow every optimizer step; held-out greedy accuracy (also sampled by vLLM) ≥ 0.9."""
    out = Trainer(_cfg(tmp_path / "vllm", "rollout.engine=vllm", "rollout.vllm_gpu_memory_utilization=0.02"),
                  log=lambda *a: None).run()
    assert out["eval_before"]["eval/accuracy"] <= 0.40
    assert out["eval_after"]["eval/accuracy"] >= 0.90, out
    gap = [json.loads(line).get("rollout/logprob_gap_max") for line in (tmp_path / "vllm" / "metrics.jsonl").open()]
    assert max(g for g in gap if g is not None) <= 1e-3  # vLLM sampled what the trainer scored, every step
