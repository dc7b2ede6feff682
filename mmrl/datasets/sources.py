"""Resolve a data source (a synthetic task or a JSONL file) into samples."""

from __future__ import annotations

from typing import Any

from mmrl.datasets.sample import Sample


def load_source(
    *, task: str | None, path: str | None, n: int, seed: int, split: str, kwargs: dict[str, Any],
    on_bad_sample: str = "raise",
) -> tuple[list[Sample], int]:
    """(samples, skipped) from `task` (synthetic generator, `n` samples) or `path` (JSONL)."""
    if task is not None:
        from mmrl.datasets.synthetic import make

        return make(task, n, seed=seed, split=split, **kwargs), 0
    from mmrl.datasets.jsonl import load_jsonl

    return load_jsonl(path, on_bad_sample=on_bad_sample)
