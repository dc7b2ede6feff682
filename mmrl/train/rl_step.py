"""One RL step, read top to bottom in `RLStep.run`:

rollout (G completions per prompt) → extra passes (re-generations on perturbed inputs) → score (rewards)
→ filter (group filters, refills) → advantages (incl. KL in the reward) → replay fill → update → metrics.

The step works with explicit collaborators — the policy, a sampling engine, a `Scorer` (rewards), the prompt
`Batches`, the `Optimization` and the run's `Progress` — over records that each stage returns: `Rollouts` as
generated → scored `Rollouts` (`Scorer.score`) → a `TrainBatch` (advantages, π_old, replayed groups); no stage
changes a record it was given. Each piece is looked up by name (`mmrl.algorithms`, `mmrl.rewards`,
`mmrl.rollout.passes`); nothing here branches on a method's name. Dimension letters: B prompts, G group size,
N = B·G completions, C tokens.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmrl.algorithms import keep_groups, kl_penalty_per_sequence
from mmrl.algorithms.advantages import compute as compute_advantages
from mmrl.algorithms.advantages import of_config, turn_credit
from mmrl.algorithms.prompts import group_accuracy
from mmrl.config import Config
from mmrl.model.prompts import PromptInputs
from mmrl.rewards.compose import summarize
from mmrl.rollout import Rollouts, SamplingParams
from mmrl.rollout.passes import EXTRA_PASSES, PassContext
from mmrl.rollout.rehearsal import Rehearsal
from mmrl.rollout.tool_engine import trajectory_metrics
from mmrl.rollout.rehearsal import build as build_rehearsal
from mmrl.rollout.replay import ReplayBuffer
from mmrl.rollout.replay import merge as merge_replay
from mmrl.rollout.types import concat_rollouts, row_seed, select_groups
from mmrl.runtime import HOST
from mmrl.train.scoring import Scorer, usable
from mmrl.train.rows import logprob_pass
from mmrl.train.update import needs_old_logp, rl_update


def turn_capped(rollouts: Rollouts) -> torch.Tensor:
    """[N] bool: multi-turn rows that reached `rollout.max_turns` with a call still pending. `rollout.turn_cap: mask`
    keeps them out of the loss while their rewards stay in the group statistics — the over-turn masking of Mini-o3
    ("Mini-o3: Scaling Up Reasoning Patterns and Interaction Turns for Visual Search", arXiv:2509.07969), which
    neither rewards nor penalises a trajectory for running out of turns; `penalize` subtracts
    `rollout.turn_cap_penalty` from their reward instead."""
    return torch.tensor([r == "max_turns" for r in rollouts.finish_reasons], dtype=torch.bool,
                        device=rollouts.device)


def call_turns(rollouts: Rollouts) -> torch.Tensor:
    """[N, C] bool: the tokens of the turns that called a tool — every token before a trajectory's last observation,
    and all of a trajectory that ends on a call (turn cap) or made none (its one turn chose not to call). The rest
    is the final answer's turn. `algorithm.turn_rewards` credit the former only."""
    width = rollouts.completion_ids.shape[1]
    if rollouts.observed is None:
        return torch.ones(len(rollouts), width, dtype=torch.bool, device=rollouts.device)
    pos = torch.arange(width, device=rollouts.device)
    observation = rollouts.observed.present.bool() & ~rollouts.completion_mask.bool()  # [N, C]
    last = torch.where(observation, pos, -1).amax(dim=1)  # [N] the last observation token, -1: none
    answers = (last >= 0) & ~turn_capped(rollouts)  # [N] rows whose last turn answers
    return ~(answers.unsqueeze(1) & (pos.unsqueeze(0) > last.unsqueeze(1)))


@dataclass(frozen=True)
class Generated:
    """A step's generation: its prompts, the groups kept for training and every completion generated (dropped
    groups and refills included), with the extra passes' statistics."""

    prompts: list[PromptInputs]
    kept: Rollouts
    seen: Rollouts
    pass_stats: dict[str, float]


