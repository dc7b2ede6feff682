"""`mmrl eval SOURCE`: held-out greedy evaluation of a run directory, a checkpoint or a model directory.

SOURCE may be
- a run directory (its `config.yaml` and newest checkpoint that verifies are used; newer damaged ones are skipped
  with a note on stderr),
- a checkpoint directory (`RUN/checkpoints/step_N`, verified first; the run's `config.yaml` two levels up),
- a model directory with `config.json` (a zoo model, an export, or a real checkpoint), or a hub id `ORG/NAME` in
  the Hugging Face cache — evaluated with the default recipe's rewards unless overrides say otherwise.
The report goes to `eval/<name>/report.json` (greedy metrics, settings, a few completions); for box answers a
picture, `eval/<name>/boxes.png`, shows ground-truth (green) and predicted (red) boxes on the first images. With
`k`, each prompt is also sampled k times at `temperature`: avg@k per reward, pass@k and pass@1 (overall and per
task) go to the report's `sampled` block, and the pass@j curve (j = 1 … k) to `eval/<name>/pass_at_k.png`.
Reward failures are shown on stderr and kept in full in `eval/<name>/reward_errors.log`. `data.eval` is
evaluated as given: the training data is not loaded (training alone drops held-out samples that share an image
with it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrl.cli.checks import load_config
from mmrl.train import checkpoint


class EvalError(RuntimeError):
    """SOURCE is not something mmrl can evaluate."""


def _to_stderr(message: str) -> None:
    print(f"mmrl: {message}", file=sys.stderr)


def resolve_source(source: str | Path, *,
                   log: Callable[[str], None] = _to_stderr) -> tuple[Path | None, Path | None, str | None]:
    """(config.yaml, checkpoint dir, model dir) for SOURCE; exactly what exists is filled in. A checkpoint is one
    that verifies (`checkpoint.resume_point` / `require_intact`, which raise CheckpointError otherwise); what was
    skipped or could not be verified goes to `log`."""
    src = Path(source)
    from mmrl.model.loading import is_hub_id

    if is_hub_id(str(source)):  # a model in the Hugging Face cache (`mmrl.model.loading.model_dir`)
        return None, None, str(source)
    if not src.exists() and not str(source).startswith("zoo:"):
        raise EvalError(f"{source}: no such run, checkpoint, model directory or hub id")
    if (src / "config.yaml").exists():  # a run directory
        ck, notes = checkpoint.resume_point(src / "checkpoints")
        for note in notes:
            log(note)
        if ck is None:
            raise EvalError(f"{src}: run directory has no complete checkpoint")
        return src / "config.yaml", ck, None
    if (src / checkpoint.STATE_FILE).exists():  # a checkpoint
        cfg = src.parent.parent / "config.yaml"
        if not cfg.exists():
            raise EvalError(f"{src}: checkpoint without its run's config.yaml at {cfg}")
        for note in checkpoint.require_intact(src):
            log(note)
        return cfg, src, None
    if str(source).startswith("zoo:") or (src / "config.json").exists():
        return None, None, str(source)
    raise EvalError(f"{source}: not a run directory, checkpoint (no {checkpoint.STATE_FILE}) or model (no config.json)")


def load_policy(source: str | Path, overrides: list[str] = (), *, log: Callable[[str], None] = _to_stderr):
    """(policy with SOURCE's weights, its run's config, the checkpoint or None), built as training builds them
    (`mmrl.train.build`) without loading training data; checkpoint notes go to `log`. Used by eval and export."""
    cfg_path, ck, model_dir = resolve_source(source, log=log)
    extra = [f"model.path={model_dir}"] if model_dir else []
    base = str(cfg_path) if cfg_path else None
    if base is None:
        from mmrl.cli.recipes import DEFAULT_RECIPE

        base = str(DEFAULT_RECIPE)
        extra += ["model.mode=full"]
    cfg = load_config(base, [*extra, "resume=none", "run.progress=false", *overrides])
    from mmrl.train.build import build_policy, load_weights

    policy = build_policy(cfg)
    if ck is not None:
        load_weights(policy, ck)
    return policy, cfg, ck


def evaluator(cfg, policy, errors_log: Path | None = None):
    """The held-out `Evaluator` of `cfg` (its `data.eval`, its run's rewards) for `policy`; reward failures are shown
    on stderr and, with `errors_log`, written there in full."""
    from mmrl.rewards.errors import ErrorReport
    from mmrl.train.build import build_engine, build_eval_data, build_rewards
    from mmrl.train.data import encode_samples
    from mmrl.train.evaluate import Evaluator
    from mmrl.train.scoring import Scorer, check_reward_columns
    from mmrl.train.progress import Progress

    terms, _ = build_rewards(cfg, ErrorReport(errors_log))
    samples, _ = build_eval_data(cfg)
    ev = cfg.data.eval
    check_reward_columns(terms, {f"data.eval ({ev.path or ev.task})": samples})
    progress = Progress()  # counts the samples skipped while encoding
    return Evaluator(cfg, engine=build_engine(cfg, policy), scorer=Scorer(terms, sum(s.steps for s in cfg.stages)),
                     encode=lambda batch: encode_samples(policy, batch, cfg.data, progress), samples=samples)


def run_eval(source: str, *, data: str | None = None, task: str | None = None, n: int | None = None,
             overrides: list[str] = (), out: str | None = None, k: int = 0, temperature: float = 1.0,
             correct: str | None = None) -> dict[str, Any]:
    over = list(overrides)
    if data:
        over.append(f"data.eval={{path: {json.dumps(str(Path(data).resolve()))}}}")
    elif task:
        over.append(f"data.eval={{task: {task}, n: {n or 200}, seed: 1}}")
    elif n:
        over.append(f"data.eval.n={n}")
    policy, cfg, ck = load_policy(source, over)
    name = Path(data).stem if data else (task or cfg.data.eval.task or "eval")
    root = Path(out) if out else (cfg.run_dir if ck is not None else Path("runs/eval")) / "eval" / name
    root.mkdir(parents=True, exist_ok=True)
    ev = evaluator(cfg, policy, errors_log=root / "reward_errors.log")
    metrics = ev.greedy(step=0)
    report = {"source": str(source), "checkpoint": str(ck) if ck else None, "metrics": metrics,
              "data": {"eval": vars(cfg.data.eval)}, "model": cfg.model.path}
    if any(isinstance(smp.answer, dict) and "boxes" in smp.answer for smp in ev.samples):
        from mmrl.train.plots import box_grid

        inputs = ev.inputs  # the encoded ones (a skipped sample has no completion)
        report["boxes_png"] = str(box_grid([p.sample for p in inputs], ev.texts,
                                           [p.answer_geometry for p in inputs], root / "boxes.png"))
    if any(t["calls"] for t in ev.trajectories):  # thinking with images: where the policy looked
        from mmrl.train.plots import trajectory_sheet

        report["trajectories_png"] = str(trajectory_sheet([p.sample for p in ev.inputs], ev.trajectories, ev.texts,
                                                          root / "trajectories.png",
                                                          views=[p.answer_geometry for p in ev.inputs]))
    if k:
        sampled, curve = ev.sampled(k, temperature=temperature, seed=cfg.trainer.seed, correct=correct)
        report["sampled"] = sampled
        from mmrl.train.plots import pass_curve

        report["pass_at_k_png"] = str(pass_curve(curve, root / "pass_at_k.png", title=f"{name}, T = {temperature:g}"))
    report["completions"] = [{"id": smp.id, "answer": smp.answer, "completion": t}
                             for smp, t in list(zip([p.sample for p in ev.inputs], ev.texts))[:8]]
    for row, traj in zip(report["completions"], ev.trajectories):
        row["trajectory"] = traj
    path = root / "report.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    report["path"] = str(path)
    return report
