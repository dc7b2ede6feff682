"""Held-out evaluation: greedy decoding on `data.eval`, scored with the run's rewards (never a stage's own), and
k samples per prompt for avg@k / pass@k. Used by the training loop and by `mmrl eval`."""

from __future__ import annotations

import math

import torch

from mmrl.config import Config
from mmrl.datasets.sample import Sample
from mmrl.model.prompts import PromptInputs
from mmrl.rollout import Rollouts, SamplingParams
from mmrl.rollout.tool_engine import trajectory_metrics
from mmrl.train.scoring import Scorer


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


class Evaluator:
    """Evaluates the policy behind `engine` on `samples`, encoded once by `encode` (bad ones skipped or raised as
    `data.on_bad_sample` says); `texts` holds the last greedy completions, aligned with `inputs`."""

    def __init__(self, cfg: Config, *, engine, scorer: Scorer, encode, samples: list[Sample]):
        self.cfg, self.engine, self.scorer, self.encode, self.samples = cfg, engine, scorer, encode, samples
        self._inputs: list[PromptInputs] | None = None
        self.texts: list[str] = []
        self.trajectories: list[dict] = []  # with tools: the last greedy trajectories (`trajectory` column)

    @property
    def inputs(self) -> list[PromptInputs]:
        if self._inputs is None:
            self._inputs = self.encode(self.samples)
        return self._inputs

    def _chunks(self, n: int, params: SamplingParams, step: int):
        """(prompts, scored rollouts) of `n` completions per prompt, `trainer.eval_batch` prompts at a time."""
        inputs, size = self.inputs, self.cfg.trainer.eval_batch
        for i in range(0, len(inputs), size):
            chunk = inputs[i : i + size]
            ro: Rollouts = self.engine.generate(chunk, n, params, batch_prompts=self.cfg.rollout.batch_prompts)
            yield chunk, self.scorer.score(ro, chunk, step)

    @torch.no_grad()
    def greedy(self, step: int) -> dict[str, float]:
        """Greedy decoding: `eval/<reward name>` means over the completions a reward applies to, `eval/total`,
        `eval/n`; with tools, also the trajectories' turns, tool use and finish reasons (`trajectory_metrics`)."""
        params = SamplingParams.of(self.cfg.rollout, seed=self.cfg.trainer.seed, step=step, greedy=True)
        texts, components, totals, trajectories, reasons = [], {}, [], [], []
        for _, ro in self._chunks(1, params, step):
            texts += ro.texts
            totals += ro.total.tolist()
            trajectories += ro.columns.get("trajectory", [])
            reasons += ro.finish_reasons
            for k, v in ro.rewards.items():
                components.setdefault(k, []).extend(v)
        out = {}
        for k, vals in components.items():
            vals = [v for v in vals if v is not None]
            if vals:
                out[f"eval/{k}"] = sum(vals) / len(vals)
        out["eval/total"] = sum(totals) / len(totals)
        out["eval/n"] = len(self.inputs)
        if trajectories:  # multi-turn rollouts (`rollout.tools`): turns, tool use, finish reasons
            out.update(trajectory_metrics(trajectories, reasons, prefix="eval/"))
        self.texts, self.trajectories = texts, trajectories
        return out

    @torch.no_grad()
    def sampled(self, k: int, *, temperature: float, seed: int = 0, correct: str | None = None,
                step: int = 0) -> tuple[dict[str, float], dict[int, float]]:
        """avg@k and pass@k of the held-out prompts with k samples each at `temperature` (seeded per prompt).

        A completion is correct when the total reward reaches `algorithm.correct_threshold` (as in training), or —
        with `correct: NAME` — when reward NAME does. Returns (metrics, the pass@j curve for j = 1 … k):
        `avg@k/<reward>` (mean over every sample), `pass@k`, `pass@1` (unbiased, = mean accuracy), and the same per
        `Sample.task` as `<task>/pass@k` and `<task>/avg@k/total` when the data mixes tasks. `step`: the training
        step rewards see (`trainer_state`).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        r, threshold = self.cfg.rollout, self.cfg.algorithm.correct_threshold
        params = SamplingParams(temperature=temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens, seed=seed, step=-1)
        values: dict[str, list[float]] = {}
        correct_counts: list[int] = []
        for chunk, ro in self._chunks(k, params, step):
            if correct is not None and correct not in ro.rewards:
                raise ValueError(f"correct={correct!r} is not one of the rewards ({', '.join(ro.rewards)})")
            judged = ro.total.tolist() if correct is None else [0.0 if v is None else v for v in ro.rewards[correct]]
            for g in range(len(chunk)):
                correct_counts.append(sum(v >= threshold for v in judged[g * k : (g + 1) * k]))
            values.setdefault("total", []).extend(ro.total.tolist())
            for name, vals in ro.rewards.items():
                values.setdefault(name, []).extend(v for v in vals if v is not None)
        out = {f"avg@{k}/{name}": sum(v) / len(v) for name, v in values.items() if v}
        curve = {j: sum(pass_at_k(k, c, j) for c in correct_counts) / len(correct_counts) for j in range(1, k + 1)}
        out.update({f"pass@{k}": curve[k], "pass@1": curve[1], "n_prompts": len(self.inputs), "k": k,
                    "temperature": temperature})
        tasks = [p.sample.task or "-" for p in self.inputs]
        if len(set(tasks)) > 1:
            for task in sorted(set(tasks)):
                rows = [j for j, t in enumerate(tasks) if t == task]
                out[f"{task}/pass@{k}"] = sum(pass_at_k(k, correct_counts[j], k) for j in rows) / len(rows)
                totals = [values["total"][j * k + g] for j in rows for g in range(k)]
                out[f"{task}/avg@{k}/total"] = sum(totals) / len(totals)
        return out, curve
