"""The GPU acceptance check: what mmrl claims about GPUs, run on one, in one command, with one JSON report.

    bash benchmarks/gpu_check.sh [--out DIR]          # on a CUDA machine (installs benchmarks/wheels first)
    bash benchmarks/gpu_check.sh --cpu [--out DIR]    # anywhere: the same steps on the CPU, CUDA-only ones skipped

Steps (each recorded with pass / fail / skip, its reason, seconds and figures in DIR/gpu_check.json):

1. `env`       — versions (torch, transformers, peft, triton, flash-attn, vllm), the card, what is importable;
2. `pytest`    — `pytest -m gpu tests` (the GPU variants of the device-strict tests, flash-attention varlen
                 packing) and `tests/kernels/test_triton.py` on CUDA (Triton fp32 and bf16 parity);
3. `demo`      — `mmrl train recipes/demo.yaml runtime.device=cuda`: held-out accuracy ≥ 0.9 after RL and every
                 parameter on CUDA (read back from the run's summary.json); `--cpu` runs a shortened demo
                 (no accuracy bar: a few steps cannot learn the task);
4. `torchrun`  — `torchrun --nproc_per_node=1 -m mmrl train …` for 1 SFT + 2 RL steps: FSDP2 over NCCL on the
                 GPU (gloo with `--cpu`), a sharded checkpoint written, and every RL step a policy-gradient update
                 (the `virtual_max` baseline gives the warm start's all-wrong groups Â < 0; no entropy bonus, so
                 the gradient is the advantages');
5. `step_time` — one RL step of the `small` zoo model (median of 3 after a warm-up) on the GPU and on the CPU,
                 same process, same settings;
6. `sampler`   — benchmarks/bench_sampler.py at V = 151,936, N = 256: per-token cost before/after on this device.

flash-attn (no wheel for this machine) and vLLM (too large to carry) cannot run on the lent GPU machine: their
steps are skipped with that reason when they do not import. The report says which card ran it and when.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# a few steps of the demo in which every RL step updates (no group filter: an untrained model's groups are all 0)
TINY = ["data.train.n=32", "data.eval.n=8", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "trainer.prompts_per_step=4", "trainer.sft_batch_size=4", "trainer.eval_every=0", "run.progress=false",
        "algorithm.group_filter=none", "algorithm.max_gen_batches=1"]


class Skip(Exception):
    """A step that cannot run here, with the reason."""


def _version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        from importlib.metadata import version

        return version(name.replace("_", "-"))
    except Exception:  # noqa: BLE001 — a module without distribution metadata
        return "importable"


def _run(cmd: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def _tail(proc: subprocess.CompletedProcess, n: int = 1500) -> str:
    return (proc.stdout[-n:] + "\n" + proc.stderr[-n:]).strip()


class Check:
    def __init__(self, device: str, out: Path, full_demo: bool):
        import torch

        self.device, self.out, self.full_demo = device, out, full_demo
        self.cuda = device == "cuda"
        self.report: dict = {"mode": device, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "host": platform.node(), "python": platform.python_version(), "steps": {}}
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("gpu_check: CUDA is not available here; run with --cpu")

    def step(self, name: str, fn, budget: float) -> None:
        t0 = time.perf_counter()
        rec: dict = {}
        try:
            rec.update(fn(budget) or {})
            rec["status"] = "pass"
        except Skip as e:
            rec.update(status="skip", reason=str(e))
        except subprocess.TimeoutExpired as e:
            rec.update(status="fail", reason=f"timed out after {e.timeout:.0f} s")
        except Exception as e:  # noqa: BLE001 — every failure goes into the report
            rec.update(status="fail", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        self.report["steps"][name] = rec
        print(f"gpu_check: {name:10s} {rec['status']:5s} {rec['seconds']:7.1f} s  {rec.get('reason', '')}", flush=True)
        self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=1, default=str))

    # ------------------------------------------------------------------------------------------ steps
    def env(self, budget: float) -> dict:
        """Versions and the card; fails early when what every later step needs is missing, and compiles one
        Triton kernel on CUDA (checked against the reference)."""
        import torch

        info = {name: _version(name) for name in
                ("torch", "torchvision", "transformers", "peft", "accelerate", "triton", "flash_attn", "vllm",
                 "math_verify", "matplotlib", "hypothesis", "av", "decord")}
        info["cuda_build"] = torch.version.cuda
        self.report["card"] = "none (cpu mode)"
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                        capability=f"{props.major}.{props.minor}", devices=torch.cuda.device_count())
            self.report["card"] = props.name
        missing = [n for n in ("torchvision", "matplotlib", "math_verify") if info[n] is None]
        if missing:  # every later step builds a zoo model (torchvision: its video processor) or plots
            raise AssertionError(f"missing {missing}: run benchmarks/gather_wheels.sh and carry benchmarks/wheels")
        if self.cuda:  # Triton compiles its kernels on first use (needs a C compiler and Python headers)
            from mmrl.kernels import naive_token_logprobs, token_logprobs

            g = torch.Generator(device="cuda").manual_seed(0)
            h = torch.randn(37, 64, device="cuda", generator=g)
            w = torch.randn(300, 64, device="cuda", generator=g)
            t = torch.randint(0, 300, (37,), device="cuda", generator=g)
            fused, _ = token_logprobs(h, w, t, backend="triton")
            ref, _ = naive_token_logprobs(h, w, t)
            info["triton_compile_max_err"] = float((fused - ref).abs().max())
        return info

    def pytest(self, budget: float) -> dict:
        if not self.cuda:
            raise Skip("CUDA-only tests: `pytest -m gpu` skips every one of them without a GPU")
        out = {}
        for name, args, share in (("gpu_marked", ["-m", "gpu", "tests"], 0.7),
                                  ("triton", ["tests/kernels/test_triton.py"], 0.3)):
            proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-rs", *args],
                        budget * share, self.out / f"pytest_{name}.log")
            out[name] = {"returncode": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:],
                         "skips": [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIPPED")][:20]}
            if proc.returncode not in (0,):
                raise AssertionError(f"{name}: pytest exit {proc.returncode}: {_tail(proc)}")
        return out

    def demo(self, budget: float) -> dict:
        run = self.out / "demo"
        quick = [] if (self.cuda or self.full_demo) else [
            *TINY, "stages=[{name: warm, kind: sft, steps: 3, lr: 1.0e-3, labels: random}, {name: rl, kind: rl, steps: 3}]"]
        proc = _run([sys.executable, "-m", "mmrl", "train", "recipes/demo.yaml", f"runtime.device={self.device}",
                     f"run.dir={run}", "run.progress=false", *quick], budget, self.out / "demo.log")
        if proc.returncode != 0:
            raise AssertionError(f"mmrl train exit {proc.returncode}: {_tail(proc)}")
        summary = json.loads((run / "summary.json").read_text())
        where = summary["runtime"]
        acc = summary["eval_after"].get("eval/accuracy")
        rec = {"eval_before": summary.get("eval_before"), "eval_after": summary["eval_after"], "runtime": where,
               "wall_s": summary.get("wall_s"), "full_demo": not quick}
        if {d.split(":")[0] for d in where["param_devices"]} != {self.device}:
            raise AssertionError(f"parameters were on {where['param_devices']}, not {self.device}")
        if not quick and not (acc is not None and acc >= 0.9):
            raise AssertionError(f"held-out accuracy after RL {acc} < 0.9")
        return rec

    def torchrun(self, budget: float) -> dict:
        run = self.out / "torchrun"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "mmrl",
               "train", "recipes/demo.yaml", f"runtime.device={self.device}", f"run.dir={run}", *TINY,
               "algorithm.kl_coef=0.05", "algorithm.entropy_coef=0.0",
               # after 1 SFT step every completion scores 0: with the group mean as baseline every Â would be 0 and
               # the "RL update" a no-op; NGRPO's virtual max-reward sample makes an all-wrong group's Â negative
               # (G 4: −0.2 / std{0, 0, 0, 0, 1} = −0.447), so the FSDP step reduces a real gradient
               "algorithm.baseline=virtual_max",
               "stages=[{name: warm, kind: sft, steps: 1, lr: 1.0e-3, labels: random}, {name: rl, kind: rl, steps: 2}]"]
        proc = _run(cmd, budget, self.out / "torchrun.log")
        if proc.returncode != 0:
            raise AssertionError(f"torchrun exit {proc.returncode}: {_tail(proc)}")
        where = json.loads((run / "summary.json").read_text())["runtime"]
        want = "nccl" if self.cuda else "gloo"
        if where["backend"] != want or where["processes"] != 1:
            raise AssertionError(f"ran on {where}, expected 1 process on {want}")
        sharded = [p.name for p in (run / "checkpoints").glob("step_*") if (p / "dcp" / ".metadata").exists()]
        if not sharded:
            raise AssertionError("no sharded (torch.distributed.checkpoint) checkpoint was written")
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rl = [r for r in rows if "actor/loss" in r]
        rec = {"runtime": where, "sharded_checkpoints": sharded, "rl_losses": [r["actor/loss"] for r in rl],
               "rl_grad_norms": [r["actor/grad_norm"] for r in rl],
               "rl_zero_adv_frac": [r["adv/zero_frac"] for r in rl],
               "rl_reward_mean": [r["reward/total/mean"] for r in rl]}
        if len(rl) != 2:
            raise AssertionError(f"expected 2 RL updates, got {len(rl)}: {rec}")
        if not all(r["adv/zero_frac"] < 1 and r["actor/grad_norm"] > 0 for r in rl) or \
                not any(r["actor/loss"] != 0 for r in rl):
            raise AssertionError(f"an RL step did not update (all advantages 0 or no gradient): {rec}")
        # first RL step, ratio 1 and every group all-wrong (the usual case): loss = −Â = 0.2 / stdev{0, 0, 0, 0, 1}
        rec["rl_loss_expected"] = 0.2 / statistics.stdev([0.0, 0.0, 0.0, 0.0, 1.0])
        if rec["rl_reward_mean"][0] == 0 and abs(rec["rl_losses"][0] - rec["rl_loss_expected"]) > 1e-3:
            raise AssertionError(f"first RL loss {rec['rl_losses'][0]} != −Â = {rec['rl_loss_expected']:.6f}: {rec}")
        return rec

    def step_time(self, budget: float) -> dict:
        code = (
            "import json, statistics, sys, time, torch\n"
            "from mmrl.cli.checks import load_config\nfrom mmrl.train.trainer import Trainer\n"
            "dev, run, prompts, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])\n"
            "cfg = load_config('recipes/demo.yaml', ['model.path=zoo:qwen2_vl-small', f'runtime.device={dev}',\n"
            "    f'run.dir={run}', 'run.progress=false', f'trainer.prompts_per_step={prompts}', 'rollout.group_size=8',\n"
            "    'rollout.max_new_tokens=32', 'rollout.ignore_eos=true', 'trainer.log_rollouts_every=0',\n"
            "    'trainer.threads=null',\n"
            "    'stages=[{name: rl, kind: rl, steps: 10}]'])\n"
            "t = Trainer(cfg, log=lambda *a: None)\n"
            "t.policy.begin_rl(needs_reference=False, adapter_trained=False); t.optim.new(cfg.stages[0])\n"
            "times = []\n"
            "for i in range(steps):\n"
            "    if dev == 'cuda': torch.cuda.synchronize()\n"
            "    t0 = time.perf_counter(); m = t.rl.run(); t.progress.step += 1\n"
            "    if dev == 'cuda': torch.cuda.synchronize()\n"
            "    times.append(time.perf_counter() - t0)\n"
            "print(json.dumps({'step_s': statistics.median(times[1:]), 'warmup_s': times[0],\n"
            "    'tokens_per_step': int(m['rollout/len_mean'] * prompts * 8), 'rollout_s': m['perf/rollout_s'],\n"
            "    'update_s': m['perf/update_s'], 'threads': torch.get_num_threads()}))\n"
        )
        devices = ["cuda", "cpu"] if self.cuda else ["cpu"]
        # the comparison: 16 prompts × G 8 × 32 tokens, median of 3 steps after a warm-up, both devices; the CPU
        # mode only proves the step runs (4 prompts, 1 step after the warm-up)
        prompts, steps = ("16", "4") if self.cuda else ("4", "2")
        out = {"prompts": int(prompts), "group": 8, "tokens": 32}
        for dev in devices:
            proc = _run([sys.executable, "-c", code, dev, str(self.out / f"step_{dev}"), prompts, steps],
                        budget / len(devices),
                        self.out / f"step_time_{dev}.log")
            if proc.returncode != 0:
                raise AssertionError(f"{dev}: exit {proc.returncode}: {_tail(proc)}")
            out[dev] = json.loads(proc.stdout.strip().splitlines()[-1])
        if self.cuda:
            out["cpu_over_gpu"] = round(out["cpu"]["step_s"] / out["cuda"]["step_s"], 2)
        else:
            out["gpu"] = "skipped: no CUDA"
        return out

    def sampler(self, budget: float) -> dict:
        path = self.out / "sampler.json"
        n = "256" if self.cuda else "64"  # the CPU mode keeps CI short; the README's CPU row uses --n 256
        proc = _run([sys.executable, "benchmarks/bench_sampler.py", "--device", self.device, "--n", n, "--reps", "3",
                     "--json", str(path)], budget, self.out / "sampler.log")
        if proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}: {_tail(proc)}")
        return json.loads(path.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU; CUDA-only steps are skipped with a reason")
    ap.add_argument("--out", default="runs/gpu_check", help="report folder (gpu_check.json and the logs)")
    ap.add_argument("--full-demo", action="store_true", help="--cpu: the whole demo and its accuracy bar")
    ap.add_argument("--only", nargs="*", default=None, help="run only these steps")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check("cpu" if args.cpu else "cuda", out, args.full_demo)
    # seconds each step may take: the whole check stays under 8 minutes on the GPU machine
    plan = [("env", check.env, 30), ("pytest", check.pytest, 170), ("demo", check.demo, 180),
            ("torchrun", check.torchrun, 45), ("step_time", check.step_time, 75), ("sampler", check.sampler, 25)]
    for name, fn, budget in plan:
        if args.only is None or name in args.only:
            check.step(name, fn, budget)
    steps = check.report["steps"]
    check.report["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    check.report["ok"] = all(s["status"] != "fail" for s in steps.values())
    check.write()
    print(f"gpu_check: {'OK' if check.report['ok'] else 'FAILED'} → {out / 'gpu_check.json'}")
    return 0 if check.report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
