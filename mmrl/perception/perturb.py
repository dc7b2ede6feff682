"""Seeded, pure perturbations of processed vision inputs.

`mask_patches` hides a share of the vision patches of Qwen-VL-style `pixel_values` (rows = patches, each merge
group of merge_size² patches contiguous, as the Qwen2-VL image processor flattens them): PAPO's masked image,
masked at the granularity of one LLM vision token so no token sees a half-masked patch.
"""

from __future__ import annotations

import torch


def mask_patches(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, ratio: float, merge_size: int = 2, seed: int = 0,
    fill: float = 0.0,
) -> torch.Tensor:
    """A copy of `pixel_values` [P, D] with round(ratio · groups) of each image's merge groups set to `fill`.

    `grid_thw` [I, 3] gives each image's (t, h, w) patch grid (P = Σ t·h·w); a merge group is merge_size²
    consecutive rows. 0 is the normalised mean pixel. Which groups are masked depends only on `seed` and the
    image's position, never on other images in the batch. PAPO: "Perception-Aware Policy Optimization for
    Multimodal Reasoning" (arXiv id not recorded in the reference), patch masking of the input image.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    out = pixel_values.clone()
    group = merge_size * merge_size
    start = 0
    for i, (t, h, w) in enumerate(grid_thw.tolist()):
        n = int(t * h * w)
        if n % group:
            raise ValueError(f"image {i}: {n} patches is not a multiple of merge_size² = {group}")
        groups = n // group
        k = round(ratio * groups)
        gen = torch.Generator().manual_seed((seed * 1_000_003 + i) % (2**63 - 1))
        chosen = torch.randperm(groups, generator=gen)[:k]  # [k]
        rows = (chosen.unsqueeze(1) * group + torch.arange(group)).reshape(-1) + start  # [k·group]
        out[rows] = fill
        start += n
    if start != pixel_values.shape[0]:
        raise ValueError(f"grid_thw covers {start} patches but pixel_values has {pixel_values.shape[0]} rows")
    return out


def shuffle_frames(sample, perm: list[int]):
    """The same sample with its image parts (frames, in prompt order) reordered: shown frame i = original
    frame perm[i]; text parts stay where they are. T-GRPO's shuffled-frame input (Video-R1, arXiv:2503.21776 ≈
    verify). Raises ValueError when `perm` does not permute the sample's frames."""
    from dataclasses import replace

    frames = sample.media("image")
    if sorted(perm) != list(range(len(frames))) or len(frames) < 2:
        raise ValueError(f"{sample.id}: {perm} is not a permutation of its {len(frames)} frames (need >= 2)")
    order = iter([frames[j] for j in perm])
    messages = []
    for msg in sample.messages:
        content = msg.get("content")
        if isinstance(content, list):
            content = [dict(part, image=next(order)) if isinstance(part, dict) and part.get("type") == "image"
                       else part for part in content]
        messages.append(dict(msg, content=content))
    return replace(sample, messages=messages)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded shuffle of range(n) that is not the identity (for n ≥ 2): keeping the order would test nothing.

    >>> derangement(3, 0) != [0, 1, 2] and sorted(derangement(3, 0)) == [0, 1, 2]
    True
    """
    import random

    rng = random.Random(seed)
    perm = list(range(n))
    while n >= 2 and perm == sorted(perm):
        rng.shuffle(perm)
    return perm
