r"""Metrics: one JSONL row per step (+ optional TensorBoard / wandb) and a progress bar.

Metric names are namespaced and stable:

| name | meaning |
|---|---|
| `train/step`, `train/stage` | global optimizer step; stage name |
| `reward/<name>/mean` | mean of one reward component over the step's completions where it applies |
| `reward/<name>/truncated`, `reward/<name>/parse_fail` | share of completions where an input cap engaged / nothing parsed (rewards that parse boxes, points or numbers) |
| `reward/<name>/missing` | share of the step's completions whose sample lacks the ground truth the reward scores against (`answer`, or a dataset field it requires); a source without it at all is an error at load |
| `reward/<name>/errors`, `reward/<name>/timeouts` | cumulative failed / timed-out calls of one reward (scored per its `on_error`) |
| `reward/<name>/gated`, `reward/<name>/timed_out`, `reward/<name>/<metric>` | share closed by its gate; share of per-answer checks abandoned at the time limit (`math`); what a TRL-style reward logged |
| `reward/total/mean`, `reward/total/std` | weighted total reward (over every generated completion, before group filters) |
| `actor/loss` | policy loss (aggregated, incl. KL term), the mean over the step's optimizer steps |
| `actor/kl` | token-mean KL estimate to the reference (when a KL term is in the loss) |
| `actor/kl_in_reward` | mean per-sequence KL penalty subtracted from the reward (`kl_placement: reward`) |
| `actor/masked_kl` | token-mean KL between the policy on the real and on the masked image (`masked_kl_coef` > 0) |
| `actor/rehearsal_div`, `actor/lp_reg_frac`, `actor/cov_selected_frac` | DPH-RL's f-divergence to π₀ on its samples; share of tokens Lp-Reg / Clip-Cov / KL-Cov acted on |
| `rollout/<pass>/<stat>`, `rollout/replayed_groups`, `rollout/replay_size` | extra rollout passes' counts (e.g. `rollout/rethink/accepted`); replayed groups and buffer size |
| `actor/ref_reset`, `actor/skipped` | 1 at a step that reset the reference / that trained on nothing (every group filtered) |
| `actor/clip_frac` | fraction of completion tokens where the clip was active |
| `actor/entropy` | token-mean entropy of the policy on its completions |
| `actor/grad_norm`, `actor/lr` | gradient norm before clipping; learning rate |
| `rollout/len_mean`, `rollout/truncated_frac` | completion length; share that hit `max_new_tokens` |
| `rollout/logprob_gap_mean`, `rollout/logprob_gap_max` | \|trainer − sampler\| log-prob of the sampled tokens before the first optimizer step (float rounding with `hf`; TIS corrects a real one) |
| `rollout/generated_groups`, `rollout/kept_groups` | prompt groups generated this step (refills included) / kept by `group_filter` |
| `adv/zero_frac` | share of completions with zero advantage (all-equal groups) |
| `sft/loss` | SFT negative log-likelihood per target token |
| `eval/<reward name>`, `eval/total` | held-out greedy means (e.g. `eval/accuracy`) |
| `perf/step_s`, `perf/rollout_s`, `perf/update_s`, `perf/tokens_per_s` | timing |
| `data/skipped` | bad samples skipped so far (`data.on_bad_sample: skip`) |
| `data/too_long` | prompts dropped so far for exceeding `data.max_prompt_tokens` (never truncated) |
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    def __init__(self, run_dir: Path, backends: list[str], total_steps: int, progress: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.sinks = []
        for name in backends:
            if name == "jsonl":
                continue
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise RuntimeError("run.backends: tensorboard needs `pip install mmrl[logging]`") from e
                self.sinks.append(("tb", SummaryWriter(str(run_dir / "tb"))))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError as e:
                    raise RuntimeError("run.backends: wandb needs `pip install mmrl[logging]`") from e
                self.sinks.append(("wandb", wandb.init(project="mmrl", dir=str(run_dir))))
            else:
                raise ValueError(f"run.backends: unknown backend {name!r} (valid: jsonl, tensorboard, wandb)")
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc="mmrl", dynamic_ncols=True, file=sys.stderr)

    def truncate_after(self, step: int, *, drop_events_at_step: bool = False) -> None:
        """On resume: drop rows of steps after the checkpoint (they will be recomputed identically), and
        event rows (`train/event`, e.g. the eval before RL) logged at the checkpoint's step if they will recur."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        keep = []
        for r in rows:
            row = json.loads(r)
            at = row.get("train/step", 0)
            if at < step or (at == step and not (drop_events_at_step and "train/event" in row)):
                keep.append(r)
        self.path.write_text("".join(r + "\n" for r in keep))
        if self.bar is not None:
            self.bar.update(step)

    def log(self, metrics: dict[str, Any], advance: bool = True) -> None:
        """Append one row; `advance=False` for rows that are not an optimizer step (e.g. eval before RL)."""
        row = {k: _clean(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        step = int(metrics.get("train/step", 0))
        for kind, sink in self.sinks:
            numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}
            if kind == "tb":
                for k, v in numeric.items():
                    sink.add_scalar(k, v, step)
            else:
                sink.log(numeric, step=step)
        if self.bar is not None:
            shown = {k.split("/", 1)[1][:14]: f"{v:.3g}" for k, v in row.items()
                     if k in ("reward/total/mean", "eval/accuracy", "actor/kl", "sft/loss") and v is not None}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1 if advance else 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for kind, sink in self.sinks:
            sink.close() if kind == "tb" else sink.finish()


class NullLogger:
    """What processes other than rank 0 log to: nothing."""

    def truncate_after(self, step: int, *, drop_events_at_step: bool = False) -> None:
        pass

    def log(self, metrics: dict[str, Any], advance: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
