"""benchmarks/gpu_check.sh --cpu: the GPU acceptance check's CPU mode runs green, so the check cannot rot between
the rare sessions that have a GPU. Every step runs for real on the CPU; the CUDA-only one is skipped with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_mode(tmp_path, zoo_cache):
    env = dict(os.environ, PYTHON=sys.executable, MMRL_VENDOR=str(tmp_path / "vendor"), OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu", "--out", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = report["steps"]
    assert proc.returncode == 0 and report["ok"], proc.stdout[-3000:] + json.dumps(steps, indent=1)[-3000:]
    assert list(steps) == ["env", "pytest", "demo", "torchrun", "step_time", "sampler"]
    assert steps["pytest"]["status"] == "skip" and "without a GPU" in steps["pytest"]["reason"]
    assert steps["env"]["torch"] and report["card"] == "none (cpu mode)"
    demo = steps["demo"]
    assert demo["status"] == "pass" and demo["runtime"]["param_devices"] == ["cpu"] and not demo["full_demo"]
    assert steps["torchrun"]["runtime"]["backend"] == "gloo" and steps["torchrun"]["sharded_checkpoints"]
    tr = steps["torchrun"]  # 2 FSDP RL steps that update: every all-wrong group has Â = −0.447 (virtual_max, G 4)
    assert tr["rl_reward_mean"] == [0.0, 0.0] and tr["rl_zero_adv_frac"] == [0.0, 0.0]
    assert all(g > 0 for g in tr["rl_grad_norms"]) and len(tr["rl_grad_norms"]) == 2
    assert tr["rl_losses"][0] == pytest.approx(0.2 / 0.2**0.5, rel=1e-5)  # −Â at ratio 1 (measured 0.4472125)
    assert tr["rl_losses"][1] != tr["rl_losses"][0]  # the second step's ratio and KL moved
    assert steps["step_time"]["cpu"]["step_s"] > 0 and steps["step_time"]["gpu"] == "skipped: no CUDA"
    assert steps["sampler"]["vocab"] == 151936 and steps["sampler"]["before_ms"] > 0 and steps["sampler"]["after_ms"] > 0
