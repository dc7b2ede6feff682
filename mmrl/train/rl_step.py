"""The RL step's stages, as the methods of `RLSteps` (a base of `Trainer`):

rollout (G completions per prompt) → extra passes (re-generations on perturbed inputs) → score (rewards)
→ filter (group filters, refills) → advantage (incl. KL in the reward) → replay fill → update → log.

Each stage looks its pieces up by name (`mmrl.algorithms`, `mmrl.rewards`, `mmrl.rollout.passes`); nothing here
branches on a method's name. Dimension letters: B prompts, G group size, N = B·G completions, C tokens.
"""

from __future__ import annotations

import json
import time
import types
from typing import Any

import torch

from mmrl.algorithms import keep_groups, kl_penalty_per_sequence
from mmrl.algorithms.advantages import compute as compute_advantages
from mmrl.algorithms.prompts import group_accuracy
from mmrl.config import ConfigError
from mmrl.model.prompts import PromptInputs
from mmrl.rewards.compose import score, summarize
from mmrl.rollout import Rollouts, SamplingParams
from mmrl.rollout.passes import EXTRA_PASSES, PassContext
from mmrl.rollout.rehearsal import build as build_rehearsal
from mmrl.rollout.replay import merge as merge_replay
from mmrl.rollout.types import concat_rollouts, row_seed, select_groups
from mmrl.runtime import HOST
from mmrl.train.update import logprob_pass, rl_update


def _prompt_text(sample) -> str:
    """The text parts of a sample's messages, joined (the `prompts` reward column)."""
    parts = []
    for msg in sample.messages:
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text"]
    return "\n".join(parts)


COLUMNS = ("answer", "task", "prompts", "samples", "geometry", "geometries", "completion_ids", "finish_reason", "prompt_index",
           "trainer_state")  # what `Trainer.score` passes every reward, besides the samples' meta fields


def _usable(rollouts: Rollouts) -> torch.Tensor:
    """[N] bool: completions that can be scored and trained on (finish reason not "error")."""
    return torch.tensor([r != "error" for r in rollouts.finish_reasons], dtype=torch.bool, device=rollouts.device)


def meta_columns(samples) -> list[str]:
    """The `meta` keys of the samples, in first-seen order (a sample without a key gives None there)."""
    return list(dict.fromkeys(k for s in samples for k in s.meta if k not in COLUMNS))


def check_reward_columns(terms, samples, *, where: str = "") -> None:
    """Fail before training when a reward needs a column the data does not have, naming the reward, the column and
    the source: a column no sample provides, or a data column the reward scores against (`answer`, a dataset field
    it requires; `mmrl.rewards.compose.truth_columns`) that no sample of a source has — every value of that reward
    would be None there and its metric would vanish. `samples`: {source name: samples} (e.g.
    `{"data.train (x.jsonl)": […]}`), or one list grouped by each sample's `source`; `where` starts each line."""
    from collections.abc import Mapping

    from mmrl.rewards.compose import truth_columns

    sources: dict[str, list] = {}
    if isinstance(samples, Mapping):
        sources = {name: list(part) for name, part in samples.items()}
    else:
        for s in samples:
            sources.setdefault(s.source or "the data", []).append(s)
    available = set(COLUMNS) | set(meta_columns([s for part in sources.values() for s in part]))
    problems = []
    for term in terms:
        missing = [c for c in getattr(term.fn, "required", []) if c not in available and c not in term.kwargs]
        if missing:
            problems.append(
                f"{where}rewards: reward {term.name!r} needs column(s) {missing} that the data does not provide"
                f" (columns: {', '.join(sorted(available))}; dataset fields reach rewards through each sample's"
                f" `meta`, fixed values through the reward's `kwargs`)")
            continue
        for column in [c for c in truth_columns(term) if c == "answer" or c not in COLUMNS]:  # the data's own
            for name, part in sources.items():
                if part and all((s.answer if column == "answer" else s.meta.get(column)) is None for s in part):
                    problems.append(
                        f"{where}rewards: reward {term.name!r} scores against column {column!r}, which no sample of"
                        f" {name} has: it would be None on all of them (no reward/{term.name}/mean). Give the records"
                        f" {'an `answer`' if column == 'answer' else f'a `{column}` field'}, or score them with"
                        f" rewards that need none")
    if problems:
        raise ConfigError(*problems)


