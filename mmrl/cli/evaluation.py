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
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrl import config
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


def load_trainer(source: str | Path, overrides: list[str] = (), *, build: bool = True,
                 log: Callable[[str], None] = _to_stderr):
    """A Trainer whose policy carries SOURCE's weights (used by eval and export); checkpoint notes go to `log`."""
    cfg_path, ck, model_dir = resolve_source(source, log=log)
    extra = [f"model.path={model_dir}"] if model_dir else []
    base = str(cfg_path) if cfg_path else None
    if base is None:
        from mmrl.cli.recipes import DEFAULT_RECIPE

        base = str(DEFAULT_RECIPE)
        extra += ["model.mode=full"]
    cfg = config.load(base, [*extra, "resume=none", "run.progress=false", *overrides])
    from mmrl.train.trainer import Trainer

    trainer = Trainer(cfg, log=lambda *a: None)
    if ck is not None:
        trainer.load_weights(ck)
    return trainer, cfg, ck


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k) / C(n, k) (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code", arXiv:2107.03374).

    >>> pass_at_k(4, 0, 2), pass_at_k(4, 4, 1), round(pass_at_k(4, 1, 2), 4)
    (0.0, 1.0, 0.5)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sampled_metrics(trainer, k: int, *, temperature: float, seed: int = 0,
                    correct: str | None = None) -> tuple[dict[str, float], dict[int, float]]:
    """avg@k and pass@k of the held-out prompts with k samples each at `temperature` (seeded per prompt).

    A completion is correct when the total reward reaches `algorithm.correct_threshold` (as in training), or —
    with `correct: NAME` — when reward NAME does. Returns (metrics, the pass@j curve for j = 1 … k): `avg@k/<reward>`
    (mean over every sample), `pass@k`, `pass@1` (unbiased, = mean accuracy), and the same per `Sample.task` as
    `<task>/pass@k` and `<task>/avg@k/total` when the data mixes tasks.
    """
    from mmrl.rollout import SamplingParams

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    inputs = trainer._eval_inputs if trainer._eval_inputs is not None else trainer.encode(trainer.eval_data)
    trainer._eval_inputs = inputs
    r, threshold = trainer.cfg.rollout, trainer.cfg.algorithm.correct_threshold
    params = SamplingParams(temperature=temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
                            seed=seed, step=-1)
    values: dict[str, list[float]] = {}
    correct_counts: list[int] = []
    for i in range(0, len(inputs), trainer.cfg.trainer.eval_batch):
        chunk = inputs[i : i + trainer.cfg.trainer.eval_batch]
        ro = trainer.engine.generate(chunk, k, params, batch_prompts=r.batch_prompts)
        trainer.score(ro, chunk, trainer.base_terms)
        if correct is not None and correct not in ro.rewards:
            raise ValueError(f"correct={correct!r} is not one of the rewards ({', '.join(ro.rewards)})")
        judged = ro.total.tolist() if correct is None else [v if v is not None else 0.0 for v in ro.rewards[correct]]
        for g in range(len(chunk)):
            correct_counts.append(sum(v >= threshold for v in judged[g * k : (g + 1) * k]))
        values.setdefault("total", []).extend(ro.total.tolist())
        for name, vals in ro.rewards.items():
            values.setdefault(name, []).extend(v for v in vals if v is not None)
    out = {f"avg@{k}/{name}": sum(v) / len(v) for name, v in values.items() if v}
    curve = {j: sum(pass_at_k(k, c, j) for c in correct_counts) / len(correct_counts) for j in range(1, k + 1)}
    out.update({f"pass@{k}": curve[k], "pass@1": curve[1], "n_prompts": len(inputs), "k": k,
                "temperature": temperature})
    tasks = [p.sample.task or "-" for p in inputs]
    if len(set(tasks)) > 1:
        for task in sorted(set(tasks)):
            rows = [j for j, t in enumerate(tasks) if t == task]
            out[f"{task}/pass@{k}"] = sum(pass_at_k(k, correct_counts[j], k) for j in rows) / len(rows)
            totals = [values["total"][j * k + g] for j in rows for g in range(k)]
            out[f"{task}/avg@{k}/total"] = sum(totals) / len(totals)
    return out, curve


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
    trainer, cfg, ck = load_trainer(source, over)
    metrics = trainer.evaluate()
    name = Path(data).stem if data else (task or cfg.data.eval.task or "eval")
    root = Path(out) if out else (cfg.run_dir if ck is not None else Path("runs/eval")) / "eval" / name
    root.mkdir(parents=True, exist_ok=True)
    report = {"source": str(source), "checkpoint": str(ck) if ck else None, "metrics": metrics,
              "data": {"eval": vars(cfg.data.eval)}, "model": cfg.model.path}
    if any(isinstance(smp.answer, dict) and "boxes" in smp.answer for smp in trainer.eval_data):
        from mmrl.train.plots import box_grid

        inputs = trainer._eval_inputs  # the encoded ones (a skipped sample has no completion)
        report["boxes_png"] = str(box_grid([p.sample for p in inputs], trainer.last_eval_texts,
                                           [p.answer_geometry for p in inputs], root / "boxes.png"))
    if k:
        sampled, curve = sampled_metrics(trainer, k, temperature=temperature, seed=cfg.trainer.seed, correct=correct)
        report["sampled"] = sampled
        from mmrl.train.plots import pass_curve

        report["pass_at_k_png"] = str(pass_curve(curve, root / "pass_at_k.png", title=f"{name}, T = {temperature:g}"))
    report["completions"] = [{"id": smp.id, "answer": smp.answer, "completion": t}
                             for smp, t in list(zip([p.sample for p in trainer._eval_inputs], trainer.last_eval_texts))[:8]]
    path = root / "report.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    report["path"] = str(path)
    return report
