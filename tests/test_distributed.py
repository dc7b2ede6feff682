"""Multi-process training (mmrl.train.distributed) on CPU with gloo: `torchrun --nproc_per_node=2 -m mmrl train` gives the
losses and final weights of one process with the same global batch (also with `model.share_prompt` on the 2); a
SIGKILLed 2-process run resumed with `resume=auto` — by 2 processes or by 1 — ends where the uninterrupted run
ends; the sharded checkpoint exports to a directory `from_pretrained` loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmrl.train import checkpoint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
STEPS = "stages=[{name: warm, kind: sft, steps: 2, lr: 1.0e-3, labels: random}, {name: rl, kind: rl, steps: 4}]"


def _cmd(tiny, run_dir: Path, procs: int, *extra: str) -> list[str]:
    launcher = TORCHRUN if procs == 2 else [sys.executable]
    return [*launcher, "-m", "mmrl", "train", str(REPO / "recipes" / "demo.yaml"),
            *tiny.overrides(run_dir, "trainer.checkpoint_every=1", "trainer.threads=1", STEPS,
                            "algorithm.kl_coef=0.05", *extra)]


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.full_weights(checkpoint.latest(run_dir / "checkpoints"))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < tol, worst


def _same_rows(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert [r.get("train/step") for r in a] == [r.get("train/step") for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k, v in x.items():
            if isinstance(v, float):
                assert y[k] == pytest.approx(v, rel=tol, abs=tol), (x.get("train/step"), k)
            else:
                assert y[k] == v, (x.get("train/step"), k)


@pytest.fixture(scope="module")
def reward(length_reward) -> str:
    """Characters / 10 (+ format): it varies within every group, so the RL steps have gradients to reduce."""
    return f"rewards=[{{fn: '{length_reward}', name: len}}, {{fn: format}}]"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny, reward):
    root = tmp_path_factory.mktemp("dist")
    _run(_cmd(tiny, root / "one", 1, reward))
    _run(_cmd(tiny, root / "two", 2, reward))
    return root


def test_two_processes_give_the_losses_and_weights_of_one(runs):
    one, two = runs / "one", runs / "two"
    assert checkpoint.is_sharded(checkpoint.latest(two / "checkpoints"))
    assert not checkpoint.is_sharded(checkpoint.latest(one / "checkpoints"))
    a, b = _rows(one), _rows(two)
    assert any("sft/loss" in r for r in a) and sum("actor/loss" in r for r in a) == 4
    rl = [r for r in a if "actor/loss" in r]
    assert sum(abs(r["actor/loss"]) > 1e-4 for r in rl) >= 2 and rl[-1]["actor/kl"] > 0  # RL gradients reduced
    _same_rows(a, b)
    # fp32 gradients summed in another order differ in the last bits; Adam divides by √v, which magnifies that
    # on weights whose gradients are near 0 (measured: 3e-5 after 6 steps at lr 1e-3, i.e. 3 % of one step)
    _close(_final(one), _final(two), tol=1e-4)
    assert [json.loads(x)["completion"] for x in (one / "rollouts.jsonl").read_text().splitlines()] == \
           [json.loads(x)["completion"] for x in (two / "rollouts.jsonl").read_text().splitlines()]


def test_two_processes_sharing_prompts_give_the_losses_and_weights_of_one_unshared(runs, tiny, reward):
    """`model.share_prompt` with each rank's block of rows (2 groups of G 4 each): the 1-process per-row run's
    losses, completions and final weights, to the tolerances of the 1-vs-2 test above."""
    one, shared = runs / "one", runs / "two_shared"
    _run(_cmd(tiny, shared, 2, reward, "model.share_prompt=true"))
    a, b = _rows(one), _rows(shared)
    assert sum(abs(r["actor/loss"]) > 1e-4 for r in a if "actor/loss" in r) >= 2
    _same_rows(a, b)
    _close(_final(one), _final(shared), tol=1e-4)
    assert [json.loads(x)["completion"] for x in (one / "rollouts.jsonl").read_text().splitlines()] == \
           [json.loads(x)["completion"] for x in (shared / "rollouts.jsonl").read_text().splitlines()]


def test_killed_two_process_run_resumes_with_two_or_one(runs, tiny, reward):
    killed = runs / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_cmd(tiny, killed, 2, reward), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = checkpoint.list_complete(killed / "checkpoints")
        if done and checkpoint.read_state(done[-1])["progress"]["step"] >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, mid-step
    proc.wait()
    at = checkpoint.read_state(checkpoint.latest(killed / "checkpoints"))["progress"]["step"]
    assert 3 <= at < 6
    shutil.copytree(killed, runs / "killed_one")
    _run(_cmd(tiny, killed, 2, reward, "resume=auto"))
    _run(_cmd(tiny, runs / "killed_one", 1, reward, "resume=auto"))
    reference = _final(runs / "two")
    _close(reference, _final(killed))
    _close(reference, _final(runs / "killed_one"))
    _same_rows(_rows(runs / "two"), _rows(killed))
    _same_rows(_rows(runs / "two"), _rows(runs / "killed_one"))


def test_sharded_checkpoint_exports_for_from_pretrained(runs, zoo_cache):
    from transformers import AutoModelForImageTextToText

    from mmrl.datasets.synthetic import make
    from mmrl.cli.evaluation import load_policy
    from mmrl.cli.export import export

    out = export(str(runs / "two"), str(runs / "export"))
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    policy, _, _ = load_policy(str(runs / "two"))
    _close(_final(runs / "two"), {k: v for k, v in model.state_dict().items() if k in _final(runs / "two")})
    prompt = policy.encode(make("rotation", 1, seed=9)[0])
    batch = policy.collate([prompt])
    ids = torch.randint(20, 200, (1, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        trained, _ = policy.completion_logprobs(batch, ids, mask)
        policy.hf = model
        exported, _ = policy.completion_logprobs(batch, ids, mask)
    assert torch.allclose(trained, exported, atol=1e-5)


def test_lora_under_fsdp2_matches_one_process(tmp_path, tiny, length_reward):
    """LoRA adapters sharded with their layers: the same losses and adapter weights with 2 processes as with 1."""
    extra = ("model.mode=lora", "trainer.lr=1.0e-3", "stages=[{name: rl, kind: rl, steps: 3}]",
             f"rewards=[{{fn: '{length_reward}', name: len}}]")
    _run(_cmd(tiny, tmp_path / "one", 1, *extra))
    _run(_cmd(tiny, tmp_path / "two", 2, *extra))
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert any(abs(r.get("actor/loss") or 0.0) > 1e-4 for r in a)
    _same_rows(a, b)

    def names(w):  # peft's adapter-state names (one process) vs the module's own (shards)
        return {k.removeprefix("base_model.model.").replace(".default.", "."): v for k, v in w.items()}

    one, two = names(_final(tmp_path / "one")), names(_final(tmp_path / "two"))
    assert one and all("lora_" in k for k in one)
    _close(one, two)


def test_bf16_mixed_precision_policy_trains(tmp_path, tiny, length_reward):
    """`distributed.mixed_precision: bfloat16` (bf16 compute, fp32 gradient reduction) against the same 2-process run
    without it: on the SFT step (the same batch in both) the loss and gradient norm agree to bf16 rounding but are not
    equal; the RL step has a gradient; the weights saved stay fp32."""
    extra = ("stages=[{name: warm, kind: sft, steps: 1, lr: 1.0e-3, labels: random}, {name: rl, kind: rl, steps: 1}]",
             f"rewards=[{{fn: '{length_reward}', name: len}}]")
    _run(_cmd(tiny, tmp_path / "bf16", 2, *extra, "distributed.mixed_precision=bfloat16"))
    _run(_cmd(tiny, tmp_path / "fp32", 2, *extra))
    (b_sft, b_rl), (f_sft, f_rl) = ([r for r in _rows(tmp_path / run) if "sft/loss" in r or "actor/loss" in r]
                                    for run in ("bf16", "fp32"))
    # measured: loss 6.81928 vs 6.81812 (1.7e-4 relative), grad norm 13.3426 vs 13.3557 (1e-3); the knob ignored
    # gives equal values, a gradient reduced in bf16 or summed instead of averaged a different norm
    assert b_sft["sft/loss"] != f_sft["sft/loss"] and b_sft["sft/loss"] == pytest.approx(f_sft["sft/loss"], rel=2e-3)
    assert b_sft["actor/grad_norm"] != f_sft["actor/grad_norm"]
    assert b_sft["actor/grad_norm"] == pytest.approx(f_sft["actor/grad_norm"], rel=1e-2)
    # RL: the sampler's and the bf16 trainer's log-probs of the same tokens differ by bf16 rounding (measured 7e-4;
    # fp32: 2.5e-7); the completions differ from the fp32 run's, so the rest is checked for a gradient and a sane
    # entropy (measured 6.76819 vs 6.76814)
    assert b_rl["rollout/logprob_gap_mean"] > 1e-5 > f_rl["rollout/logprob_gap_mean"]
    assert b_rl["rollout/logprob_gap_mean"] < 1e-2
    assert b_rl["adv/zero_frac"] < 1 and b_rl["actor/grad_norm"] > 0
    assert b_rl["actor/entropy"] == pytest.approx(f_rl["actor/entropy"], abs=0.05)
    weights = _final(tmp_path / "bf16")
    assert weights.keys() == _final(tmp_path / "fp32").keys()
    assert {w.dtype for w in weights.values()} == {torch.float32}  # fp32 master weights; bf16 only in compute
