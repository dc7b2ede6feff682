"""Scoring: the reward columns of a batch of rollouts, and the check that the data provides them.

`Scorer.score` turns generated rollouts into scored ones (a new record: per-term rewards, the weighted total [N],
parse statistics); it never changes the rollouts it is given. Rewards see each completion with its prompt's
columns (`COLUMNS`, plus every dataset field in a sample's `meta`, by name). Dimension letters: B prompts,
N completions.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import torch

from mmrl.config import ConfigError
from mmrl.model.prompts import PromptInputs
from mmrl.rewards.compose import score, truth_columns, weighted_sum
from mmrl.rollout import Rollouts

COLUMNS = ("answer", "task", "prompts", "samples", "geometry", "geometries", "completion_ids", "finish_reason",
           "prompt_index", "trainer_state")  # what every reward is passed, besides the samples' meta fields


def prompt_text(sample) -> str:
    """The text parts of a sample's messages, joined (the `prompts` reward column)."""
    parts = []
    for msg in sample.messages:
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text"]
    return "\n".join(parts)


def meta_columns(samples) -> list[str]:
    """The `meta` keys of the samples, in first-seen order (a sample without a key gives None there)."""
    return list(dict.fromkeys(k for s in samples for k in s.meta if k not in COLUMNS))


def usable(rollouts: Rollouts) -> torch.Tensor:
    """[N] bool: completions that can be scored and trained on (finish reason not "error")."""
    return torch.tensor([r != "error" for r in rollouts.finish_reasons], dtype=torch.bool, device=rollouts.device)


class Scorer:
    """Scores rollouts with reward `terms` (`mmrl.rewards.isolation.make_term`); `max_steps` is the run's length,
    which rewards that anneal with training see in `trainer_state`."""

    def __init__(self, terms: list, max_steps: int):
        self.terms = terms
        self.max_steps = max_steps

    def columns(self, rollouts: Rollouts, prompts: list[PromptInputs], step: int) -> dict:
        """Every reward column, one value per completion (`trainer_state` once)."""
        index = rollouts.prompt_index.tolist()
        rows = [prompts[i] for i in index]
        texts = [prompt_text(p.sample) for p in prompts]
        columns = {
            "answer": [p.sample.answer for p in rows],
            "task": [p.sample.task for p in rows],
            "prompts": [texts[i] for i in index],
            "samples": [p.sample for p in rows],
            "geometry": [p.answer_geometry for p in rows],
            "geometries": [p.geometry for p in rows],
            "completion_ids": [ids[m.bool()].tolist() for ids, m in zip(rollouts.completion_ids, rollouts.completion_mask)],
            "finish_reason": rollouts.finish_reasons,
            "prompt_index": index,
        }
        bound = {k for t in self.terms for k in t.kwargs}  # a reward's explicit kwargs win over a same-named field
        for key in meta_columns([p.sample for p in prompts]):  # dataset fields beyond the schema, by name
            if key not in bound:
                columns[key] = [p.sample.meta.get(key) for p in rows]
        columns.update(rollouts.columns)  # filled by extra rollout passes (e.g. `pair`)
        columns["trainer_state"] = types.SimpleNamespace(global_step=step, max_steps=self.max_steps, epoch=0.0)
        return columns

    def score(self, rollouts: Rollouts, prompts: list[PromptInputs], step: int) -> Rollouts:
        """The rollouts with `rewards` (per term), `total` [N] and `parse_stats` filled. A completion that failed
        (finish reason "error") gets total 0 and an empty mask: no gradient, no place in its group's statistics."""
        stats: dict = {}
        totals, components = score(self.terms, rollouts.texts, self.columns(rollouts, prompts, step), stats=stats)
        mask = rollouts.completion_mask
        errors = [i for i, reason in enumerate(rollouts.finish_reasons) if reason == "error"]
        if errors:
            mask = mask.clone()
            mask[errors] = 0
            for i in errors:
                totals[i] = 0.0
        return dataclasses.replace(rollouts, rewards=components, parse_stats=stats, completion_mask=mask,
                                   total=torch.tensor(totals, dtype=torch.float32, device=rollouts.device))  # [N]

    def part(self, rollouts: Rollouts, names: list[str]) -> torch.Tensor:
        """[N] the share of the scored rollouts' totals that the rewards `names` make up (weights and gates as in
        the total; 0 on failed completions)."""
        values, _ = weighted_sum(self.terms, rollouts.rewards, len(rollouts), names=names)
        out = torch.tensor(values, dtype=torch.float32, device=rollouts.device)
        return out.masked_fill(~usable(rollouts), 0.0)


def check_reward_columns(terms, samples, *, where: str = "") -> None:
    """Fail before training when a reward needs a column the data does not have, naming the reward, the column and
    the source: a column no sample provides, or a data column the reward scores against (`answer`, a dataset field
    it requires; `mmrl.rewards.compose.truth_columns`) that no sample of a source has — every value of that reward
    would be None there and its metric would vanish. `samples`: {source name: samples} (e.g.
    `{"data.train (x.jsonl)": […]}`), or one list grouped by each sample's `source`; `where` starts each line."""
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
