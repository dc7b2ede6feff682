"""Selective sample replay: groups with a learning signal are kept and re-used when filters leave a step short.

VL-Rethinker's SSR ("Incentivizing Self-Reflection of Vision-Language Models with RL"; arXiv:2504.08837):
groups whose advantages vanish carry no gradient, so past groups with non-zero advantages are replayed,
drawn with probability ∝ (mean |Â|)^α. A replayed group keeps the advantages it was given and its sampling
log-probs serve as π_old, so the PPO ratio corrects for its staleness. The buffer lives in memory (FIFO,
`capacity` groups) and is not checkpointed: a resumed run starts with it empty.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import torch

from mmrl.rollout.types import Rollouts, concat_rollouts, select_groups
from mmrl.runtime import HOST


@dataclass
class ReplayGroup:
    prompt: object  # PromptInputs
    rollouts: Rollouts  # one group, prompt_index 0, with advantages
    weight: float  # mean |Â| of the group


class ReplayBuffer:
    def __init__(self, capacity: int, alpha: float = 1.0):
        self.groups: deque[ReplayGroup] = deque(maxlen=capacity)
        self.alpha = alpha

    def __len__(self) -> int:
        return len(self.groups)

    def add(self, prompts: list, ro: Rollouts) -> int:
        """Keep every group of `ro` (advantages filled) whose mean |Â| is > 0; returns how many were added."""
        g, added = ro.group_size, 0
        for gi in range(len(ro) // g):
            adv = ro.advantages[gi * g : (gi + 1) * g]
            weight = float(adv.abs().mean())
            if weight <= 0:
                continue
            one = select_groups(ro, [gi])
            one.advantages = adv.clone()
            one.prompt_index = torch.zeros_like(one.prompt_index)
            self.groups.append(ReplayGroup(prompts[int(ro.prompt_index[gi * g])], one, weight))
            added += 1
        return added

    def sample(self, k: int, generator: torch.Generator) -> list[ReplayGroup]:
        """Up to k distinct groups, drawn with probability ∝ weight^α."""
        k = min(k, len(self.groups))
        if k <= 0:
            return []
        w = torch.tensor([grp.weight for grp in self.groups], dtype=torch.float64, device=HOST) ** self.alpha
        picks = torch.multinomial(w, k, replacement=False, generator=generator).tolist()
        return [self.groups[i] for i in picks]


def merge(prompts: list, ro: Rollouts, old_logp: torch.Tensor, replayed: list[ReplayGroup]):
    """(prompts, rollouts, π_old log-probs) of the fresh batch followed by the replayed groups."""
    parts = [ro] + [grp.rollouts for grp in replayed]
    offsets = [0] + [len(prompts) + i for i in range(len(replayed))]
    out = dataclasses.replace(concat_rollouts(parts, offsets), advantages=torch.cat([p.advantages for p in parts]))
    if ro.kl_weight is not None:  # replayed groups keep the full KL weight
        ones = torch.ones(len(out) - len(ro), dtype=ro.kl_weight.dtype, device=ro.kl_weight.device)
        out = dataclasses.replace(out, kl_weight=torch.cat([ro.kl_weight, ones]))  # [N + replayed rows]
    width = out.completion_ids.shape[1]
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    old = torch.cat([pad(old_logp)] + [pad(grp.rollouts.sampling_logprobs.float()) for grp in replayed])
    return prompts + [grp.prompt for grp in replayed], out, old
