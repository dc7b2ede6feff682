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
    Multimodal Reasoning" (arXiv:2507.06448), patch masking of the input image.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    total = int(sum(int(t * h * w) for t, h, w in grid_thw.tolist()))
    if total != pixel_values.shape[0]:
        raise ValueError(f"grid_thw covers {total} patches but pixel_values has {pixel_values.shape[0]} rows")
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
        chosen = torch.randperm(groups, generator=gen, device="cpu")[:k]  # [k] seeded on the host
        rows = (chosen.unsqueeze(1) * group + torch.arange(group, device="cpu")).reshape(-1) + start  # [k·group]
        rows = rows.to(out.device)
        out[rows] = fill
        start += n
    return out


def shuffle_frames(sample, perm: list[int]):
    """The same sample with its image parts (frames, in prompt order) reordered: shown frame i = original
    frame perm[i]; text parts stay where they are. T-GRPO's shuffled-frame input (Video-R1, arXiv:2503.21776).
    Raises ValueError when `perm` does not permute the sample's frames."""
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


# ---- image perturbations (PIL in, PIL out; pure) -------------------------------------------------------------------
ROTATIONS = {0: None, 90: 2, 180: 3, 270: 4}  # counter-clockwise degrees → PIL.Image.Transpose values


def rotate(image, angle: int):
    """`image` turned counter-clockwise by 0, 90, 180 or 270 degrees, exactly (a pixel transpose, no
    interpolation): the rotation puzzle of SSL4RL / PC-GRPO."""
    from PIL import Image

    if angle not in ROTATIONS:
        raise ValueError(f"rotation angle must be one of {sorted(ROTATIONS)}, got {angle!r}")
    return image.copy() if ROTATIONS[angle] is None else image.transpose(Image.Transpose(ROTATIONS[angle]))


def jigsaw(image, grid: int, order: list[int]):
    """The image cut into `grid` × `grid` tiles (the right / bottom remainder dropped) and reassembled so the tile
    at position k (reading order) is original tile `order[k]`. SSL4RL / PC-GRPO's jigsaw puzzle."""
    from PIL import Image

    if sorted(order) != list(range(grid * grid)):
        raise ValueError(f"{order} is not a permutation of {grid * grid} tiles")
    tw, th = image.width // grid, image.height // grid
    if tw < 1 or th < 1:
        raise ValueError(f"image {image.width}x{image.height} is too small for a {grid}x{grid} jigsaw")
    box = lambda k: ((k % grid) * tw, (k // grid) * th, (k % grid + 1) * tw, (k // grid + 1) * th)  # noqa: E731
    out = Image.new(image.mode, (tw * grid, th * grid))
    for pos, src in enumerate(order):
        out.paste(image.crop(box(src)), box(pos)[:2])
    return out


def crop_zoom(image, box: tuple[int, int, int, int]):
    """The region `box` = (x1, y1, x2, y2) (pixels, x2/y2 exclusive) enlarged back to the image's size (bilinear).
    A point (x, y) of the region lands at ((x − x1)·W/(x2 − x1), (y − y1)·H/(y2 − y1))."""
    from PIL import Image

    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height):
        raise ValueError(f"crop box {box} is not inside the {image.width}x{image.height} image")
    return image.crop(box).resize(image.size, Image.BILINEAR)


def random_crop_box(width: int, height: int, *, scale: tuple[float, float], seed: int) -> tuple[int, int, int, int]:
    """A seeded crop box keeping the aspect ratio, its side a random share in `scale` of the image's."""
    import random

    rng = random.Random(seed)
    s = rng.uniform(*scale)
    w, h = max(1, round(width * s)), max(1, round(height * s))
    x, y = rng.randint(0, width - w), rng.randint(0, height - h)
    return x, y, x + w, y + h
