"""Where a run stands: the stage, the step counters, the data counters and each prompt's last group accuracy —
held by the steps, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    def load(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's progress, in place (the steps hold this object)."""
        vars(self).update(vars(Progress(**state)))
