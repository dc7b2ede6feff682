"""The training loop: stages of SFT and RL steps, each step a sequence of named stages.

RL step:  sample prompts → encode (processor, once) → rollout → extra passes → score → filter → advantage
          → replay fill → update → log → checkpoint / eval   (the stages: `mmrl.train.rl_step.RLSteps`)
SFT step: sample prompts → encode → targets (true or random labels) → update (NLL) → log

The loop never branches on a method's name: every algorithm piece is looked up by name in `mmrl.algorithms`,
rewards in `mmrl.rewards`, extra passes in `mmrl.rollout.passes`. Dimension letters: B prompts, G group size,
N = B·G completions, C completion tokens, P prompt tokens.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmrl.model import zoo
from mmrl.train import checkpoint, distributed
from mmrl import config as config_mod
from mmrl.algorithms.prompts import PROMPT_WEIGHTS, mix_count, weighted_draw
from mmrl.config import Config, StageConfig
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.datasets.sources import drop_overlap, load_source
from mmrl.datasets.synthetic import target_problems
from mmrl.train.metrics import MetricsLogger, NullLogger
from mmrl.model.policy import Policy
from mmrl.model.prompts import PromptInputs
from mmrl.rewards.errors import ErrorReport
from mmrl.rewards.isolation import make_term
from mmrl.train.rl_step import RLSteps, check_reward_columns
from mmrl.train.rundir import Interrupted, check_run_dir, interruptible, remove_run, supersede_after
from mmrl.runtime import HOST, Runtime
from mmrl.rollout import make_engine
from mmrl.rollout.rehearsal import Rehearsal
from mmrl.rollout.rehearsal import from_state as rehearsal_from_state
from mmrl.rollout.replay import ReplayBuffer
from mmrl.rollout.types import row_seed


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def drop_thought(text: str) -> str:
    r"""The target with its reasoning replaced by an empty thought (TON, "Think or Not? Selective Reasoning via
    Reinforcement Learning for Vision-Language Models", arXiv:2505.16854): `<think>\n\n</think>` stands where
    the `<think>` block was, or is put first when there was none.

    >>> drop_thought("<think>it points up</think><answer>0</answer>"), drop_thought("<answer>0</answer>")
    ('<think>\n\n</think><answer>0</answer>', '<think>\n\n</think><answer>0</answer>')
    """
    empty = "<think>\n\n</think>"
    return _THINK.sub(empty, text, count=1) if _THINK.search(text) else empty + text


@dataclass
class Progress:
    """Where the run stands (saved in every checkpoint)."""

    stage: int = 0  # index into cfg.stages
    stage_step: int = 0  # optimizer steps done in this stage
    step: int = 0  # optimizer steps done in the whole run
    skipped: int = 0  # bad samples skipped so far
    too_long: int = 0  # prompts dropped for exceeding data.max_prompt_tokens
    rl_started: bool = False
    adapter_trained: bool = False  # lora: the current adapter has been trained (merge it at the RL boundary)
    prompt_accuracy: dict[str, float] = field(default_factory=dict)  # last group accuracy per prompt id


def batch_indices(num: int, batch: int, step: int, seed: int) -> list[int]:
    """Indices of step `step`'s batch: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    out = []
    pos = step * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, num)
        perm = torch.randperm(num, generator=torch.Generator().manual_seed(row_seed(seed, "data", epoch)), device=HOST)
        take = min(batch - len(out), num - offset)
        out.extend(perm[offset : offset + take].tolist())
        pos += take
    return out


