"""The run's data: training and held-out samples per stage and source, the prompts of each step, encoded once.

`TrainData` loads every split before the model (so a bad file fails in seconds) and checks that each stage can
train on its sources: SFT targets exist, the rewards find their columns. `Batches` draws a step's samples —
seeded per-epoch permutations, weighted sources (`data.mix`), prompt weighting by past accuracy — and encodes
them through the policy's `PromptEncoder`, counting the bad and the too-long ones in the run's `Progress`.
"""

from __future__ import annotations

import torch

from mmrl.algorithms.prompts import PROMPT_WEIGHTS, mix_count, weighted_draw
from mmrl.config import Config, ConfigError, DataConfig
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.datasets.sources import drop_overlap, load_source
from mmrl.datasets.synthetic import target_problems
from mmrl.model.prompts import PromptInputs
from mmrl.rollout.types import row_seed
from mmrl.runtime import HOST
from mmrl.train.scoring import check_reward_columns


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


def load_samples(src, split: str, on_bad_sample: str) -> tuple[list[Sample], int]:
    """(samples of one configured source, how many bad ones were skipped); none usable is an error naming it."""
    samples, skipped = load_source(
        task=src.task, path=src.path, n=src.n, seed=src.seed, split=split, kwargs=src.kwargs,
        on_bad_sample=on_bad_sample, format=src.format, fields=src.fields, image_root=src.image_root,
        template=src.template, system_prompt=src.system_prompt,
    )
    if not samples:
        raise BadSampleError(f"data.{split}", f"no usable samples in {src.path or src.task}")
    return samples, skipped


def encode_samples(policy, samples: list[Sample], data: DataConfig, progress) -> list[PromptInputs]:
    """Process each prompt once; bad samples raise or, with `on_bad_sample: skip`, are counted in
    `progress.skipped` and dropped; prompts over `max_prompt_tokens` are counted in `progress.too_long`."""
    out = []
    for s in samples:
        try:
            p = policy.encode(s, data.system_prompt, data.video)
        except BadSampleError:
            if data.on_bad_sample == "raise":
                raise
            progress.skipped += 1
            continue
        if data.max_prompt_tokens is not None and p.length > data.max_prompt_tokens:  # whole: keep vision tokens
            progress.too_long += 1
            continue
        out.append(p)
    if not out:
        raise BadSampleError(samples[0].id if samples else "?",
                             "every sample of the batch was bad or longer than data.max_prompt_tokens")
    return out


class TrainData:
    """Every sample the run uses: `data.train` (or `data.mix`'s sources, kept apart for batching), each stage's own
    `data`, and `data.eval` without the samples whose images also occur in training; checked against the run's
    reward terms (`base_terms`) and each stage's own (`stage_terms`: {stage index: terms}). `skipped`: bad samples
    dropped while loading (`data.on_bad_sample: skip`)."""

    def __init__(self, cfg: Config, *, base_terms: list, stage_terms: dict[int, list], log=print):
        self.cfg = cfg
        self.mix_parts: list[list[Sample]] | None = None
        self.train, self.skipped = self._load_split("train")
        self.base = (self.train, self.mix_parts)
        self.eval, skipped = self._load_split("eval")
        self.skipped += skipped
        self.stage_train: dict[int, list[Sample]] = {}
        for i, s in enumerate(cfg.stages):
            if s.data is not None:
                self.stage_train[i], skipped = self._load_source(s.data, "train")
                self.skipped += skipped
        self.check(stage_terms, base_terms)  # before the model loads: SFT targets, reward columns
        self.eval, overlap = drop_overlap(self.every_train_sample(), self.eval)
        if overlap:
            log(f"data.eval: dropped {overlap} held-out samples whose images also occur in training")
        if not self.eval:
            raise BadSampleError("data.eval", "every held-out sample also occurs in the training data")

    def _load_split(self, split: str) -> tuple[list[Sample], int]:
        if split == "train" and self.cfg.data.mix:  # several weighted sources: kept apart for batching
            parts = [self._load_source(m, split) for m in self.cfg.data.mix]
            self.mix_parts = [samples for samples, _ in parts]
            return [s for samples, _ in parts for s in samples], sum(k for _, k in parts)
        return self._load_source(getattr(self.cfg.data, split), split)

    def _load_source(self, src, split: str) -> tuple[list[Sample], int]:
        return load_samples(src, split, self.cfg.data.on_bad_sample)

    def every_train_sample(self) -> list[Sample]:
        return [*self.base[0], *(x for samples in self.stage_train.values() for x in samples)]

    def sources(self, si: int) -> dict[str, list[Sample]]:
        """Stage `si`'s training samples by source, named by config key and file or task (`data.train (x.parquet)`)."""
        stage, data = self.cfg.stages[si], self.cfg.data
        if stage.data is not None:
            return {f"stages[{si}].data ({stage.data.path or stage.data.task})": self.stage_train[si]}
        samples, parts = self.base
        if parts:
            return {f"data.mix[{j}] ({m.path or m.task})": part for j, (m, part) in enumerate(zip(data.mix, parts))}
        return {f"data.train ({data.train.path or data.train.task})": samples}

    def check(self, stage_terms, base_terms) -> None:
        """Each SFT stage has a target for every sample it trains on, and each reward finds the columns it scores
        against in every source it scores (its stage's training data; the run's rewards also data.eval)."""
        for si, stage in enumerate(self.cfg.stages):
            sources = self.sources(si)
            if stage.kind == "sft":
                problems = target_problems(sources, stage.labels)
                if problems:
                    raise ConfigError(*(f"stage {stage.name!r} (sft, labels: {stage.labels}): {p}" for p in problems))
            else:
                check_reward_columns(stage_terms.get(si, base_terms), sources, where=f"stage {stage.name!r}: ")
        ev = self.cfg.data.eval
        check_reward_columns(base_terms, {f"data.eval ({ev.path or ev.task})": self.eval})

    def enter(self, si: int) -> None:
        """Stage `si`'s training data: its own, or the run's."""
        if si in self.stage_train:
            self.train, self.mix_parts = self.stage_train[si], None
        else:
            self.train, self.mix_parts = self.base