class RLSteps:
    """RL-step stages; expects the `Trainer` attributes (cfg, policy, engine, terms, progress, replay, …)."""

    # ----------------------------------------------------------------------------------------- RL step
    def rollout(self, prompts: list[PromptInputs], n: int, *, greedy: bool = False) -> Rollouts:
        r = self.cfg.rollout
        params = SamplingParams(
            temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
            greedy=greedy, seed=self.cfg.trainer.seed, step=self.progress.step, ignore_eos=r.ignore_eos,
        )
        return self.engine.generate(prompts, n, params, batch_prompts=r.batch_prompts)

    def score(self, rollouts: Rollouts, prompts: list[PromptInputs], terms=None) -> None:
        """Fill `rollouts.rewards` (per term) and `rollouts.total` [N]; `terms` default: the current stage's."""
        terms = self.terms if terms is None else terms
        rows = [prompts[i] for i in rollouts.prompt_index.tolist()]
        texts = [_prompt_text(p.sample) for p in prompts]
        columns = {
            "answer": [p.sample.answer for p in rows],
            "task": [p.sample.task for p in rows],
            "prompts": [texts[i] for i in rollouts.prompt_index.tolist()],
            "samples": [p.sample for p in rows],
            "geometry": [p.answer_geometry for p in rows],
            "geometries": [p.geometry for p in rows],
            "completion_ids": [ids[: int(m.sum())].tolist() for ids, m in zip(rollouts.completion_ids, rollouts.completion_mask)],
            "finish_reason": rollouts.finish_reasons,
            "prompt_index": rollouts.prompt_index.tolist(),
        }
        bound = {k for t in terms for k in t.kwargs}  # a reward's explicit kwargs win over a same-named field
        for key in meta_columns([p.sample for p in prompts]):  # dataset fields beyond the schema, by name
            if key not in bound:
                columns[key] = [p.sample.meta.get(key) for p in rows]
        columns.update(rollouts.columns)  # filled by extra rollout passes (e.g. `pair`)
        columns["trainer_state"] = types.SimpleNamespace(
            global_step=self.progress.step, max_steps=sum(s.steps for s in self.cfg.stages), epoch=0.0
        )
        rollouts.parse_stats = {}
        totals, components = score(terms, rollouts.texts, columns, stats=rollouts.parse_stats)
        for i, reason in enumerate(rollouts.finish_reasons):
            if reason == "error":  # an unusable completion: no reward, no gradient, not in its group's statistics
                totals[i] = 0.0
                rollouts.completion_mask[i] = 0
        rollouts.rewards = components
        rollouts.total = torch.tensor(totals, dtype=torch.float32, device=rollouts.device)  # [N]

    def generate(self) -> tuple[list[PromptInputs], Rollouts, Rollouts]:
        """rollout → score → filter: (prompts, kept rollouts, every generated rollout).

        Groups the `algorithm.group_filter` drops are refilled with fresh prompts, up to `max_gen_batches`
        rollout batches; the step then trains on the kept groups (at most `prompts_per_step`), however few.
        """
        a, want, g = self.cfg.algorithm, self.cfg.trainer.prompts_per_step, self.cfg.rollout.group_size
        prompts: list[PromptInputs] = []
        parts: list[Rollouts] = []
        kept: list[int] = []  # group indices into the concatenation
        for k in range(a.max_gen_batches):
            batch = self.encode(self._batch(want, refill=k, weighted=True))
            ro = self.rollout(batch, g)
            self.extra_passes(batch, ro)
            self.score(ro, batch)
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
        seen = concat_rollouts(parts, offsets)
        seen.parse_stats = parts[-1].parse_stats
        return prompts, select_groups(seen, kept[:want]), seen

    def extra_passes(self, prompts: list[PromptInputs], rollouts: Rollouts) -> None:
        """Run `rollout.extra_passes` in order; their statistics go to `rollout/<kind>/<stat>` metrics."""
        r = self.cfg.rollout
        if not r.extra_passes:
            return
        params = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens, seed=self.cfg.trainer.seed, step=self.progress.step,
                                ignore_eos=r.ignore_eos)
        ctx = PassContext(self.policy, self.engine, params, r.batch_prompts, self.score,
                          self.cfg.algorithm.correct_threshold, self.cfg.data.video)
        for xp in r.extra_passes:
            stats = EXTRA_PASSES.get(xp.kind)(ctx, prompts, rollouts, **xp.kwargs)
            for key, value in stats.items():
                self._pass_stats[f"rollout/{xp.kind}/{key}"] = self._pass_stats.get(f"rollout/{xp.kind}/{key}", 0.0) + value

    def advantage(self, prompts: list[PromptInputs], rollouts: Rollouts, seen: Rollouts) -> torch.Tensor | None:
        """Fill `rollouts.advantages` [N]; with the KL placed in the reward, r_i −= β·Σ_t k(π_old, π_ref) first.
        `seen` is every rollout the step generated: the batch std runs over it, dropped groups included (config
        validation refuses the KL in the reward together with a group filter there). Returns the π_old log-probs
        when they had to be computed here (reused by the update)."""
        a = self.cfg.algorithm
        rewards, old = rollouts.total, None
        if not len(rollouts):  # every group was filtered out
            rollouts.advantages = torch.zeros(0, device=rollouts.device)
            return None
        if a.kl_coef > 0 and a.kl_placement == "reward":
            temp, micro = self.cfg.rollout.temperature, self.cfg.trainer.micro_batch_size
            old = logprob_pass(self.policy, prompts, rollouts, micro=micro, temperature=temp)
            with self.policy.as_reference() as ref:
                ref_logp = logprob_pass(self.policy, prompts, rollouts, micro=micro, temperature=temp, model=ref)
            kl = kl_penalty_per_sequence(old, ref_logp, rollouts.completion_mask.float(), a.kl_estimator)  # [N]
            rewards = rewards - a.kl_coef * kl
            rollouts.kl_penalty = kl
        lengths = rollouts.completion_mask.sum(dim=1)  # [N]
        usable = _usable(rollouts)  # [N]
        batch = rewards.masked_fill(~usable, float("nan"))  # [M]: the generated batch, for batch statistics
        if len(seen) != len(rollouts):  # groups were dropped: they count in the batch std (no KL in these rewards)
            batch = seen.total.masked_fill(~_usable(seen), float("nan"))
        adv, rollouts.kl_weight = compute_advantages(rewards, lengths, a, group_size=rollouts.group_size,
                                                     correctness=rollouts.total, valid=usable, batch_rewards=batch)
        rollouts.advantages = adv
        return old

    def replay_fill(self, prompts: list[PromptInputs], rollouts: Rollouts, old_logp):
        """With a replay buffer: fill the groups the filters dropped from it, then keep this step's informative
        groups for later. Returns (prompts, rollouts, π_old log-probs or None, number of replayed groups)."""
        if not self.cfg.algorithm.replay_capacity:
            return prompts, rollouts, old_logp, 0
        deficit = self.cfg.trainer.prompts_per_step - len(rollouts) // rollouts.group_size
        gen = torch.Generator().manual_seed(row_seed(self.cfg.trainer.seed, "replay", self.progress.step))
        replayed = self.replay.sample(deficit, gen)
        self.replay.add(prompts, rollouts)
        if not replayed:
            return prompts, rollouts, old_logp, 0
        if old_logp is None:  # fresh rows: π_old = the policy now; replayed rows: their sampling log-probs
            old_logp = logprob_pass(self.policy, prompts, rollouts, micro=self.cfg.trainer.micro_batch_size,
                                    temperature=self.cfg.rollout.temperature)
        prompts, rollouts, old_logp = merge_replay(prompts, rollouts, old_logp, replayed)
        return prompts, rollouts, old_logp, len(replayed)

    def build_rehearsal(self) -> None:
        """Sample π₀ (the policy as RL starts) on `rehearsal_prompts` training prompts and keep the ones it solves
        in all G completions (`mmrl.rollout.rehearsal`)."""
        a, t = self.cfg.algorithm, self.cfg.trainer
        gen = torch.Generator().manual_seed(row_seed(t.seed, "rehearsal-prompts"))
        picks = torch.randperm(len(self.train_data), generator=gen, device=HOST)[: a.rehearsal_prompts].tolist()
        prompts = self.encode([self.train_data[i] for i in picks])
        ro = self.rollout(prompts, self.cfg.rollout.group_size)
        self.score(ro, prompts)
        logprobs = lambda p, r: logprob_pass(self.policy, p, r, micro=t.micro_batch_size,  # noqa: E731
                                             temperature=self.cfg.rollout.temperature)
        self.rehearsal = build_rehearsal(prompts, ro, logprobs, a.correct_threshold)
        n = len(self.rehearsal) if self.rehearsal else 0
        self.log(f"rehearsal: π₀ solves {n // ro.group_size} of {len(prompts)} prompts perfectly; {n} completions kept")

    def update_rl(self, prompts: list[PromptInputs], rollouts: Rollouts, old_logp=None) -> dict[str, float]:
        if not len(rollouts):
            return {"actor/skipped": 1.0}
        r = self.cfg.rollout
        a = self.cfg.algorithm
        rehearsal = None
        if a.rehearsal_coef > 0 and self.rehearsal is not None:
            gen = torch.Generator().manual_seed(row_seed(self.cfg.trainer.seed, "rehearsal", self.progress.step))
            sub, logp0 = self.rehearsal.draw(a.rehearsal_batch, gen)
            rehearsal = (self.rehearsal.prompts, sub, logp0)
        return rl_update(
            self.policy, prompts, rollouts, self.cfg.algorithm, micro=self.cfg.trainer.micro_batch_size,
            temperature=r.temperature, max_tokens=r.max_new_tokens, seed=self.cfg.trainer.seed,
            step=self.progress.step, optimizer_step=lambda last: self._optimizer_step(step_scheduler=last),
            old_logp=old_logp, rehearsal=rehearsal, tis_cap=r.tis_cap,
        )

    def rl_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._pass_stats: dict[str, float] = {}
        prompts, rollouts, seen = self.generate()  # rollout (+ extra passes) → score → filter
        t_roll = time.perf_counter()
        old_logp = self.advantage(prompts, rollouts, seen)
        prompts, rollouts, old_logp, replayed = self.replay_fill(prompts, rollouts, old_logp)
        metrics = self.update_rl(prompts, rollouts, old_logp)
        t_end = time.perf_counter()
        lengths = seen.completion_mask.sum(1).float()
        metrics.update(summarize(seen.rewards, seen.total.tolist(), seen.parse_stats))
        metrics.update({
            "rollout/len_mean": float(lengths.mean()),
            "rollout/truncated_frac": sum(r == "length" for r in seen.finish_reasons) / len(seen),
            "rollout/kept_groups": len(rollouts) // rollouts.group_size,
            "rollout/generated_groups": len(seen) // seen.group_size,
            "adv/zero_frac": float((rollouts.advantages.abs() < 1e-8).float().mean()) if len(rollouts) else 1.0,
            "perf/rollout_s": t_roll - t0, "perf/update_s": t_end - t_roll, "perf/step_s": t_end - t0,
            "perf/tokens_per_s": seen.num_tokens / max(t_end - t0, 1e-9),
        })
        metrics.update(self._pass_stats)
        if self.cfg.algorithm.replay_capacity:
            metrics.update({"rollout/replayed_groups": replayed, "rollout/replay_size": len(self.replay)})
        if rollouts.kl_penalty is not None:
            metrics["actor/kl_in_reward"] = float(rollouts.kl_penalty.mean())
        every = self.cfg.trainer.log_rollouts_every
        if self.main and every and self.progress.stage_step % every == 0:
            self._log_rollouts(prompts, rollouts)
        return metrics

    def _log_rollouts(self, prompts: list[PromptInputs], rollouts: Rollouts, groups: int = 2) -> None:
        with open(self.run_dir / "rollouts.jsonl", "a") as f:
            for i in range(min(groups * rollouts.group_size, len(rollouts))):
                p = prompts[int(rollouts.prompt_index[i])]
                f.write(json.dumps({
                    "train/step": self.progress.step, "sample_id": p.sample.id, "completion": rollouts.texts[i],
                    "answer": p.sample.answer, "finish_reason": rollouts.finish_reasons[i],
                    "reward": float(rollouts.total[i]), "advantage": float(rollouts.advantages[i]),
                    "components": {k: v[i] for k, v in rollouts.rewards.items()},
                }, default=str) + "\n")
