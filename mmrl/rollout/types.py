"""Rollout records. Dimension letters: B prompts, G group size, N = B·G completions, C completion tokens."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

import torch

from mmrl.runtime import HOST


def row_seed(*parts: object) -> int:
    """A 63-bit seed from (seed, step, prompt id, index …): stable across processes, restarts and batch order."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    greedy: bool = False
    seed: int = 0
    step: int = 0  # with `seed` and each prompt's id, fixes that prompt's sampling noise
    ignore_eos: bool = False  # EOS is never sampled: every completion runs to max_new_tokens (benchmarks)

    @classmethod
    def of(cls, rollout, *, seed: int, step: int, greedy: bool = False) -> "SamplingParams":
        """The sampling a `RolloutConfig` asks for at training step `step` (greedy: held-out evaluation)."""
        return cls(temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
                   max_new_tokens=rollout.max_new_tokens, greedy=greedy, seed=seed, step=step,
                   ignore_eos=rollout.ignore_eos)


@dataclass
class Observed:
    """What multi-turn rollouts (`rollout.tools`, `mmrl.rollout.tool_engine`) add to their completions: the tokens
    the tools' observations put between the policy's turns. A completion then holds the policy's tokens *and* the
    observation tokens, in order; `Rollouts.completion_mask` marks the policy's (the loss, lengths and sampling
    log-probs are over those), `present` every token of the sequence (attention, positions), `token_types` the
    processor's `mm_token_type_ids` (1 on image tokens) and `media` each row's tool images as the processor's
    tensors (`pixel_values`, `image_grid_thw`, …; host), in the order their placeholders appear."""

    present: torch.Tensor  # [N, C] 1 for every token of the completion (policy and observation)
    token_types: torch.Tensor  # [N, C]
    media: list[dict[str, torch.Tensor]]  # per row

    def rows(self, index: list[int], device: torch.device) -> "Observed":
        on = torch.tensor(index, dtype=torch.long, device=device)
        return Observed(self.present[on], self.token_types[on], [self.media[i] for i in index])

    def to(self, device: torch.device) -> "Observed":
        return Observed(self.present.to(device), self.token_types.to(device), self.media)


def _cat_observed(parts: list["Rollouts"], width: int) -> Observed | None:
    """The parts' `observed` concatenated (right-padded to `width`); a part without one contributes its mask as
    `present` (single-turn rows); None when no part has one."""
    if all(p.observed is None for p in parts):
        return None
    present, types, media = [], [], []
    for p in parts:
        o = p.observed
        present.append(_pad_cols(o.present if o else p.completion_mask, width))
        types.append(_pad_cols(o.token_types if o else torch.zeros_like(p.completion_ids), width))
        media += o.media if o else [{} for _ in range(len(p))]
    return Observed(torch.cat(present), torch.cat(types), media)


@dataclass
class Rollouts:
    """N = B·G completions; rows g·G … g·G+G−1 are prompt g's group.

    An engine returns them with the completions; each later stage returns a new record (`dataclasses.replace`)
    with its fields filled — scoring `rewards` (per component) and `total`, the advantage step `advantages` — and
    leaves the one it was given as it was. Every tensor lives on the runtime's device except `prompt_index`,
    Python-side bookkeeping kept on the host (`mmrl.runtime`).
    """

    prompt_index: torch.Tensor  # [N] index into the step's prompt list (host)
    completion_ids: torch.Tensor  # [N, C] (pad after the end)
    completion_mask: torch.Tensor  # [N, C] 1 for real tokens (EOS included)
    sampling_logprobs: torch.Tensor  # [N, C] log-probs under the sampling distribution (0 where masked)
    texts: list[str]
    finish_reasons: list[str]  # "eos" | "length" | "error"
    group_size: int
    rewards: dict[str, list[float | None]] = field(default_factory=dict)
    parse_stats: dict[str, dict[str, float]] = field(default_factory=dict)  # per reward: truncated / parse_fail
    total: torch.Tensor | None = None  # [N]
    advantages: torch.Tensor | None = None  # [N]
    kl_penalty: torch.Tensor | None = None  # [N] Σ_t k(π_old, π_ref) when the KL is placed in the reward
    kl_weight: torch.Tensor | None = None  # [N] per-completion KL weight (algorithm.kl_weighting)
    columns: dict[str, list] = field(default_factory=dict)  # extra per-completion reward columns (extra passes)
    observed: Observed | None = None  # multi-turn rollouts: the observation tokens between the policy's turns

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    @property
    def device(self) -> torch.device:
        return self.completion_ids.device

    def to(self, device: torch.device) -> "Rollouts":
        """The same rollouts with every device tensor on `device` (`prompt_index` stays on the host)."""
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        out = copy.copy(self)
        for name in TENSOR_FIELDS:
            setattr(out, name, move(getattr(self, name)))
        if self.observed is not None:
            out.observed = self.observed.to(device)
        return out


TENSOR_FIELDS = ("completion_ids", "completion_mask", "sampling_logprobs", "total", "advantages", "kl_penalty",
                 "kl_weight")


def _pad_cols(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x


def concat_rollouts(parts: list[Rollouts], prompt_offsets: list[int]) -> Rollouts:
    """One `Rollouts` from several (same group size), completion tensors right-padded to the widest; each
    part's `prompt_index` is shifted by its offset into the concatenated prompt list."""
    if len(parts) == 1 and prompt_offsets == [0]:
        return parts[0]
    width = max(p.completion_ids.shape[1] for p in parts)
    cat = lambda name: torch.cat([_pad_cols(getattr(p, name), width) for p in parts])  # noqa: E731
    out = Rollouts(
        prompt_index=torch.cat([p.prompt_index + off for p, off in zip(parts, prompt_offsets)]),
        completion_ids=cat("completion_ids"), completion_mask=cat("completion_mask"),
        sampling_logprobs=cat("sampling_logprobs"),
        texts=[t for p in parts for t in p.texts], finish_reasons=[f for p in parts for f in p.finish_reasons],
        group_size=parts[0].group_size,
    )
    names = list(parts[0].rewards)
    out.rewards = {k: [v for p in parts for v in p.rewards[k]] for k in names}
    out.columns = {k: [v for p in parts for v in p.columns.get(k, [None] * len(p))] for k in parts[0].columns}
    if all(p.total is not None for p in parts):
        out.total = torch.cat([p.total for p in parts])
    out.observed = _cat_observed(parts, width)
    return out


def select_groups(ro: Rollouts, groups: list[int]) -> Rollouts:
    """The completions of the given groups (indices of groups, in order); prompt indices are kept."""
    g = ro.group_size
    rows = torch.tensor([gi * g + j for gi in groups for j in range(g)], dtype=torch.long, device=HOST)
    on = rows.to(ro.device)
    out = Rollouts(
        prompt_index=ro.prompt_index[rows], completion_ids=ro.completion_ids[on],
        completion_mask=ro.completion_mask[on], sampling_logprobs=ro.sampling_logprobs[on],
        texts=[ro.texts[i] for i in rows.tolist()], finish_reasons=[ro.finish_reasons[i] for i in rows.tolist()],
        group_size=g, parse_stats=ro.parse_stats,
    )
    out.rewards = {k: [v[i] for i in rows.tolist()] for k, v in ro.rewards.items()}
    out.columns = {k: [v[i] for i in rows.tolist()] for k, v in ro.columns.items()}
    out.total = ro.total[on] if ro.total is not None else None
    out.observed = ro.observed.rows(rows.tolist(), ro.device) if ro.observed is not None else None
    return out
