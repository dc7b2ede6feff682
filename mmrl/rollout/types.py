"""Rollout records. Dimension letters: B prompts, G group size, N = B·G completions, C completion tokens."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


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


@dataclass
class Rollouts:
    """N = B·G completions; rows g·G … g·G+G−1 are prompt g's group.

    Later stages fill `rewards` (per component), `total` and `advantages`.
    """

    prompt_index: torch.Tensor  # [N] index into the step's prompt list
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

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())
