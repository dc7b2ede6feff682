"""A rehearsal set: what the initial policy π₀ already solves, kept to pull π_θ back towards (DPH-RL).

At the start of RL, `build` samples G completions from π₀ for some training prompts; the prompts π₀ solves in
every completion ("perfect") keep those completions and their π₀ log-probs. Each RL step then adds
coef · mean_t f(π_θ(y_t) / π₀(y_t)) over a few stored completions, an f-divergence to π₀ estimated on π₀'s own
samples — no reference model is held. DPH-RL, "The Choice of Divergence: A Neglected Key to Mitigating
Diversity Collapse in Reinforcement Learning with Verifiable Reward" (arXiv:2509.07430). The set is saved in
checkpoints (as sample ids, token ids and log-probs), since π₀ itself is gone after the first update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrl.rollout.types import Rollouts, select_groups
from mmrl.runtime import HOST


@dataclass
class Rehearsal:
    prompts: list  # PromptInputs, one per stored completion's prompt
    rollouts: Rollouts  # the stored completions; prompt_index into `prompts`
    logp0: torch.Tensor  # [R, C] π₀ log-probs of the stored tokens

    def __len__(self) -> int:
        return len(self.rollouts)

    def draw(self, k: int, generator: torch.Generator) -> tuple[Rollouts, torch.Tensor]:
        """k distinct stored completions (uniformly), with their π₀ log-probs."""
        rows = torch.randperm(len(self), generator=generator, device=HOST)[: min(k, len(self))]
        ro = self.rollouts
        on = rows.to(ro.device)
        sub = Rollouts(ro.prompt_index[rows], ro.completion_ids[on], ro.completion_mask[on],
                       ro.sampling_logprobs[on], [ro.texts[i] for i in rows.tolist()],
                       [ro.finish_reasons[i] for i in rows.tolist()], group_size=1)
        return sub, self.logp0[on]

    def state(self) -> dict:
        """JSON-able: per stored completion its prompt's sample id, token ids and π₀ log-probs."""
        out = {"sample_ids": [], "ids": [], "logp0": []}
        for i in range(len(self)):
            n = int(self.rollouts.completion_mask[i].sum())
            out["sample_ids"].append(self.prompts[int(self.rollouts.prompt_index[i])].sample.id)
            out["ids"].append(self.rollouts.completion_ids[i, :n].tolist())
            out["logp0"].append(self.logp0[i, :n].tolist())
        return out


def build(prompts: list, generated: Rollouts, logprobs, correct_threshold: float) -> Rehearsal | None:
    """Keep the groups of `generated` (scored) whose every completion reaches `correct_threshold`; `logprobs(prompts,
    rollouts)` gives π₀'s log-probs [R, C]. None when π₀ solves no prompt perfectly."""
    g = generated.group_size
    perfect = [gi for gi in range(len(generated) // g)
               if bool((generated.total[gi * g : (gi + 1) * g] >= correct_threshold).all())]
    if not perfect:
        return None
    kept = select_groups(generated, perfect)
    return Rehearsal(prompts, kept, logprobs(prompts, kept))


def from_state(state: dict, encode, pad_id: int, device: torch.device = HOST) -> Rehearsal:
    """Rebuild a saved set on `device`; `encode(sample_ids)` gives each id's PromptInputs."""
    ids, logps = state["ids"], state["logp0"]
    width = max(len(r) for r in ids)
    prompts = encode(state["sample_ids"])
    ro = Rollouts(
        prompt_index=torch.arange(len(ids), device=HOST),
        completion_ids=torch.tensor([r + [pad_id] * (width - len(r)) for r in ids], device=device),
        completion_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], device=device),
        sampling_logprobs=torch.zeros(len(ids), width, device=device), texts=[""] * len(ids),
        finish_reasons=["eos"] * len(ids), group_size=1,
    )
    logp0 = torch.tensor([r + [0.0] * (width - len(r)) for r in logps], device=device)
    return Rehearsal(prompts, ro, logp0)