@dataclass(frozen=True)
class TrainBatch:
    """What the update trains on: prompts, scored rollouts with `advantages` (and `kl_weight`, `kl_penalty`), the
    π_old log-probs when they were computed before the update [N, C], and how many groups came from replay."""

    prompts: list[PromptInputs]
    rollouts: Rollouts
    old_logp: torch.Tensor | None = None
    replayed: int = 0


class RLStep:
    """One RL step over its collaborators. `replay` keeps informative groups for later steps
    (`algorithm.replay_capacity`); `rehearsal` holds π₀'s perfect samples once `build_rehearsal` ran."""

    def __init__(self, cfg: Config, *, policy, engine, scorer: Scorer, batches, optim, progress,
                 run_dir: Path | None = None, log=print):
        self.cfg, self.policy, self.engine, self.scorer = cfg, policy, engine, scorer
        self.batches, self.optim, self.progress, self.run_dir, self.log = batches, optim, progress, run_dir, log
        self.replay = ReplayBuffer(cfg.algorithm.replay_capacity, cfg.algorithm.replay_alpha)
        self.rehearsal: Rehearsal | None = None

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        gen = self.generate()  # rollout (+ extra passes) → score → filter
        t_roll = time.perf_counter()
        batch = self.advantages(TrainBatch(gen.prompts, gen.kept), gen.seen)
        batch = self.replay_fill(batch)
        metrics = self.update(batch)
        metrics.update(self.metrics(gen, batch, seconds=(t0, t_roll, time.perf_counter())))
        every = self.cfg.trainer.log_rollouts_every
        if self.run_dir is not None and every and self.progress.stage_step % every == 0:
            self.log_rollouts(batch)
        return metrics

    # ------------------------------------------------------------------------------------ rollout → filter
    def rollout(self, prompts: list[PromptInputs], n: int, *, greedy: bool = False) -> Rollouts:
        params = SamplingParams.of(self.cfg.rollout, seed=self.cfg.trainer.seed, step=self.progress.step,
                                   greedy=greedy)
        return self.engine.generate(prompts, n, params, batch_prompts=self.cfg.rollout.batch_prompts)

    def score(self, rollouts: Rollouts, prompts: list[PromptInputs]) -> Rollouts:
        scored = self.scorer.score(rollouts, prompts, self.progress.step)
        r = self.cfg.rollout
        capped = turn_capped(scored)
        if r.tools and r.turn_cap == "penalize" and capped.any():
            scored = dataclasses.replace(scored, total=scored.total - r.turn_cap_penalty * capped.to(scored.total))
        return scored

    def generate(self) -> Generated:
        """rollout → extra passes → score → filter. Groups the `algorithm.group_filter` drops are refilled with fresh
        prompts, up to `max_gen_batches` rollout batches; the step then trains on the kept groups (at most
        `prompts_per_step`), however few. Each prompt's group accuracy goes to `progress.prompt_accuracy` (for
        prompt weighting)."""
        a, want, g = self.cfg.algorithm, self.cfg.trainer.prompts_per_step, self.cfg.rollout.group_size
        prompts: list[PromptInputs] = []
        parts: list[Rollouts] = []
        kept: list[int] = []  # group indices into the concatenation
        stats: dict[str, float] = {}
        for k in range(a.max_gen_batches):
            batch = self.batches.draw(want, refill=k, weighted=True)
            ro, pass_stats = self.extra_passes(batch, self.rollout(batch, g))
            for key, value in pass_stats.items():  # summed over the refills
                stats[key] = stats.get(key, 0.0) + value
            ro = self.score(ro, batch)
            for p, acc in zip(batch, group_accuracy(ro.total, g, a.correct_threshold)):
                self.progress.prompt_accuracy[p.sample.id] = acc
            keep = keep_groups(ro.total, g, a.group_filter, correct_threshold=a.correct_threshold)  # [B]
            base = sum(len(p) for p in parts) // g
            kept += [base + i for i in range(len(keep)) if keep[i]]
            parts.append(ro)
            prompts += batch
            if len(kept) >= want:
                break
        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + len(p) // g)
        seen = dataclasses.replace(concat_rollouts(parts, offsets), parse_stats=parts[-1].parse_stats)
        return Generated(prompts, select_groups(seen, kept[:want]), seen, stats)

    def extra_passes(self, prompts: list[PromptInputs], rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
        """(the rollouts after `rollout.extra_passes`, in order; their statistics as `rollout/<kind>/<stat>`)."""
        r, stats = self.cfg.rollout, {}
        if not r.extra_passes:
            return rollouts, stats
        params = SamplingParams.of(r, seed=self.cfg.trainer.seed, step=self.progress.step)
        ctx = PassContext(self.policy, self.engine, params, r.batch_prompts, self.score,
                          self.cfg.algorithm.correct_threshold, self.cfg.data.video)
        for xp in r.extra_passes:
            rollouts, values = EXTRA_PASSES.get(xp.kind)(ctx, prompts, rollouts, **xp.kwargs)
            for key, value in values.items():
                stats[f"rollout/{xp.kind}/{key}"] = stats.get(f"rollout/{xp.kind}/{key}", 0.0) + value
        return rollouts, stats

    # ------------------------------------------------------------------------------ advantages → update
    def _logprobs(self, prompts, rollouts, model=None) -> torch.Tensor:
        return logprob_pass(self.policy, prompts, rollouts, micro=self.cfg.trainer.micro_batch_size,
                            temperature=self.cfg.rollout.temperature, model=model)

    def with_old_logprobs(self, batch: TrainBatch) -> TrainBatch:
        """The batch with π_old [N, C]: its completions' log-probs under the policy before this step's update. The
        one place π_old is computed, once per step, by the first stage that needs it: the KL in the reward, replay
        (fresh rows beside replayed ones) or an update of several optimizer steps (`needs_old_logp`). With a single
        step and none of those, the update uses sg[π_θ] itself (ratio 1) and no pass is made."""
        if batch.old_logp is not None:
            return batch
        return dataclasses.replace(batch, old_logp=self._logprobs(batch.prompts, batch.rollouts))

    def advantages(self, batch: TrainBatch, seen: Rollouts) -> TrainBatch:
        """The batch with its advantages [N] ([N, C] with `algorithm.turn_rewards`: those rewards' advantage on the
        call turns' tokens only, `turn_credit`); with the KL placed in the reward, r_i −= β·Σ_t k(π_old, π_ref)
        first. `seen` is every rollout the step generated: the batch std runs over it, dropped groups included
        (config validation refuses the KL in the reward together with a group filter there)."""
        a, rollouts = self.cfg.algorithm, batch.rollouts
        if not len(rollouts):  # every group was filtered out
            return dataclasses.replace(batch, rollouts=dataclasses.replace(
                rollouts, advantages=torch.zeros(0, device=rollouts.device)))
        turn = self.scorer.part(rollouts, a.turn_rewards) if a.turn_rewards else None  # [N]
        rewards, kl = rollouts.total if turn is None else rollouts.total - turn, None
        if a.kl_coef > 0 and a.kl_placement == "reward":
            batch = self.with_old_logprobs(batch)
            with self.policy.as_reference() as ref:
                ref_logp = self._logprobs(batch.prompts, rollouts, model=ref)
            kl = kl_penalty_per_sequence(batch.old_logp, ref_logp, rollouts.completion_mask.float(),
                                         a.kl_estimator)  # [N]
            rewards = rewards - a.kl_coef * kl
        lengths = rollouts.completion_mask.sum(dim=1)  # [N]
        valid = usable(rollouts)  # [N]
        generated = rewards.masked_fill(~valid, float("nan"))  # [N]: the generated batch, for batch statistics
        if len(seen) != len(rollouts):  # groups were dropped: they count in the batch std (no KL in these rewards)
            seen_total = seen.total if turn is None else seen.total - self.scorer.part(seen, a.turn_rewards)
            generated = seen_total.masked_fill(~usable(seen), float("nan"))  # [N_seen] every generated completion
        adv, kl_weight = compute_advantages(rewards, lengths, a, group_size=rollouts.group_size,
                                            correctness=rollouts.total, valid=valid, batch_rewards=generated)
        if turn is not None:  # the turn rewards' own advantage, on the call turns' tokens: [N, C]
            adv = turn_credit(adv, self._turn_advantage(turn, rollouts, seen, valid), call_turns(rollouts))
        mask = rollouts.completion_mask
        capped = turn_capped(rollouts)
        if self.cfg.rollout.turn_cap == "mask" and capped.any():  # in the group statistics, out of the loss
            mask = mask * (~capped).to(mask)[:, None]
        return dataclasses.replace(batch, rollouts=dataclasses.replace(
            rollouts, advantages=adv, kl_weight=kl_weight, kl_penalty=kl, completion_mask=mask))

    def _turn_advantage(self, turn: torch.Tensor, rollouts: Rollouts, seen: Rollouts,
                        valid: torch.Tensor) -> torch.Tensor:
        """The `algorithm.turn_rewards` part of the rewards (`turn` [N]) normalised in its groups as the outcome is,
        the batch statistics over every generated completion (`seen`, dropped groups included): [N]."""
        a = self.cfg.algorithm
        seen_turn = turn if len(seen) == len(rollouts) else self.scorer.part(seen, a.turn_rewards)
        return of_config(turn, a, group_size=rollouts.group_size, valid=valid,
                         batch_rewards=seen_turn.masked_fill(~usable(seen), float("nan")))

    def replay_fill(self, batch: TrainBatch) -> TrainBatch:
        """With a replay buffer: fill the groups the filters dropped from it, then keep this step's informative
        groups for later. Replayed rows use their sampling log-probs as π_old, fresh rows the policy now."""
        if not self.cfg.algorithm.replay_capacity:
            return batch
        deficit = self.cfg.trainer.prompts_per_step - len(batch.rollouts) // batch.rollouts.group_size
        gen = torch.Generator().manual_seed(row_seed(self.cfg.trainer.seed, "replay", self.progress.step))
        replayed = self.replay.sample(deficit, gen)
        self.replay.add(batch.prompts, batch.rollouts)
        if not replayed:
            return batch
        batch = self.with_old_logprobs(batch)
        prompts, rollouts, old_logp = merge_replay(batch.prompts, batch.rollouts, batch.old_logp, replayed)
        return TrainBatch(prompts, rollouts, old_logp, len(replayed))

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """`ppo_epochs` × `mini_batches` optimizer steps on the batch (`mmrl.train.update.rl_update`)."""
        if not len(batch.rollouts):
            return {"actor/skipped": 1.0}
        r, a, t = self.cfg.rollout, self.cfg.algorithm, self.cfg.trainer
        if needs_old_logp(a):  # several optimizer steps on one batch (or the KL in the reward): π_old, once
            batch = self.with_old_logprobs(batch)
        rehearsal = None
        if a.rehearsal_coef > 0 and self.rehearsal is not None:
            gen = torch.Generator().manual_seed(row_seed(t.seed, "rehearsal", self.progress.step))
            sub, logp0 = self.rehearsal.draw(a.rehearsal_batch, gen)
            rehearsal = (self.rehearsal.prompts, sub, logp0)
        return rl_update(
            self.policy, batch.prompts, batch.rollouts, a, micro=t.micro_batch_size, temperature=r.temperature,
            max_tokens=r.max_new_tokens, seed=t.seed, step=self.progress.step, optimizer_step=self.optim.step,
            old_logp=batch.old_logp, rehearsal=rehearsal, tis_cap=r.tis_cap,
        )

    def build_rehearsal(self) -> None:
        """Sample π₀ (the policy as RL starts) on `rehearsal_prompts` training prompts and keep the ones it solves
        in all G completions (`mmrl.rollout.rehearsal`)."""
        a, t, train = self.cfg.algorithm, self.cfg.trainer, self.batches.data.train
        gen = torch.Generator().manual_seed(row_seed(t.seed, "rehearsal-prompts"))
        picks = torch.randperm(len(train), generator=gen, device=HOST)[: a.rehearsal_prompts].tolist()
        prompts = self.batches.encode([train[i] for i in picks])
        ro = self.score(self.rollout(prompts, self.cfg.rollout.group_size), prompts)
        self.rehearsal = build_rehearsal(prompts, ro, self._logprobs, a.correct_threshold)
        n = len(self.rehearsal) if self.rehearsal else 0
        self.log(f"rehearsal: π₀ solves {n // ro.group_size} of {len(prompts)} prompts perfectly; {n} completions kept")

    # ------------------------------------------------------------------------------------------- metrics
    def metrics(self, gen: Generated, batch: TrainBatch, *, seconds: tuple[float, float, float]) -> dict[str, float]:
        """The step's rollout, reward and timing metrics (`rollout/*`, `reward/*`, `adv/*`, `perf/*`)."""
        seen, rollouts = gen.seen, batch.rollouts
        t0, t_roll, t_end = seconds
        lengths = seen.completion_mask.sum(1).float()
        out = summarize(seen.rewards, seen.total.tolist(), seen.parse_stats)
        out.update({
            "rollout/len_mean": float(lengths.mean()),
            "rollout/truncated_frac": sum(r == "length" for r in seen.finish_reasons) / len(seen),
            "rollout/kept_groups": len(rollouts) // rollouts.group_size,  # replayed groups included
            "rollout/generated_groups": len(seen) // seen.group_size,
            "adv/zero_frac": zero_advantage_share(rollouts),
            "perf/rollout_s": t_roll - t0, "perf/update_s": t_end - t_roll, "perf/step_s": t_end - t0,
            "perf/tokens_per_s": seen.num_tokens / max(t_end - t0, 1e-9),
        })
        out.update(gen.pass_stats)
        if "trajectory" in seen.columns:
            out.update(trajectory_metrics(seen.columns["trajectory"], seen.finish_reasons))
            out.update(self.engine.metrics())
        if self.cfg.algorithm.replay_capacity:
            out.update({"rollout/replayed_groups": batch.replayed, "rollout/replay_size": len(self.replay)})
        if rollouts.kl_penalty is not None:
            out["actor/kl_in_reward"] = float(rollouts.kl_penalty.mean())
        return out

    def log_rollouts(self, batch: TrainBatch, groups: int = 2) -> None:
        """The first `groups` groups of the step, one JSON line per completion, to RUN/rollouts.jsonl."""
        ro = batch.rollouts
        with open(self.run_dir / "rollouts.jsonl", "a") as f:
            for i in range(min(groups * ro.group_size, len(ro))):
                p = batch.prompts[int(ro.prompt_index[i])]
                f.write(json.dumps({
                    "train/step": self.progress.step, "sample_id": p.sample.id, "completion": ro.texts[i],
                    "answer": p.sample.answer, "finish_reason": ro.finish_reasons[i],
                    "reward": float(ro.total[i]), **logged_advantage(ro, i),
                    "components": {k: v[i] for k, v in ro.rewards.items()},
                    **({"trajectory": ro.columns["trajectory"][i]} if "trajectory" in ro.columns else {}),
                }, default=str) + "\n")


def zero_advantage_share(rollouts: Rollouts) -> float:
    """The share of completions with no advantage on any token (1.0 for an empty batch)."""
    if not len(rollouts):
        return 1.0
    zero = rollouts.advantages.abs() < 1e-8  # [N] or [N, C]
    return float((zero if zero.dim() == 1 else (zero | ~rollouts.completion_mask.bool()).all(dim=1)).float().mean())


def logged_advantage(ro: Rollouts, i: int) -> dict[str, float]:
    """Row i's advantage for rollouts.jsonl: `advantage`; with per-turn credit that of its first and last tokens
    (`advantage`: the first turn's, `answer_advantage`: the last turn's)."""
    adv = ro.advantages[i]
    if adv.dim() == 0:
        return {"advantage": float(adv)}
    tokens = ro.completion_mask[i].nonzero().squeeze(1)
    if not tokens.numel():
        return {"advantage": 0.0, "answer_advantage": 0.0}
    return {"advantage": float(adv[tokens[0]]), "answer_advantage": float(adv[tokens[-1]])}