class Trainer(RLSteps):
    def __init__(self, cfg: Config, *, log=print):
        self.cfg = cfg
        self.log = log
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.progress = Progress()
        self._pass_stats: dict[str, float] = {}
        self.replay = ReplayBuffer(cfg.algorithm.replay_capacity, cfg.algorithm.replay_alpha)
        self.rehearsal: Rehearsal | None = None  # π₀'s perfect samples (algorithm.rehearsal_coef > 0)
        self.mix_parts: list[list[Sample]] | None = None  # data.mix: each source's samples, for batching
        # reward failures: the first few of each reward through self.log (a no-op off rank 0), every one in the file
        self.reward_errors = ErrorReport(self.run_dir / "reward_errors.log", log=lambda line: self.log(line))
        self.base_terms = self.terms = self._terms(cfg.rewards, "rewards")
        self.train_data, skipped_train = self._load_split("train")
        self.eval_data, skipped_eval = self._load_split("eval")
        self.base_train = (self.train_data, self.mix_parts)
        # stages with their own data / rewards (e.g. perception RL → reasoning RL)
        self.stage_terms = {i: self._terms(s.rewards, f"stages[{i}].rewards")
                            for i, s in enumerate(cfg.stages) if s.rewards is not None}
        self.stage_train: dict[int, list[Sample]] = {}
        for i, s in enumerate(cfg.stages):
            if s.data is not None:
                self.stage_train[i], skipped = self._load_source(s.data, "train")
                skipped_train += skipped
        every_train = self.train_data + [x for samples in self.stage_train.values() for x in samples]
        self._check_data()  # before the model loads: SFT targets, reward columns per source
        self.progress.skipped = skipped_train + skipped_eval
        self.eval_data, overlap = drop_overlap(every_train, self.eval_data)
        if overlap:
            log(f"data.eval: dropped {overlap} held-out samples whose images also occur in training")
        if not self.eval_data:
            raise BadSampleError("data.eval", "every held-out sample also occurs in the training data")
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        torch.manual_seed(cfg.trainer.seed)
        zoo.resolve(cfg.model.path)  # build a zoo model first: under a process group transformers saves on rank 0 only
        self.runtime = Runtime.create(cfg.runtime.device, autocast=cfg.model.autocast)
        self.policy = Policy.load(cfg.model, cfg.kernels, self.runtime)
        self.engine = make_engine(cfg.rollout.engine, self.policy, cfg.rollout, cfg.data.video)
        if self.dist is not None:
            self._shard(cfg)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._eval_inputs: list[PromptInputs] | None = None
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

    def _terms(self, rewards, key: str) -> list:
        return [make_term(r.fn, name=r.name, weight=r.weight, kwargs=r.kwargs, on_error=r.on_error,
                          timeout_s=r.timeout_s, style=r.style, isolate=r.isolate, gate=r.gate, mode=r.mode,
                          gate_min=r.gate_min, gate_penalty=r.gate_penalty, workers=r.workers,
                          memory_mb=r.memory_mb, report=self.reward_errors, config_key=f"{key}[{i}]")
                for i, r in enumerate(rewards)]

    def stage_sources(self, si: int) -> dict[str, list[Sample]]:
        """Stage `si`'s training samples by source, named by config key and file or task (`data.train (x.parquet)`)."""
        stage, data = self.cfg.stages[si], self.cfg.data
        if stage.data is not None:
            return {f"stages[{si}].data ({stage.data.path or stage.data.task})": self.stage_train[si]}
        samples, parts = self.base_train
        if parts:
            return {f"data.mix[{j}] ({m.path or m.task})": part for j, (m, part) in enumerate(zip(data.mix, parts))}
        return {f"data.train ({data.train.path or data.train.task})": samples}

    def _check_data(self) -> None:
        """Each SFT stage has a target for every sample it trains on, and each reward finds the columns it scores
        against in every source it scores (its stage's training data; the run's rewards also data.eval)."""
        for si, stage in enumerate(self.cfg.stages):
            sources = self.stage_sources(si)
            if stage.kind == "sft":
                problems = target_problems(sources, stage.labels)
                if problems:
                    raise config_mod.ConfigError(*(f"stage {stage.name!r} (sft, labels: {stage.labels}): {p}"
                                                   for p in problems))
            else:
                terms = self.stage_terms.get(si, self.base_terms)
                check_reward_columns(terms, sources, where=f"stage {stage.name!r}: ")
        ev = self.cfg.data.eval
        check_reward_columns(self.base_terms, {f"data.eval ({ev.path or ev.task})": self.eval_data})

    def _every_train_sample(self) -> list[Sample]:
        return [*self.base_train[0], *(x for samples in self.stage_train.values() for x in samples)]

    def _enter_stage(self, si: int) -> None:
        """Stage `si`'s training data and reward terms (its own, or the run's)."""
        self.terms = self.stage_terms.get(si, self.base_terms)
        if si in self.stage_train:
            self.train_data, self.mix_parts = self.stage_train[si], None
        else:
            self.train_data, self.mix_parts = self.base_train

    # ------------------------------------------------------------------------------------------- data
    def _load_split(self, split: str) -> tuple[list[Sample], int]:
        if split == "train" and self.cfg.data.mix:  # several weighted sources: kept apart for batching
            parts = [self._load_source(m, split) for m in self.cfg.data.mix]
            self.mix_parts = [samples for samples, _ in parts]
            return [s for samples, _ in parts for s in samples], sum(k for _, k in parts)
        return self._load_source(getattr(self.cfg.data, split), split)

    def _load_source(self, src, split: str) -> tuple[list[Sample], int]:
        samples, skipped = load_source(
            task=src.task, path=src.path, n=src.n, seed=src.seed, split=split, kwargs=src.kwargs,
            on_bad_sample=self.cfg.data.on_bad_sample, format=src.format, fields=src.fields,
            image_root=src.image_root, template=src.template, system_prompt=src.system_prompt,
        )
        if not samples:
            raise BadSampleError(f"data.{split}", f"no usable samples in {src.path or src.task}")
        return samples, skipped

    def encode(self, samples: list[Sample]) -> list[PromptInputs]:
        """Process each prompt once; bad samples raise or, with `on_bad_sample: skip`, are counted and dropped."""
        out = []
        limit = self.cfg.data.max_prompt_tokens
        for s in samples:
            try:
                p = self.policy.encode(s, self.cfg.data.system_prompt, self.cfg.data.video)
            except BadSampleError:
                if self.cfg.data.on_bad_sample == "raise":
                    raise
                self.progress.skipped += 1
                continue
            if limit is not None and p.length > limit:  # dropped whole: truncating would cut vision tokens
                self.progress.too_long += 1
                continue
            out.append(p)
        if not out:
            raise BadSampleError(samples[0].id if samples else "?",
                                 "every sample of the batch was bad or longer than data.max_prompt_tokens")
        return out

    def _batch(self, size: int, refill: int = 0, weighted: bool = False) -> list[Sample]:
        """The step's prompts; refill k > 0 draws from a separate seeded stream (dynamic sampling). `weighted`
        (RL steps): a share `prompt_weight_mix` is drawn by `algorithm.prompt_weighting` instead."""
        a = self.cfg.algorithm
        seed = self.cfg.trainer.seed if refill == 0 else row_seed(self.cfg.trainer.seed, "refill", refill)
        if self.mix_parts:
            return self._mixed_batch(size, seed)
        k = mix_count(size, a.prompt_weight_mix) if weighted and a.prompt_weighting != "uniform" else 0
        idx = batch_indices(len(self.train_data), size - k, self.progress.step, seed)
        if k:
            seen = self.progress.prompt_accuracy
            acc = torch.tensor([seen.get(s.id, float("nan")) for s in self.train_data], device=HOST)  # [M]
            gen = torch.Generator().manual_seed(row_seed(seed, "weighted", self.progress.step))
            idx += weighted_draw(PROMPT_WEIGHTS.get(a.prompt_weighting)(acc), k, gen, exclude=set(idx))
        return [self.train_data[i] for i in idx]

    # ------------------------------------------------------------------------------------ optimisation
    def _mixed_batch(self, size: int, seed: int) -> list[Sample]:
        """`size` prompts split across the mixed sources by weight (largest remainder), each source drawn from its
        own seeded per-epoch stream, so a source's share does not depend on the others' sizes."""
        weights = [m.weight for m in self.cfg.data.mix]
        exact = [size * w / sum(weights) for w in weights]
        counts = [int(e) for e in exact]
        for j in sorted(range(len(exact)), key=lambda j: exact[j] - counts[j], reverse=True)[: size - sum(counts)]:
            counts[j] += 1
        out: list[Sample] = []
        for j, (part, k) in enumerate(zip(self.mix_parts, counts)):
            idx = batch_indices(len(part), k, self.progress.step, row_seed(seed, "mix", j)) if k else []
            out += [part[i] for i in idx]
        return out

    def _new_optimizer(self, stage: StageConfig) -> None:
        t = self.cfg.trainer
        lr = stage.lr if stage.lr is not None else t.lr
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=lr, betas=tuple(t.betas), weight_decay=t.weight_decay
        )
        total = max(stage.steps, 1)
        schedule = stage.lr_schedule or t.lr_schedule

        def factor(i: int) -> float:
            if i < t.warmup_steps:
                return (i + 1) / (t.warmup_steps + 1)
            frac = min((i - t.warmup_steps) / max(total - t.warmup_steps, 1), 1.0)
            if schedule == "linear":
                return 1.0 - (1.0 - t.min_lr_ratio) * frac
            if schedule == "cosine":
                import math

                return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
            return 1.0

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def reset_reference(self, stage: StageConfig) -> None:
        """π_ref ← π_θ and a fresh optimizer state, the LR schedule where it was (ProRL's hard reset)."""
        self.policy.reset_reference()
        schedule = self.scheduler.state_dict()
        self._new_optimizer(stage)
        self.scheduler.load_state_dict(schedule)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr

    def _optimizer_step(self, step_scheduler: bool = True) -> float:
        """Clip, step, zero; the LR schedule advances once per training step (`step_scheduler` on its last)."""
        params = self.policy.parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.trainer.grad_clip)
        self.optimizer.step()
        if step_scheduler:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return distributed.full_norm(grad_norm)

    # ---------------------------------------------------------------------------------------- SFT step
    def sft_targets(self, prompts: list[PromptInputs], stage: StageConfig) -> list[str]:
        from mmrl.datasets.synthetic import random_target_text, target_text

        out = []
        for p in prompts:
            geometry = p.answer_geometry
            rng = random.Random(row_seed(self.cfg.trainer.seed, "sft-label", self.progress.step, p.sample.id))
            if stage.labels == "random":
                text = random_target_text(p.sample, rng)
            elif isinstance(p.sample.meta.get("response"), str):  # a data set's own full response
                text = p.sample.meta["response"]
            else:
                text = target_text(p.sample, geometry)
            out.append(drop_thought(text) if rng.random() < stage.thought_dropout else text)
        return out

    def sft_step(self, stage: StageConfig) -> dict[str, Any]:
        t0 = time.perf_counter()
        prompts = self.encode(self._batch(self.cfg.trainer.sft_batch_size))
        texts = self.sft_targets(prompts, stage)
        tok = self.policy.tokenizer
        seqs = [tok(t, add_special_tokens=False)["input_ids"] + [self.policy.eos_id] for t in texts]
        width = max(len(s) for s in seqs)
        dev = self.runtime.device
        ids = torch.tensor([s + [self.policy.pad_id] * (width - len(s)) for s in seqs], device=dev)  # [B, C]
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=dev)  # [B, C]
        total = int(mask.sum())
        self.policy.train()
        loss_sum = 0.0
        rows = self.runtime.rows(list(range(len(prompts))))  # all, or this process's block (padded)
        for chunk in [rows[i : i + self.cfg.trainer.micro_batch_size]
                      for i in range(0, len(rows), self.cfg.trainer.micro_batch_size)]:
            idx = [0 if r is None else r for r in chunk]
            real = torch.tensor([[r is not None] for r in chunk], dtype=mask.dtype, device=dev)
            m = mask[idx] * real  # padding rows weigh nothing
            logp, _ = self.policy.completion_logprobs(self.policy.collate([prompts[i] for i in idx]), ids[idx], m)
            loss = -(logp * m).sum() / total
            loss.backward()
            loss_sum += float(loss.detach())
        loss_sum = self.runtime.sum({"loss": loss_sum})["loss"]
        grad_norm = self._optimizer_step()
        self.progress.adapter_trained = True
        return {"sft/loss": loss_sum, "actor/grad_norm": grad_norm, "perf/step_s": time.perf_counter() - t0}

    # ------------------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out split; `eval/<reward name>` means and `eval/total`."""
        if self._eval_inputs is None:
            self._eval_inputs = self.encode(self.eval_data)
        inputs = self._eval_inputs
        size = self.cfg.trainer.eval_batch
        texts, components, totals = [], {}, []
        for i in range(0, len(inputs), size):
            chunk = inputs[i : i + size]
            ro = self.rollout(chunk, 1, greedy=True)
            self.score(ro, chunk, self.base_terms)  # held-out metrics: always the run's rewards
            texts += ro.texts
            totals += ro.total.tolist()
            for k, v in ro.rewards.items():
                components.setdefault(k, []).extend(v)
        out = {}
        for k, vals in components.items():
            vals = [v for v in vals if v is not None]
            if vals:
                out[f"eval/{k}"] = sum(vals) / len(vals)
        out["eval/total"] = sum(totals) / len(totals)
        out["eval/n"] = len(inputs)
        self.last_eval_texts = texts  # aligned with self._eval_inputs (skipped samples have none)
        return out

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
            optimizer=self.optimizer.state_dict() if self.optimizer else None, state=state,
            merged=p.merged_adapters, reference=ref, keep=self.cfg.trainer.keep_checkpoints,
        )

    def _elapsed(self) -> float:
        """Seconds of training in this run so far, the segments before a resume included."""
        base, start = getattr(self, "_wall", (self.summary.get("wall_s", 0.0), time.perf_counter()))
        return base + time.perf_counter() - start

    def _state(self) -> dict[str, Any]:
        self.summary["wall_s"] = self._elapsed()
        return {"progress": vars(self.progress), "summary": self.summary,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "rehearsal": self.rehearsal.state() if self.rehearsal is not None else None}

    def _save_sharded(self) -> Path:
        """Across processes: each writes its shards of the weights and optimizer (torch.distributed.checkpoint);
        rank 0 adds the trainer state and moves the folder into place."""
        p = self.policy
        extra = {"reference": p.ref_root} if p.ref_root is not None and self.progress.rl_started else {}
        return checkpoint.save_sharded(
            self.ckpt_dir, self.progress.step, root_module=p.root, optimizer=self.optimizer, extra_models=extra,
            state=self._state(), main=self.dist.main, barrier=self.dist.barrier,
            keep=self.cfg.trainer.keep_checkpoints)

    def load_weights(self, path: Path) -> dict[str, Any]:
        """Put checkpoint `path`'s weights into the policy (replaying merged LoRA stages); return it."""
        if checkpoint.is_sharded(path):  # written across processes: read back into this policy's own layout
            return checkpoint.load_sharded(path, self.policy.root or distributed.Root(self.policy.hf))
        ck = checkpoint.load(path)
        if ck["merged"]:
            self.policy.replay_merged_adapters(ck["merged"])
        self.policy.load_checkpoint_state(ck["weights"])
        return ck

    def restore(self, path: Path) -> None:
        """Resume: weights, reference, optimizer, scheduler, RNG and progress from checkpoint `path`."""
        if checkpoint.is_sharded(path):
            return self._restore_sharded(path)
        if self.dist is not None:
            raise ValueError(f"{path} was written by one process; resuming it across processes is not supported yet")
        ck = self.load_weights(path)
        state = ck["state"]
        self.progress = Progress(**state["progress"])
        if state.get("rehearsal"):
            by_id = {smp.id: smp for smp in self._every_train_sample()}
            self.rehearsal = rehearsal_from_state(
                state["rehearsal"], lambda ids: [self.policy.encode(by_id[i]) for i in ids], self.policy.pad_id,
                self.runtime.device)
        self.summary = state.get("summary", {})
        stage = self.cfg.stages[min(self.progress.stage, len(self.cfg.stages) - 1)]
        if self.progress.rl_started and self.policy.cfg.mode == "full" and self.cfg.algorithm.kl_coef > 0:
            if ck["reference"] is None:
                raise FileNotFoundError(f"{path}: the KL reference is missing from the checkpoint")
            self.policy.begin_rl(needs_reference=True, adapter_trained=False)
            self.policy.reference.load_state_dict(ck["reference"])
        self._new_optimizer(stage)
        if ck["optimizer"] is not None:
            self.optimizer.load_state_dict(ck["optimizer"])
        if state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng(ck["rng"])
        self.log(f"resumed from {path} (step {self.progress.step}, stage {self.progress.stage})")

    def _restore_sharded(self, path: Path) -> None:
        """Resume from a checkpoint written across processes, with this run's number of processes (one included)."""
        state = checkpoint.read_state(path)
        self.progress = Progress(**state["progress"])
        self.summary = state.get("summary", {})
        if state.get("rehearsal"):
            by_id = {smp.id: smp for smp in self._every_train_sample()}
            self.rehearsal = rehearsal_from_state(
                state["rehearsal"], lambda ids: [self.policy.encode(by_id[i]) for i in ids], self.policy.pad_id,
                self.runtime.device)
        p, extra = self.policy, {}
        if self.progress.rl_started and p.cfg.mode == "full" and self.cfg.algorithm.kl_coef > 0:
            if p.reference is None:
                p.begin_rl(needs_reference=True, adapter_trained=False)
            extra["reference"] = p.ref_root or distributed.Root(p.reference)
        self._new_optimizer(self.cfg.stages[min(self.progress.stage, len(self.cfg.stages) - 1)])
        ck = checkpoint.load_sharded(path, p.root or distributed.Root(p.hf), optimizer=self.optimizer,
                                     extra_models=extra)
        if state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng(ck["rng"])
        self.log(f"resumed from {path} (step {self.progress.step}, stage {self.progress.stage}, sharded)")

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
            self._enter_stage(si)
            fresh_stage = self.progress.stage != si or self.optimizer is None
            if self.progress.stage != si:
                self.progress.stage, self.progress.stage_step = si, 0
            if stage.kind == "rl" and not self.progress.rl_started:
                torch.manual_seed(row_seed(cfg.trainer.seed, "rl-begin"))
                self.policy.begin_rl(needs_reference=cfg.algorithm.kl_coef > 0,
                                     adapter_trained=self.progress.adapter_trained)
                self.progress.rl_started = True
                self.progress.adapter_trained = False
                fresh_stage = True
                if cfg.algorithm.rehearsal_coef > 0:
                    self.build_rehearsal()
                self.summary["eval_before"] = self.evaluate()
                self.log(f"eval before RL: {self._fmt(self.summary['eval_before'])}")
                logger.log({"train/step": self.progress.step, "train/event": "eval_before", **self.summary["eval_before"]},
                           advance=False)
            if fresh_stage:
                self._new_optimizer(stage)
            while self.progress.stage_step < stage.steps:
                metrics = self.rl_step() if stage.kind == "rl" else self.sft_step(stage)
                self.progress.stage_step += 1
                self.progress.step += 1
                reset = cfg.algorithm.ref_reset_every
                if stage.kind == "rl" and reset and self.progress.stage_step % reset == 0:
                    self.reset_reference(stage)
                    metrics["actor/ref_reset"] = 1.0
                metrics.update({"train/step": self.progress.step, "train/stage": stage.name,
                                "actor/lr": self.scheduler.get_last_lr()[0], "data/skipped": self.progress.skipped,
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
