"""Seeded, pure perturbations: patch masking, frame shuffling, rotation, jigsaw tiling, crop/zoom."""

from __future__ import annotations

import doctest

import pytest
import torch
from PIL import Image

import mmrl.perception.perturb as perturb_module
from mmrl.perception.perturb import crop_zoom, derangement, jigsaw, mask_patches, random_crop_box, rotate


def _gradient(w=6, h=4) -> Image.Image:
    im = Image.new("RGB", (w, h))
    for x in range(w):
        for y in range(h):
            im.putpixel((x, y), (x * 40, y * 60, 7))
    return im


def test_rotate_is_an_exact_counter_clockwise_turn():
    im = _gradient()
    r90 = rotate(im, 90)
    assert r90.size == (4, 6)
    assert r90.getpixel((0, 5)) == im.getpixel((0, 0))  # counter-clockwise: top-left goes to bottom-left
    assert rotate(rotate(im, 180), 180).tobytes() == im.tobytes()
    assert rotate(im, 0).tobytes() == im.tobytes() and rotate(im, 0) is not im
    with pytest.raises(ValueError, match="angle"):
        rotate(im, 45)


def test_jigsaw_places_original_tiles_and_inverts():
    im = _gradient(6, 4)
    order = [3, 1, 0, 2]
    out = jigsaw(im, 2, order)
    for pos, src in enumerate(order):  # the tile at `pos` is original tile `src`
        sx, sy = (src % 2) * 3, (src // 2) * 2
        px, py = (pos % 2) * 3, (pos // 2) * 2
        assert out.getpixel((px, py)) == im.getpixel((sx, sy))
    inverse = [order.index(k) for k in range(4)]
    assert jigsaw(out, 2, inverse).tobytes() == im.tobytes()
    with pytest.raises(ValueError, match="permutation"):
        jigsaw(im, 2, [0, 0, 1, 2])


def test_crop_zoom_and_random_boxes():
    im = _gradient(8, 8)
    z = crop_zoom(im, (0, 0, 4, 4))
    assert z.size == (8, 8) and z.getpixel((0, 0)) == im.getpixel((0, 0))
    with pytest.raises(ValueError, match="not inside"):
        crop_zoom(im, (0, 0, 9, 4))
    box = random_crop_box(100, 50, scale=(0.5, 0.5), seed=3)
    assert (box[2] - box[0], box[3] - box[1]) == (50, 25) and box == random_crop_box(100, 50, scale=(0.5, 0.5), seed=3)
    assert 0 <= box[0] and box[2] <= 100 and 0 <= box[1] and box[3] <= 50


def test_mask_patches_masks_whole_merge_groups_per_image():
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])  # 16 + 8 patches: 4 and 2 merge groups of 2×2
    pv = torch.arange(24 * 3, dtype=torch.float32).view(24, 3) + 1
    out = mask_patches(pv, grid, ratio=0.5, merge_size=2, seed=1)
    masked = (out == 0).all(dim=1)
    assert int(masked[:16].sum()) == 2 * 4 and int(masked[16:].sum()) == 1 * 4
    for start in range(0, 24, 4):  # a group is masked entirely or not at all
        assert masked[start : start + 4].all() or not masked[start : start + 4].any()
    assert torch.equal(out, mask_patches(pv, grid, ratio=0.5, merge_size=2, seed=1)) and torch.equal(pv[0], pv[0])
    assert not torch.equal(out, mask_patches(pv, grid, ratio=0.5, merge_size=2, seed=2))
    with pytest.raises(ValueError, match="ratio"):
        mask_patches(pv, grid, ratio=1.5)
    with pytest.raises(ValueError, match="covers"):
        mask_patches(pv[:20], grid, ratio=0.5)


def test_derangement_and_doctests():
    for n in range(2, 7):
        for seed in range(20):
            p = derangement(n, seed)
            assert sorted(p) == list(range(n)) and p != list(range(n))
    assert derangement(1, 0) == [0]
    assert doctest.testmod(perturb_module).failed == 0
