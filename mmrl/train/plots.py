"""Curves as PNG: one run's rewards, eval and training metrics (`mmrl plot RUN_DIR`), or several runs side by
side on chosen metrics (`mmrl plot RUN_A RUN_B … --out FILE`)."""

from __future__ import annotations

from pathlib import Path

from mmrl.train.metrics import read


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["train/step"], r[key]) for r in rows if r.get(key) is not None and "train/step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write `plots/rewards.png` and `plots/eval.png` (when there are eval rows); return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read(run_dir / "metrics.jsonl")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    groups = {
        "rewards.png": sorted({k for r in rows for k in r if k.startswith("reward/") and k.endswith("/mean")}),
        "eval.png": sorted({k for r in rows for k in r if k.startswith("eval/") and k != "eval/n"}),
        "training.png": [k for k in ("sft/loss", "actor/kl", "actor/entropy", "actor/clip_frac")
                         if any(r.get(k) is not None for r in rows)],
    }
    for fname, keys in groups.items():
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for key in keys:
            xs, ys = _series(rows, key)
            ax.plot(xs, ys, marker="o" if fname == "eval.png" else None, ms=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(f"{run_dir.name}: {fname[:-4]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname)
        plt.close(fig)
        written.append(out_dir / fname)
    return written


COMPARE_METRICS = ("eval/accuracy", "reward/total/mean", "actor/entropy")


def plot_compare(run_dirs: list[str | Path], out: str | Path, metrics: tuple[str, ...] = COMPARE_METRICS) -> Path:
    """One panel per metric, one line per run (labelled by its directory name); metrics no run has are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(d).name: read(Path(d) / "metrics.jsonl") for d in run_dirs}
    present = [m for m in metrics if any(r.get(m) is not None for rows in runs.values() for r in rows)]
    if not present:
        raise ValueError(f"none of {list(metrics)} occurs in {[str(d) for d in run_dirs]}")
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.6), dpi=100, squeeze=False)
    for ax, metric in zip(axes[0], present):
        for name, rows in runs.items():
            xs, ys = _series(rows, metric)
            ax.plot(xs, ys, marker="o" if metric.startswith("eval/") else None, ms=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


GT_COLOUR, PRED_COLOUR = (0, 200, 0), (230, 0, 0)


def pass_curve(curve: dict[int, float], out: str | Path, *, title: str = "") -> Path:
    """pass@j against j (j = 1 … k) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(curve)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(ks, [curve[j] for j in ks], marker="o")
    ax.set(xlabel="k (samples per prompt)", ylabel="pass@k", ylim=(0, 1.02), title=title)
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _answer_picture(sample):
    """The image the answer's boxes refer to (`answer["media"]`, else the first); for a video, its first frame."""
    from mmrl.perception.images import load_image
    from mmrl.perception.video import Clip, load_video
    from mmrl.model.prompts import answer_media

    k = answer_media(sample)
    kind = sample.media_kinds()[k]
    src = sample.media(kind)[sample.media_kinds()[:k].count(kind)]
    if kind == "image":
        return load_image(src, sample_id=sample.id)
    if isinstance(src, Clip):
        return src.frames[0].copy()
    if isinstance(src, (list, tuple)):
        return load_image(src[0], sample_id=sample.id)
    return load_video(src, sample_id=sample.id, fps=None, num_frames=1).frames[0]


def box_grid(samples: list, texts: list[str], geometries: list, out: str | Path, *, columns: int = 4,
             scale: int = 3, limit: int = 16) -> Path:
    """A grid of the first `limit` samples' images (each enlarged `scale`× without smoothing) with their
    ground-truth boxes (green) and the boxes parsed from the model's answers (red), mapped to original pixels
    through each prompt's `Geometry`. Boxes are drawn 1 enlarged pixel wide on their edges."""
    from PIL import Image, ImageDraw

    from mmrl.rewards.parsing import parse_objects

    tiles = []
    for sample, text, geo in list(zip(samples, texts, geometries))[:limit]:
        image = _answer_picture(sample)
        big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        draw = ImageDraw.Draw(big)
        gt = sample.answer.get("boxes", []) if isinstance(sample.answer, dict) else []
        pred = parse_objects(text).boxes
        if geo is not None and pred:
            try:
                pred = geo.to_original(pred)
            except (ValueError, TypeError, OverflowError):
                pred = []
        for boxes, colour in ((gt, GT_COLOUR), (pred, PRED_COLOUR)):
            for x1, y1, x2, y2 in boxes:
                draw.rectangle([x1 * scale, y1 * scale, x2 * scale - 1, y2 * scale - 1], outline=colour)
        tiles.append(big)
    if not tiles:
        raise ValueError("no samples to draw")
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (w * min(columns, len(tiles)), h * rows), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * w, (i // columns) * h))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


CALL_COLOURS = [(230, 0, 0), (0, 90, 230), (230, 150, 0), (160, 0, 200)]  # the 1st, 2nd … call's box and crop


def trajectory_sheet(samples: list, trajectories: list[dict], texts: list[str], out: str | Path, *,
                     height: int = 224, limit: int = 8, views: list | None = None) -> Path:
    """Thinking with images, shown: one row per sample (the first `limit`) — with `views` (each sample's prompt-image
    `Geometry`) first the image as the model saw it (resized to the processor's size, then enlarged), then the
    prompt's image with the box of each tool call drawn in that call's colour (and the ground-truth box in green
    when the answer has one), the region of each call cut from the original pixels beside it — at the size the
    model was shown it when the call records one (`views`), enlarged —, framed in the same colour, then the final
    answer and the truth. Boxes come from the `trajectory` column (original pixels, `info["box"]` of the tools'
    results); a call without a box (an error, a tool that draws no region) gets a grey tile with its observation
    text."""
    from PIL import Image, ImageDraw

    rows = []
    views = list(views) if views is not None else [None] * len(samples)
    for sample, traj, text, view in list(zip(samples, trajectories, texts, views))[:limit]:
        image = _answer_picture(sample).convert("RGB")
        k = height / image.height
        big = image.resize((max(1, round(image.width * k)), height), Image.NEAREST)
        draw = ImageDraw.Draw(big)
        truth = sample.answer.get("boxes", []) if isinstance(sample.answer, dict) else []
        for x1, y1, x2, y2 in truth:
            draw.rectangle([x1 * k, y1 * k, x2 * k - 1, y2 * k - 1], outline=GT_COLOUR, width=2)
        tiles = [big]
        if view is not None:  # what the vision tower got: the processor's resize (bicubic), shown enlarged
            seen = image.resize((view.proc_w, view.proc_h), Image.BICUBIC)
            tiles.insert(0, seen.resize(big.size, Image.NEAREST))
        for i, call in enumerate(traj["calls"]):
            colour = CALL_COLOURS[i % len(CALL_COLOURS)]
            box = call.get("box")
            if box is None or call.get("origin") not in (0, None):
                tile = Image.new("RGB", (height, height), (220, 220, 220))
                ImageDraw.Draw(tile).text((6, 6), _wrap(str(call.get("text", "")), 28), fill=(0, 0, 0))
            else:
                x1, y1, x2, y2 = box
                draw.rectangle([x1 * k, y1 * k, x2 * k - 1, y2 * k - 1], outline=colour, width=3)
                crop = image.crop(tuple(round(v) for v in box))
                if call.get("views"):  # as the processor showed it (bicubic, as Qwen's), then enlarged
                    vw, vh = call["views"][0]
                    if (vw > vh) != (crop.width > crop.height):  # a turned view (`rotate`): the crop is drawn unturned
                        vw, vh = vh, vw
                    crop = crop.resize((vw, vh), Image.BICUBIC)
                s = height / max(crop.height, 1)
                tile = crop.resize((max(1, round(crop.width * s)), height), Image.NEAREST)
                ImageDraw.Draw(tile).rectangle([0, 0, tile.width - 1, tile.height - 1], outline=colour, width=3)
            tiles.append(tile)
        note = Image.new("RGB", (height + 60, height), (255, 255, 255))
        answer = sample.answer
        if isinstance(answer, dict):  # the boxes are drawn; the rest is the truth
            answer = {key: v for key, v in answer.items() if key != "boxes"}
        ImageDraw.Draw(note).text((6, 6), _wrap(f"answer: {text}", 34) + f"\n\ntruth: {answer}\n"
                                  f"turns: {traj['turns']} ({traj['finish_reason']})", fill=(0, 0, 0))
        tiles.append(note)
        rows.append(tiles)
    if not rows:
        raise ValueError("no trajectories to draw")
    gap = 6
    width = max(sum(t.width for t in r) + gap * (len(r) - 1) for r in rows)
    sheet = Image.new("RGB", (width, len(rows) * (height + gap)), (255, 255, 255))
    for j, r in enumerate(rows):
        x = 0
        for t in r:
            sheet.paste(t, (x, j * (height + gap)))
            x += t.width + gap
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:8])
