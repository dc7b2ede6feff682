"""Curves of a run as PNG: rewards per component and held-out eval metrics (`mmrl plot RUN_DIR`)."""

from __future__ import annotations

from pathlib import Path

from mmrl.metrics import read


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["train/step"], r[key]) for r in rows if r.get(key) is not None and "train/step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write `plots/rewards.png` and `plots/eval.png` (when there are eval rows); return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read(run_dir / "metrics.jsonl")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    groups = {
        "rewards.png": sorted({k for r in rows for k in r if k.startswith("reward/") and k.endswith("/mean")}),
        "eval.png": sorted({k for r in rows for k in r if k.startswith("eval/") and k != "eval/n"}),
        "training.png": [k for k in ("sft/loss", "actor/kl", "actor/entropy", "actor/clip_frac")
                         if any(r.get(k) is not None for r in rows)],
    }
    for fname, keys in groups.items():
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for key in keys:
            xs, ys = _series(rows, key)
            ax.plot(xs, ys, marker="o" if fname == "eval.png" else None, ms=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(f"{run_dir.name}: {fname[:-4]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname)
        plt.close(fig)
        written.append(out_dir / fname)
    return written
