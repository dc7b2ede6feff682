"""SIGKILL a real training process mid-run, resume with `resume=auto`, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.train import checkpoint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def _cmd(tiny, run_dir: Path, reward: str, *extra: str) -> list[str]:
    """The demo's SFT → RL run; `reward` (characters / 10) varies within every group, so each RL step moves the
    weights, Adam's moments, the KL to the reference and (LoRA) the RL adapter — all of which a resume restores."""
    return [sys.executable, "-m", "mmrl", "train", str(REPO / "recipes" / "demo.yaml"),
            *tiny.overrides(run_dir, "trainer.checkpoint_every=1", "trainer.threads=1",
                            "stages=[{name: warm, kind: sft, steps: 2, lr: 1.0e-3, labels: random}, "
                            "{name: rl, kind: rl, steps: 8}]", "algorithm.kl_coef=0.05",
                            f"rewards=[{{fn: '{reward}', name: len}}, {{fn: format}}]", *extra)]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    return json.loads(lines[-1])["train/step"] if lines else 0


# multi-turn rollouts with a tool (tests/multiturn_helpers.py: any vowel is a call; a turn ends at its first vowel)
TOOLS = [f"rollout.tools=[{{fn: '{REPO / 'tests' / 'multiturn_helpers.py'}:look', name: look, isolate: never}}]",
         "rollout.tool_format={pattern: '(?P<letter>[aeiou])', tool: look}", "rollout.tool_stops=[a, e, i, o, u]",
         "rollout.max_turns=3", "rollout.max_new_tokens=24"]
MODES = {"full": ["model.mode=full"], "lora": ["model.mode=lora"], "tools": ["model.mode=full", *TOOLS]}


@pytest.mark.parametrize("mode", list(MODES))
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny, length_reward, mode):
    mode = MODES[mode]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(tiny, ref_dir, length_reward, *mode), check=True, env=env,
                   capture_output=True)

    proc = subprocess.Popen(_cmd(tiny, run_dir, length_reward, *mode), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _steps_logged(run_dir) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _steps_logged(run_dir)
    assert 5 <= killed_at < 10

    out = subprocess.run(_cmd(tiny, run_dir, length_reward, *mode, "resume=auto"), env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    final_ref = load_file(str(checkpoint.latest(ref_dir / "checkpoints") / "model.safetensors"))
    final_run = load_file(str(checkpoint.latest(run_dir / "checkpoints") / "model.safetensors"))
    assert final_ref.keys() == final_run.keys()
    for k in final_ref:
        assert torch.equal(final_ref[k], final_run[k]), k
    assert _rows(ref_dir) == _rows(run_dir)
    rl = [r for r in _rows(ref_dir) if r.get("train/stage") == "rl"]
    assert sum(abs(r["actor/loss"]) > 1e-4 for r in rl) >= 3 and rl[-1]["actor/kl"] > 0  # RL really trained
    ref_summary = json.loads((ref_dir / "summary.json").read_text())
    run_summary = json.loads((run_dir / "summary.json").read_text())
    assert ref_summary["eval_before"] == run_summary["eval_before"]
    assert ref_summary["eval_after"] == run_summary["eval_after"]
