"""Pictures: the eval grid of ground-truth and predicted boxes (pixel colours along the edges), run comparisons."""

from __future__ import annotations

import pytest

from mmrl.datasets.synthetic import make
from mmrl.perception.geometry import Geometry
from mmrl.train.plots import GT_COLOUR, PRED_COLOUR, box_grid


def _edges(box, scale):
    x1, y1, x2, y2 = (int(v) for v in box)
    xs = range(x1 * scale + 1, x2 * scale - 2)
    ys = range(y1 * scale + 1, y2 * scale - 2)
    return ([(x, y1 * scale) for x in xs] + [(x, y2 * scale - 1) for x in xs]
            + [(x1 * scale, y) for y in ys] + [(x2 * scale - 1, y) for y in ys])


def test_box_grid_draws_ground_truth_and_predictions_where_they_are(tmp_path):
    from PIL import Image

    samples = make("grounding", 3, seed=5)
    geos = [Geometry(112, 84, 224, 168, "qwen2_5_vl") for _ in samples]  # model pixels = 2 × original
    preds = [[5, 5, 30, 25], [60, 40, 100, 80], [10, 50, 40, 75]]  # original pixels
    texts = [f"<answer>{geos[i].from_original([preds[i]])[0]}</answer>" for i in range(3)]
    texts[2] = "no box at all"
    out = box_grid(samples, texts, geos, tmp_path / "grid.png", columns=2, scale=3)
    sheet = Image.open(out).convert("RGB")
    assert sheet.size == (2 * 112 * 3, 2 * 84 * 3)
    for i, s in enumerate(samples):
        ox, oy = (i % 2) * 112 * 3, (i // 2) * 84 * 3
        gt = s.answer["boxes"][0]
        on_gt = [sheet.getpixel((ox + x, oy + y)) for x, y in _edges(gt, 3)]
        assert sum(p == GT_COLOUR for p in on_gt) >= 0.9 * len(on_gt), i  # (a crossing red edge may cover a few)
        if i < 2:  # the prediction, written in the model's pixels, lands on its original-pixel box
            on_pred = [sheet.getpixel((ox + x, oy + y)) for x, y in _edges(preds[i], 3)]
            assert sum(p == PRED_COLOUR for p in on_pred) >= 0.9 * len(on_pred), i
    assert PRED_COLOUR not in {sheet.getpixel((112 * 3 * 0 + x, 84 * 3 + y)) for x in range(0, 336, 3) for y in range(0, 252, 3)}
    with pytest.raises(ValueError, match="no samples"):
        box_grid([], [], [], tmp_path / "none.png")


def test_trajectory_sheet_shows_the_image_as_the_model_saw_it(tmp_path):
    """`views` put the prompt's image at the processor's size first (a 224-px zoom canvas seen at 28 px is 28 x 28
    blocks of 8 x 8 equal pixels once enlarged to 224), then the canvas with the call's box, the crop (at the size the
    model was shown it when the call records it), the answer."""
    from PIL import Image

    from mmrl.train.plots import trajectory_sheet

    (sample,) = make("zoom", 1, seed=3)
    box = sample.answer["boxes"][0]
    traj = {"calls": [{"box": box, "origin": 0, "text": ""}], "turns": 2, "finish_reason": "eos"}
    plain = Image.open(trajectory_sheet([sample], [traj], ["<answer>0</answer>"], tmp_path / "a.png")).convert("RGB")
    seen = Image.open(trajectory_sheet([sample], [traj], ["<answer>0</answer>"], tmp_path / "b.png",
                                       views=[Geometry(224, 224, 28, 28, "qwen2_vl")])).convert("RGB")
    assert seen.width == plain.width + 224 + 6 and seen.height == plain.height
    tile = seen.crop((0, 0, 224, 224))
    small = tile.resize((28, 28), Image.NEAREST)
    assert small.resize((224, 224), Image.NEAREST).tobytes() == tile.tobytes()  # 8 x 8 blocks: 28 px of detail
    assert seen.crop((230, 0, seen.width, seen.height)).tobytes() == plain.tobytes()  # the rest as before
    # a call that records the size its image was shown at (`views`) is drawn at that size: 28 px -> 8 x 8 blocks
    shown = dict(traj, calls=[dict(traj["calls"][0], views=[[28, 28]])])
    both = Image.open(trajectory_sheet([sample], [shown], ["<answer>0</answer>"], tmp_path / "c.png",
                                       views=[Geometry(224, 224, 28, 28, "qwen2_vl")])).convert("RGB")
    crop, full = both.crop((468, 8, 676, 216)), seen.crop((468, 8, 676, 216))  # inside the tile's 3-px frame
    assert crop.resize((26, 26), Image.NEAREST).resize((208, 208), Image.NEAREST).tobytes() == crop.tobytes()
    assert full.resize((26, 26), Image.NEAREST).resize((208, 208), Image.NEAREST).tobytes() != full.tobytes()
