"""The registries of synthetic tasks (`TASKS`: drawers) and of SFT target formats (`TARGETS`), which the task
families (`mmrl.datasets.synthetic`, `shapes`, `temporal`) fill on import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from mmrl.registry import Registry


@dataclass(frozen=True)
class SyntheticTask:
    """A generator: `draw(rng, **kwargs) -> (image or [frames], prompt, answer)`; `task` is the samples'
    `Sample.task`. A list of images becomes that many image parts, in order (a multi-frame prompt)."""

    task: str
    draw: Callable[..., tuple[Image.Image, str, Any]]


@dataclass(frozen=True)
class TargetFormat:
    """SFT target texts for one `Sample.task`: the true answer, or a random one in the same format; a task solved
    with tools also gives the policy's `turns` (e.g. a call, then the answer once the tool's result is seen), for
    SFT through the multi-turn loop (`rollout.tools`)."""

    target: Callable[..., str]  # (sample, geometry=None) -> str
    random_target: Callable[..., str]  # (sample, rng, geometry=None) -> str
    turns: Callable[..., list[str]] | None = None  # (sample, rng | None (None: the true answer), geometry=None)


TASKS: Registry[SyntheticTask] = Registry("synthetic task")
TARGETS: Registry[TargetFormat] = Registry("target format")
