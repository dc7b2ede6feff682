"""Resolve a data source (a synthetic task or a JSONL file) into samples."""

from __future__ import annotations

from typing import Any

from mmrl.datasets.sample import Sample, check_template, with_system, with_template


def load_source(
    *, task: str | None, path: str | None, n: int, seed: int, split: str, kwargs: dict[str, Any],
    on_bad_sample: str = "raise", format: str = "auto", fields: dict[str, str] | None = None,
    image_root: str | None = None, template: str | None = None, system_prompt: str | None = None,
) -> tuple[list[Sample], int]:
    """(samples, skipped) from `task` (synthetic generator, `n` samples) or `path` (a data file or saved data set
    directory in mmrl's or a peer's format; `mmrl.datasets.formats`). `template` (with `{problem}`) rewrites
    each question; `system_prompt` becomes the system turn of every sample without one (per-source, so each
    task of a mix can have its own; `data.system_prompt` is the fallback for all). Each sample's `source` names
    the split and the task or file ("train file data.parquet")."""
    if template is not None:
        check_template(template)
    if task is not None:
        from mmrl.datasets.synthetic import make

        samples = make(task, n, seed=seed, split=split, **kwargs)
        samples, skipped = ([with_template(s, template) for s in samples] if template else samples), 0
    else:
        from mmrl.datasets.formats import load_file

        samples, skipped = load_file(path, format=format, fields=fields, image_root=image_root, template=template,
                                     on_bad_sample=on_bad_sample)
    if system_prompt is not None:  # "" gives an empty system turn (no chat-template default)
        samples = [with_system(s, system_prompt) for s in samples]
    name = f"{split} task {task}" if task is not None else f"{split} file {path}"
    for s in samples:
        s.source = name
    return samples, skipped


def _media_keys(sample: Sample) -> set[str]:
    """Identity of a sample's images and videos: pixel hashes for in-memory images, resolved paths for files
    (a video given as frames counts by each frame)."""
    import hashlib

    keys = set()
    videos = [f for v in sample.media("video") for f in (v if isinstance(v, (list, tuple)) else [v])]
    for src in sample.media("image") + videos:
        if hasattr(src, "tobytes"):
            keys.add(hashlib.sha1(src.tobytes() + str(src.size).encode()).hexdigest())
        else:
            keys.add(str(src))
    return keys


def drop_overlap(train: list[Sample], held_out: list[Sample]) -> tuple[list[Sample], int]:
    """Held-out samples whose images also occur in training (identical pixels or the same file) are dropped,
    so held-out metrics measure generalisation; returns (kept, dropped)."""
    seen = set().union(*(_media_keys(s) for s in train)) if train else set()
    kept = [s for s in held_out if not (_media_keys(s) & seen)]
    return kept, len(held_out) - len(kept)