class Batches:
    """A step's prompts: drawn from `data`'s current stage and encoded by `policy`, bad and too-long samples counted
    in `progress` (`skipped`, `too_long`); RL steps weight part of the draw by `progress.prompt_accuracy`."""

    def __init__(self, cfg: Config, data: TrainData, policy, progress):
        self.cfg, self.data, self.policy, self.progress = cfg, data, policy, progress

    def draw(self, size: int, refill: int = 0, weighted: bool = False) -> list[PromptInputs]:
        """`size` prompts of the current step, encoded (see `samples`)."""
        return self.encode(self.samples(size, refill, weighted))

    def encode(self, samples: list[Sample]) -> list[PromptInputs]:
        return encode_samples(self.policy, samples, self.cfg.data, self.progress)

    def samples(self, size: int, refill: int = 0, weighted: bool = False) -> list[Sample]:
        """The step's samples; refill k > 0 draws from a separate seeded stream (dynamic sampling). `weighted`
        (RL steps): a share `prompt_weight_mix` is drawn by `algorithm.prompt_weighting` instead."""
        a, data, step = self.cfg.algorithm, self.data, self.progress.step
        seed = self.cfg.trainer.seed if refill == 0 else row_seed(self.cfg.trainer.seed, "refill", refill)
        if data.mix_parts:
            return self._mixed(size, seed)
        k = mix_count(size, a.prompt_weight_mix) if weighted and a.prompt_weighting != "uniform" else 0
        idx = batch_indices(len(data.train), size - k, step, seed)
        if k:
            seen = self.progress.prompt_accuracy
            acc = torch.tensor([seen.get(s.id, float("nan")) for s in data.train], device=HOST)  # [M]
            gen = torch.Generator().manual_seed(row_seed(seed, "weighted", step))
            idx += weighted_draw(PROMPT_WEIGHTS.get(a.prompt_weighting)(acc), k, gen, exclude=set(idx))
        return [data.train[i] for i in idx]

    def _mixed(self, size: int, seed: int) -> list[Sample]:
        """`size` prompts split across the mixed sources by weight (largest remainder), each source drawn from its
        own seeded per-epoch stream, so a source's share does not depend on the others' sizes."""
        weights = [m.weight for m in self.cfg.data.mix]
        exact = [size * w / sum(weights) for w in weights]
        counts = [int(e) for e in exact]
        for j in sorted(range(len(exact)), key=lambda j: exact[j] - counts[j], reverse=True)[: size - sum(counts)]:
            counts[j] += 1
        out: list[Sample] = []
        for j, (part, k) in enumerate(zip(self.data.mix_parts, counts)):
            idx = batch_indices(len(part), k, self.progress.step, row_seed(seed, "mix", j)) if k else []
            out += [part[i] for i in idx]
        return out
