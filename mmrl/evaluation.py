"""`mmrl eval SOURCE`: held-out greedy evaluation of a run directory, a checkpoint or a model directory.

SOURCE may be
- a run directory (its `config.yaml` and newest complete checkpoint are used),
- a checkpoint directory (`RUN/checkpoints/step_N`; the run's `config.yaml` two levels up),
- a model directory with `config.json` (a zoo model, an export, or a real checkpoint) — evaluated with the
  default recipe's rewards unless overrides say otherwise.
The report goes to `eval/<name>/report.json` (metrics, settings, a few completions); for box answers a
picture, `eval/<name>/boxes.png`, shows ground-truth (green) and predicted (red) boxes on the first images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrl import checkpoint, config


class EvalError(RuntimeError):
    """SOURCE is not something mmrl can evaluate."""


def resolve_source(source: str | Path) -> tuple[Path | None, Path | None, str | None]:
    """(config.yaml, checkpoint dir, model dir) for SOURCE; exactly what exists is filled in."""
    src = Path(source)
    if not src.exists() and not str(source).startswith("zoo:"):
        raise EvalError(f"{source}: no such run, checkpoint or model directory")
    if (src / "config.yaml").exists():  # a run directory
        ck = checkpoint.latest(src / "checkpoints")
        if ck is None:
            raise EvalError(f"{src}: run directory has no complete checkpoint")
        return src / "config.yaml", ck, None
    if (src / checkpoint.STATE_FILE).exists():  # a checkpoint
        cfg = src.parent.parent / "config.yaml"
        if not cfg.exists():
            raise EvalError(f"{src}: checkpoint without its run's config.yaml at {cfg}")
        return cfg, src, None
    if str(source).startswith("zoo:") or (src / "config.json").exists():
        return None, None, str(source)
    raise EvalError(f"{source}: not a run directory, checkpoint (no {checkpoint.STATE_FILE}) or model (no config.json)")


def load_trainer(source: str | Path, overrides: list[str] = (), *, build: bool = True):
    """A Trainer whose policy carries SOURCE's weights (used by eval and export)."""
    cfg_path, ck, model_dir = resolve_source(source)
    extra = [f"model.path={model_dir}"] if model_dir else []
    base = str(cfg_path) if cfg_path else None
    if base is None:
        from mmrl.cli import DEFAULT_RECIPE

        base = str(DEFAULT_RECIPE)
        extra += ["model.mode=full"]
    cfg = config.load(base, [*extra, "resume=none", "run.progress=false", *overrides])
    from mmrl.trainer import Trainer

    trainer = Trainer(cfg, log=lambda *a: None)
    if ck is not None:
        trainer.load_weights(ck)
    return trainer, cfg, ck


def run_eval(source: str, *, data: str | None = None, task: str | None = None, n: int | None = None,
             overrides: list[str] = (), out: str | None = None) -> dict[str, Any]:
    over = list(overrides)
    if data:
        over.append(f"data.eval={{path: {json.dumps(str(Path(data).resolve()))}}}")
    elif task:
        over.append(f"data.eval={{task: {task}, n: {n or 200}, seed: 1}}")
    elif n:
        over.append(f"data.eval.n={n}")
    trainer, cfg, ck = load_trainer(source, over)
    metrics = trainer.evaluate()
    name = Path(data).stem if data else (task or cfg.data.eval.task or "eval")
    root = Path(out) if out else (cfg.run_dir if ck is not None else Path("runs/eval")) / "eval" / name
    root.mkdir(parents=True, exist_ok=True)
    report = {"source": str(source), "checkpoint": str(ck) if ck else None, "metrics": metrics,
              "data": {"eval": vars(cfg.data.eval)}, "model": cfg.model.path}
    if any(isinstance(smp.answer, dict) and "boxes" in smp.answer for smp in trainer.eval_data):
        from mmrl.plots import box_grid

        inputs = trainer._eval_inputs  # the encoded ones (a skipped sample has no completion)
        report["boxes_png"] = str(box_grid([p.sample for p in inputs], trainer.last_eval_texts,
                                           [p.answer_geometry for p in inputs], root / "boxes.png"))
    report["completions"] = [{"id": smp.id, "answer": smp.answer, "completion": t}
                             for smp, t in list(zip([p.sample for p in trainer._eval_inputs], trainer.last_eval_texts))[:8]]
    path = root / "report.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    report["path"] = str(path)
    return report
