"""The training loop: stages of SFT and RL steps, held-out evaluation on schedule, checkpoints.

The `Trainer` builds a run's parts (`mmrl.train.build`) and wires them into the two kinds of step:
- `RLStep` (`mmrl.train.rl_step`): rollout → extra passes → score → filter → advantages → replay fill → update;
- `SFTStep` (`mmrl.train.sft_step`): prompts → targets → NLL → optimizer step.
It keeps the stage loop, the evaluation cadence (`Evaluator`) and the checkpoints; it never branches on a
method's name. Dimension letters: B prompts, G group size, N = B·G completions, C completion tokens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from mmrl import config as config_mod
from mmrl.config import Config, StageConfig
from mmrl.model.sharding import Root
from mmrl.rewards.errors import ErrorReport
from mmrl.rollout.rehearsal import from_state as rehearsal_from_state
from mmrl.rollout.types import row_seed
from mmrl.train import checkpoint, distributed
from mmrl.train.build import build_engine, build_policy, build_rewards, load_weights
from mmrl.train.data import Batches, TrainData
from mmrl.train.evaluate import Evaluator
from mmrl.train.metrics import MetricsLogger, NullLogger
from mmrl.train.optim import Optimization
from mmrl.train.progress import Progress
from mmrl.train.rl_step import RLStep
from mmrl.train.rundir import Interrupted, check_run_dir, interruptible, remove_run, supersede_after
from mmrl.train.scoring import Scorer
from mmrl.train.sft_step import SFTStep


class Trainer:
    """A run: its data and rewards (loaded and checked before the model), the policy, the engine, the steps."""

    def __init__(self, cfg: Config, *, log=print):
        self.cfg = cfg
        self.log = log
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.progress = Progress()
        # reward failures: the first few of each reward through self.log (a no-op off rank 0), every one in the file
        self.reward_errors = ErrorReport(self.run_dir / "reward_errors.log", log=lambda line: self.log(line))
        self.base_terms, self.stage_terms = build_rewards(cfg, self.reward_errors)
        self.data = TrainData(cfg, base_terms=self.base_terms, stage_terms=self.stage_terms, log=log)
        self.progress.skipped = self.data.skipped
        self.policy = build_policy(cfg)
        self.runtime = self.policy.runtime
        self.engine = build_engine(cfg, self.policy)
        if self.dist is not None:
            self._shard(cfg)
        self.optim = Optimization(self.policy, cfg.trainer)
        self.batches = Batches(cfg, self.data, self.policy, self.progress)
        max_steps = sum(s.steps for s in cfg.stages)
        self.scorers = {i: Scorer(terms, max_steps) for i, terms in self.stage_terms.items()}
        self.base_scorer = Scorer(self.base_terms, max_steps)
        self.rl = RLStep(cfg, policy=self.policy, engine=self.engine, scorer=self.base_scorer, batches=self.batches,
                         optim=self.optim, progress=self.progress, run_dir=self.run_dir if self.main else None,
                         log=lambda *a, **k: self.log(*a, **k))
        self.sft = SFTStep(cfg, policy=self.policy, batches=self.batches, optim=self.optim, progress=self.progress,
                           tools=self.engine if cfg.rollout.tools else None)
        eval_scorer = Scorer(self.base_terms, max_steps)  # held-out metrics: always the run's rewards, its own scorer
        self.evaluator = Evaluator(cfg, engine=self.engine, scorer=eval_scorer, encode=self.batches.encode,
                                   samples=self.data.eval)
        self.summary: dict[str, Any] = {}

    def _shard(self, cfg: Config) -> None:
        """Across processes: FSDP2 over the policy, generation split by prompt, logs from rank 0 only."""
        first_rl = next((i for i, s in enumerate(cfg.stages) if s.kind == "rl"), len(cfg.stages))
        lora_merges = cfg.model.mode == "lora" and (
            cfg.algorithm.ref_reset_every or any(s.kind == "sft" for s in cfg.stages[:first_rl]))
        if lora_merges:
            raise config_mod.ConfigError("model.mode=lora with an SFT stage before RL (or ref_reset_every) merges "
                                         "adapters between stages, which is not supported across processes yet")
        if cfg.rollout.engine != "hf":
            raise config_mod.ConfigError(f"rollout.engine={cfg.rollout.engine} is not supported across processes yet")
        if cfg.rollout.tools:
            raise config_mod.ConfigError("rollout.tools: multi-turn rollouts are not supported across processes yet")
        d = cfg.distributed
        self.policy.shard(needs_reference=cfg.algorithm.kl_coef > 0, mixed_precision=d.mixed_precision,
                          reshard_after_forward=d.reshard_after_forward)
        self.engine = distributed.ShardedEngine(self.engine, self.dist, self.runtime.device)
        if not self.dist.main:
            self.log = lambda *a, **k: None

    @property
    def dist(self):
        """`mmrl.runtime.Dist` when several processes take part (the runtime's), else None."""
        return self.runtime.dist

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory (rank 0, or the only process)."""
        return self.runtime.main

    def enter_stage(self, si: int) -> None:
        """Stage `si`'s training data and rewards (its own, or the run's)."""
        self.data.enter(si)
        self.rl.scorer = self.scorers.get(si, self.base_scorer)

    def begin_rl(self) -> None:
        """The RL boundary: the reference is frozen (LoRA: the SFT adapter merged first); with rehearsal, π₀'s
        perfect samples are kept. The stage loop then starts a fresh optimizer."""
        cfg = self.cfg
        torch.manual_seed(row_seed(cfg.trainer.seed, "rl-begin"))
        self.policy.begin_rl(needs_reference=cfg.algorithm.kl_coef > 0, adapter_trained=self.progress.adapter_trained)
        self.progress.rl_started = True
        self.progress.adapter_trained = False
        if cfg.algorithm.rehearsal_coef > 0:
            self.rl.build_rehearsal()

    def reset_reference(self, stage: StageConfig) -> None:
        """π_ref ← π_θ and a fresh optimizer state, the LR schedule where it was (ProRL's hard reset)."""
        self.policy.reset_reference()
        self.optim.restart(stage)

    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out split; `eval/<reward name>` means and `eval/total`."""
        return self.evaluator.greedy(self.progress.step)

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        if self.dist is not None:
            return self._save_sharded()
        p = self.policy
        ref = None
        if p.reference is not None:
            ref = {k: v for k, v in p.reference.state_dict().items()}
        state = self._state()
        return checkpoint.save(
            self.ckpt_dir, self.progress.step, weights=p.state_for_checkpoint(),
            optimizer=self.optim.state_dict()[0], state=state,
            merged=p.merged_adapters, reference=ref, keep=self.cfg.trainer.keep_checkpoints,
        )

    def _elapsed(self) -> float:
        """Seconds of training in this run so far, the segments before a resume included."""
        base, start = getattr(self, "_wall", (self.summary.get("wall_s", 0.0), time.perf_counter()))
        return base + time.perf_counter() - start

    def _state(self) -> dict[str, Any]:
        self.summary["wall_s"] = self._elapsed()
        return {"progress": vars(self.progress), "summary": self.summary,
                "scheduler": self.optim.state_dict()[1],
                "rehearsal": self.rl.rehearsal.state() if self.rl.rehearsal is not None else None}

    def _save_sharded(self) -> Path:
        """Across processes: each writes its shards of the weights and optimizer (torch.distributed.checkpoint);
        rank 0 adds the trainer state and moves the folder into place."""
        p = self.policy
        extra = {"reference": p.ref_root} if p.ref_root is not None and self.progress.rl_started else {}
        return checkpoint.save_sharded(
            self.ckpt_dir, self.progress.step, root_module=p.root, optimizer=self.optim.optimizer, extra_models=extra,
            state=self._state(), main=self.dist.main, barrier=self.dist.barrier,
            keep=self.cfg.trainer.keep_checkpoints)

    def restore(self, path: Path) -> None:
        """Resume: weights, reference, optimizer, scheduler, RNG and progress from checkpoint `path`."""
        if checkpoint.is_sharded(path):
            return self._restore_sharded(path)
        if self.dist is not None:
            raise ValueError(f"{path} was written by one process; resuming it across processes is not supported yet")
        ck = load_weights(self.policy, path)
        state = ck["state"]
        self.progress.load(state["progress"])
        self._restore_rehearsal(state)
        self.summary = state.get("summary", {})
        stage = self.cfg.stages[min(self.progress.stage, len(self.cfg.stages) - 1)]
        if self.progress.rl_started and self.policy.cfg.mode == "full" and self.cfg.algorithm.kl_coef > 0:
            if ck["reference"] is None:
                raise FileNotFoundError(f"{path}: the KL reference is missing from the checkpoint")
            self.policy.begin_rl(needs_reference=True, adapter_trained=False)
            self.policy.reference.load_state_dict(ck["reference"])
        self.optim.new(stage)
        if ck["optimizer"] is not None:
            self.optim.optimizer.load_state_dict(ck["optimizer"])
        if state.get("scheduler"):
            self.optim.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng(ck["rng"])
        self.log(f"resumed from {path} (step {self.progress.step}, stage {self.progress.stage})")

    def _restore_sharded(self, path: Path) -> None:
        """Resume from a checkpoint written across processes, with this run's number of processes (one included)."""
        state = checkpoint.read_state(path)
        self.progress.load(state["progress"])
        self.summary = state.get("summary", {})
        self._restore_rehearsal(state)
        p, extra = self.policy, {}
        if self.progress.rl_started and p.cfg.mode == "full" and self.cfg.algorithm.kl_coef > 0:
            if p.reference is None:
                p.begin_rl(needs_reference=True, adapter_trained=False)
            extra["reference"] = p.ref_root or Root(p.reference)
        self.optim.new(self.cfg.stages[min(self.progress.stage, len(self.cfg.stages) - 1)])
        ck = checkpoint.load_sharded(path, p.root or Root(p.hf), optimizer=self.optim.optimizer,
                                     extra_models=extra)
        if state.get("scheduler"):
            self.optim.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng(ck["rng"])
        self.log(f"resumed from {path} (step {self.progress.step}, stage {self.progress.stage}, sharded)")

    def _restore_rehearsal(self, state: dict[str, Any]) -> None:
        if state.get("rehearsal"):
            by_id = {smp.id: smp for smp in self.data.every_train_sample()}
            self.rl.rehearsal = rehearsal_from_state(
                state["rehearsal"], lambda ids: [self.policy.encode(by_id[i]) for i in ids], self.policy.pad_id,
                self.runtime.device)

    def _resume_choice(self) -> Path | None:
        """The checkpoint to resume from: `resume=auto` takes the newest one that verifies (naming those it skips),
        a named one must verify. Rank 0 checks (checksums read every byte once) and tells the others; a
        CheckpointError (none intact) is raised on every rank."""
        cfg = self.cfg
        if cfg.resume == "none":
            return None

        def choose() -> tuple[Path | None, list[str]]:
            if cfg.resume == "auto":
                return checkpoint.resume_point(self.ckpt_dir)
            return Path(cfg.resume), checkpoint.require_intact(Path(cfg.resume))

        try:
            choice = choose() if self.main else None
        except checkpoint.CheckpointError as e:
            choice = e
        if self.dist is not None:
            choice = self.dist.gather(choice)[0]
        if isinstance(choice, Exception):
            raise choice
        path, notes = choice
        for note in notes:
            self.log(f"resume: {note}")
        return path

    # -------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        check_run_dir(cfg)  # (`mmrl train` checks it before building the model too)
        resume_from = self._resume_choice()
        if self.main:  # one writer of the run directory
            if cfg.resume == "none":  # a fresh run (check_run_dir allowed it): nothing of an earlier one stays
                gone = remove_run(self.run_dir)
                if gone and cfg.run.overwrite:
                    self.log(f"run.overwrite: removed the previous run's {', '.join(gone)} from {self.run_dir}")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_mod.dump(cfg, self.run_dir / "config.yaml")
            checkpoint.clean_partial(self.ckpt_dir)
            if resume_from is not None:
                supersede_after(self.ckpt_dir, resume_from, self.log)
        if self.dist is not None:
            self.dist.barrier()
        total = sum(s.steps for s in cfg.stages)
        logger = MetricsLogger(self.run_dir, cfg.run.backends, total, progress=cfg.run.progress) if self.main \
            else NullLogger()
        if resume_from is not None:
            self.restore(resume_from)
            logger.truncate_after(self.progress.step, drop_events_at_step=not self.progress.rl_started)
            if self.main:
                self._truncate_rollouts(self.progress.step)
        self.log(f"mmrl: {self.policy.describe()} → {self.run_dir}")
        self._wall = (self.summary.get("wall_s", 0.0), time.perf_counter())  # the resumed run's time + this one's
        self._last_save = time.perf_counter()
        try:
            with interruptible() as stop:
                self._stop = stop
                self._run_stages(logger)
        finally:
            logger.close()
        self.summary["wall_s"] = self._elapsed()
        self.summary["runtime"] = self._where()
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=1))
            from mmrl.train.plots import plot_run

            plot_run(self.run_dir)
        return self.summary

    def _where(self) -> dict[str, Any]:
        """Where this run computed: the runtime's device and processes, and where the weights actually are."""
        rt = self.runtime
        return {"device": str(rt.device), "describe": rt.describe(), "processes": rt.world,
                "backend": rt.dist.backend if rt.dist is not None else None,
                "param_devices": sorted({str(p.device) for p in self.policy.model.parameters()}),
                "torch": torch.__version__, "cuda": torch.version.cuda}

    def _truncate_rollouts(self, step: int) -> None:
        path = self.run_dir / "rollouts.jsonl"
        if path.exists():
            rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r)["train/step"] < step]
            path.write_text("".join(r + "\n" for r in rows))

    def _run_stages(self, logger: MetricsLogger) -> None:
        cfg = self.cfg
        rl_stages = [i for i, s in enumerate(cfg.stages) if s.kind == "rl"]
        for si in range(self.progress.stage, len(cfg.stages)):
            stage = cfg.stages[si]
            self.enter_stage(si)
            fresh_stage = self.progress.stage != si or self.optim.optimizer is None
            if self.progress.stage != si:
                self.progress.stage, self.progress.stage_step = si, 0
            if stage.kind == "rl" and not self.progress.rl_started:
                self.begin_rl()
                fresh_stage = True
                self.summary["eval_before"] = self.evaluate()
                self.log(f"eval before RL: {self._fmt(self.summary['eval_before'])}")
                logger.log({"train/step": self.progress.step, "train/event": "eval_before", **self.summary["eval_before"]},
                           advance=False)
            if fresh_stage:
                self.optim.new(stage)
            while self.progress.stage_step < stage.steps:
                metrics = self.rl.run() if stage.kind == "rl" else self.sft.run(stage)
                self.progress.stage_step += 1
                self.progress.step += 1
                reset = cfg.algorithm.ref_reset_every
                if stage.kind == "rl" and reset and self.progress.stage_step % reset == 0:
                    self.reset_reference(stage)
                    metrics["actor/ref_reset"] = 1.0
                metrics.update({"train/step": self.progress.step, "train/stage": stage.name,
                                "actor/lr": self.optim.lr, "data/skipped": self.progress.skipped,
                                "data/too_long": self.progress.too_long})
                last_rl = si == rl_stages[-1] if rl_stages else False
                done_stage = self.progress.stage_step == stage.steps
                every = cfg.trainer.eval_every
                if stage.kind == "rl" and every and self.progress.stage_step % every == 0 and not (done_stage and last_rl):
                    metrics.update(self.evaluate())
                if done_stage and last_rl:
                    self.summary["eval_after"] = self.evaluate()
                    metrics.update(self.summary["eval_after"])
                    self.log(f"eval after RL: {self._fmt(self.summary['eval_after'])}")
                logger.log(metrics)
                stop, due = self._after_step(done_stage)
                if due or stop:
                    self.save_checkpoint()
                    self._last_save = time.perf_counter()
                if stop:
                    raise Interrupted(self.progress.step, checkpoint.latest(self.ckpt_dir))
        if "eval_after" not in self.summary:  # SFT-only runs still report held-out metrics
            self.summary["eval_after"] = self.evaluate()

    def _after_step(self, done_stage: bool) -> tuple[bool, bool]:
        """(stop: Ctrl-C was pressed, checkpoint due: every `checkpoint_every` steps, every `checkpoint_minutes`,
        at the end of a stage). Rank 0's clock and any rank's Ctrl-C decide for all processes."""
        t = self.cfg.trainer
        due = done_stage or bool(t.checkpoint_every and self.progress.step % t.checkpoint_every == 0)
        timed = bool(t.checkpoint_minutes) and time.perf_counter() - self._last_save >= 60 * t.checkpoint_minutes
        stop = self._stop.is_set()
        if self.dist is not None:
            votes = self.dist.gather((stop, timed))
            stop, timed = any(v[0] for v in votes), votes[0][1]
        return stop, due or timed

    @staticmethod
    def _fmt(metrics: dict[str, float]) -> str:
        return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
