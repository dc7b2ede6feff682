"""Benchmark `token_logprobs`: the fused "torch" backend against the naive reference (full logits) and, when
importable, Liger-Kernel's chunked fused-linear GRPO loss — peak extra memory and time of forward + backward.

    python benchmarks/bench_logprobs.py            # full: N = 512 … 4096 (fused also 8192), H = 512, V = 151936, fp32
    python benchmarks/bench_logprobs.py --quick    # N = 512 only, one repeat (about 30 s)
    python benchmarks/bench_logprobs.py --large    # adds fused N = 16384
    python benchmarks/bench_logprobs.py --hidden 3584 --sizes 2048   # Qwen2.5-VL-7B's hidden size, one N

The Liger-Kernel column needs `pip install --no-deps liger-kernel==0.8.5` (its chunked GRPO loss runs on the CPU
with `compiled=False`; `--no-liger` skips it, and it is skipped when not importable).

Loss: Σ logp (+ Σ entropy with --entropy rows), so both outputs carry gradient; hidden and weight both need grad.

Peak extra memory: every measurement runs in a FRESH subprocess. The child creates hidden [N, H], weight [V, H],
targets and zero-filled .grad buffers for both (so gradient storage is part of the baseline, not of the extra),
then reads ru_maxrss (the process's RSS high-water mark): nothing large has been freed yet, so at that point the
high-water mark equals the current RSS (the child records both; `baseline_gap_mib` is their difference). After a
small warm-up (N = 128, same H and V) and the timed full-size calls, the extra is ru_maxrss − baseline: the highest
RSS reached by any tensor the method created, including the temporary [V, H] weight gradient that autograd adds
into .grad. This is CPU RSS: what the allocator actually touched, including allocator slack.

Time: median over `repeats` full-size forward+backward calls after the warm-up (3 by default; 1 above N = 2048,
where a call takes 17–38 s here), with torch.set_num_threads(--threads, default: all cores). The load average is
recorded before each measurement: other processes on the machine inflate times, not memory.

Writes a Markdown table to stdout, a PNG (--out, default benchmarks/results/kernels.png) and the rows as JSON
beside it (same name, .json). Targets checked at N = 2048: fused peak extra ≤ 1/8 of naive's; with entropy fused
time ≤ 1.1 × naive; log-probs alone ≤ 1.5 × naive.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

from fresh_process import emit, maxrss_mib
from fresh_process import run as run_child

H, V = 512, 151936  # H: --hidden
TARGET_N = 2048
NAMES = {"torch": "fused (torch)", "liger": "liger GRPO loss"}


# ----------------------------------------------------------------------------------------------- child process
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _step(method: str, h, w, t, entropy: bool) -> None:
    """One forward + backward of Σ logp (+ Σ entropy)."""
    import torch

    from mmrl.kernels import token_logprobs

    if method == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        seq = 128  # Liger's chunks are whole sequences: N tokens as [N / 128, 128]
        loss_fn = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=False, chunk_size=1)
        ids, mask = t.view(-1, seq), torch.ones(t.numel() // seq, seq)
        loss = loss_fn(h.view(-1, seq, h.shape[1]), w, ids, mask, torch.ones(ids.shape[0]))[0]
    else:
        logp, ent = token_logprobs(h, w, t, with_entropy=entropy, backend=method)
        loss = logp.sum() + (ent.sum() if entropy else 0)
    loss.backward()


def child(method: str, n: int, entropy: bool, repeats: int, threads: int, hidden: int = H) -> dict:
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=g).requires_grad_()  # [N, H]
    w = torch.randn(V, hidden, generator=g).mul_(hidden**-0.5).requires_grad_()  # [V, H], in place: no temporary
    t = torch.randint(0, V, (n,), generator=g)  # [N]
    h.grad, w.grad = torch.zeros_like(h), torch.zeros_like(w)
    base, rss = maxrss_mib(), _rss_mib()
    _step(method, h[:128], w, t[:128], entropy)  # warm-up: thread pool, BLAS, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(method, h, w, t, entropy)
        times.append(time.perf_counter() - start)
    return {"peak_extra_mib": maxrss_mib() - base, "baseline_gap_mib": base - rss, "times_s": times,
            "time_s": statistics.median(times)}


# ---------------------------------------------------------------------------------------------- parent process
def measure(method: str, n: int, entropy: bool, repeats: int, threads: int, hidden: int = H) -> dict:
    """Runs `child` in a fresh interpreter; failures (e.g. a missing optional peer) come back as a skip reason."""
    cmd = [sys.executable, __file__, "--child", method, str(n), str(int(entropy)), str(repeats), str(threads),
           str(hidden)]
    row = {"method": method, "entropy": entropy, "n": n, "hidden": hidden, "load_avg": os.getloadavg()[0]}
    if method == "liger" and importlib.util.find_spec("liger_kernel") is None:
        return {**row, "skipped": "liger-kernel not installed"}
    return {**row, **run_child(cmd, reason_chars=200)}


def plan(args) -> list[tuple[str, int, bool]]:
    sizes = [512] if args.quick else args.sizes or [512, 1024, 2048, 4096]
    fused_only = [] if args.quick or args.sizes else [8192] + ([16384] if args.large else [])
    runs = []
    for entropy in (False, True):
        for n in sizes:
            runs += [("naive", n, entropy), ("torch", n, entropy)]
            if not entropy and args.liger:
                runs.append(("liger", n, entropy))
        runs += [("torch", n, entropy) for n in fused_only]
    return runs


def table(rows: list[dict]) -> str:
    out = ["| method | entropy | N | H | peak extra (MiB) | time (s, median) | repeats | load avg |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = NAMES.get(r["method"], r["method"])
        if "skipped" in r:
            out.append(f"| {name} | {r['entropy']} | {r['n']} | {r['hidden']} | skipped: {r['skipped']} | | | |")
            continue
        out.append(f"| {name} | {r['entropy']} | {r['n']} | {r['hidden']} | {r['peak_extra_mib']:.0f} | "
                   f"{r['time_s']:.2f} | "
                   f"{len(r['times_s'])} | {r['load_avg']:.1f} |")
    return "\n".join(out)


def targets(rows: list[dict]) -> list[str]:
    """The project's targets at N = 2048, as lines of text."""
    get = {(r["method"], r["entropy"], r["n"]): r for r in rows if "skipped" not in r}
    lines = []
    for entropy, limit in ((False, 1.5), (True, 1.1)):
        naive, fused = get.get(("naive", entropy, TARGET_N)), get.get(("torch", entropy, TARGET_N))
        if not (naive and fused):
            continue
        mem = fused["peak_extra_mib"] / naive["peak_extra_mib"]
        tim = fused["time_s"] / naive["time_s"]
        lines.append(f"N={TARGET_N}, entropy={entropy}: memory fused/naive = {mem:.3f} (target ≤ 0.125: "
                     f"{'met' if mem <= 0.125 else 'MISSED'}); time fused/naive = {tim:.2f} (target ≤ {limit}: "
                     f"{'met' if tim <= limit else 'MISSED'})")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, entropy in sorted({(r["method"], r["entropy"]) for r in rows if "skipped" not in r}):
        pts = sorted((r["n"], r["peak_extra_mib"], r["time_s"]) for r in rows
                     if "skipped" not in r and r["method"] == method and r["entropy"] == entropy)
        label = NAMES.get(method, method) + (" + entropy" if entropy else "")
        color = {"naive": "C0", "torch": "C1", "liger": "C2"}.get(method, "C3")
        style = {"marker": "o", "color": color, "linestyle": "-" if entropy else "--", "label": label}
        ax_m.plot([p[0] for p in pts], [p[1] for p in pts], **style)
        ax_t.plot([p[0] for p in pts], [p[2] for p in pts], **style)
    for ax, ylabel in ((ax_m, "peak extra RSS (MiB)"), (ax_t, "forward + backward (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"token_logprobs, H={rows[0].get('hidden', H)}, V={V}, fp32, {rows[0].get('threads', '?')} threads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 512 only, one repeat")
    p.add_argument("--large", action="store_true", help="also fused N = 16384")
    p.add_argument("--no-liger", dest="liger", action="store_false", help="skip the Liger-Kernel peer")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement up to N = 2048")
    p.add_argument("--hidden", type=int, default=H, help="H: hidden size (Qwen2.5-VL-7B: 3584)")
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], help="N values, e.g. 2048 or 512,1024")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels.png"))
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        method, n, entropy, repeats, threads, hidden = args.child
        emit(child(method, int(n), entropy == "1", int(repeats), int(threads), int(hidden)))
        return
    start, rows = time.time(), []
    for method, n, entropy in plan(args):
        repeats = 1 if args.quick or n > TARGET_N else args.repeats
        rows.append({**measure(method, n, entropy, repeats, args.threads, args.hidden), "threads": args.threads})
        print(f"  {method:6s} entropy={entropy!s:5s} N={n:5d}: {rows[-1].get('time_s', rows[-1].get('skipped'))}",
              file=sys.stderr, flush=True)
    print(table(rows))
    print()
    print("\n".join(targets(rows)) or f"targets: N={TARGET_N} not measured in this run")
    print(f"\ntotal {time.time() - start:.0f} s")
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
