"""Self-supervised puzzles from any folder of images: the label comes from the transformation (SSL4RL, PC-GRPO).

`from_folder(task, directory, …)` reads every image file of a folder (sorted, recursively), each through the
safe loader (`mmrl.perception.images.load_image`: header pixel guard, EXIF orientation, RGB), shrinks it to
`size` pixels on its longer side and draws the puzzle with a generator seeded by (task, seed, file name, k):
- `rotation`: the photo turned by 0, 90, 180 or 270 degrees (counter-clockwise); answer the angle as a string;
- `jigsaw`: the photo cut into a `grid` × `grid` grid whose tiles are shuffled; answer `{"order": [...]}`, the
  original index of the tile now at each position in reading order (scored by the `jigsaw` reward);
- `position`: two tiles of a 3 × 3 grid shown as two images, the centre tile then one of its 8 neighbours;
  answer `{"relation": "top-left" | "above" | … | "bottom-right"}` (scored by `relative_position`).
A file that cannot be read, or is too small for its puzzle, is reported by name and skipped
(`on_bad_sample: skip`, the default here) or stops the build (`raise`); the skipped names are returned with
the samples.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.datasets.synthetic import ANGLES, POSITIONS, ROTATION_PROMPT, _media_parts
from mmrl.perception import perturb
from mmrl.perception.images import load_image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
JIGSAW_PROMPT = (
    "This picture was cut into a {g}x{g} grid and the tiles were shuffled. For each position in reading order, "
    "which original tile is there (0 = top-left, counting across then down)? Answer like <answer>{example}</answer>."
)


def image_files(directory: str | Path) -> list[Path]:
    """Image files below `directory` (by extension, case-insensitive), sorted; a missing folder is an error."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _shrink(image: Image.Image, size: int) -> Image.Image:
    image = image.copy()
    image.thumbnail((size, size))
    return image


def _rotation(image: Image.Image, rng: random.Random, **_) -> tuple[Image.Image, str, str]:
    angle = rng.choice(ANGLES)
    return perturb.rotate(image, int(angle)), ROTATION_PROMPT, angle


def _jigsaw(image: Image.Image, rng: random.Random, grid: int = 2) -> tuple[Image.Image, str, dict]:
    if image.width // grid < 2 or image.height // grid < 2:
        raise ValueError(f"image {image.width}x{image.height} is too small for a {grid}x{grid} jigsaw")
    order = perturb.derangement(grid * grid, rng.getrandbits(63))  # a jigsaw already solved teaches nothing
    example = str(list(range(grid * grid))[::-1])
    return perturb.jigsaw(image.convert("RGB"), grid, order), JIGSAW_PROMPT.format(g=grid, example=example), \
        {"order": order}


POSITION_PROMPT = (
    "Both pictures are tiles cut from a 3x3 grid laid over one photo: the first is the centre tile, the second "
    "one of its eight neighbours. Where does the second tile sit relative to the first? Answer with one of "
    "top-left, above, top-right, left, right, bottom-left, below, bottom-right inside <answer></answer>."
)


def _position(image: Image.Image, rng: random.Random, **_) -> tuple[list[Image.Image], str, dict]:
    """SSL4RL's relative-position task ("SSL4RL: Revisiting Self-supervised Learning as Intrinsic Reward for
    Visual-Language Reasoning", arXiv:2510.16416; after Doersch et al.'s context prediction, "Unsupervised
    Visual Representation Learning by Context Prediction", arXiv:1505.05192).

    The photo is cut into a 3 × 3 grid of w // 3 × h // 3 tiles (the right / bottom remainder dropped); shown
    are the centre tile (row 1, column 1) and the neighbour at (1 + dr, 1 + dc), (dr, dc) drawn uniformly from
    the 8 offsets; the answer names the offset (`synthetic.POSITIONS`: dr = −1 "above", dc = −1 "left", …).
    The tiles touch, so continuity across their shared border is a legitimate cue.
    """
    tw, th = image.width // 3, image.height // 3
    if tw < 2 or th < 2:
        raise ValueError(f"image {image.width}x{image.height} is too small for 3x3 position tiles")
    (dr, dc), relation = rng.choice(list(POSITIONS.items()))
    tile = lambda r, c: image.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th)).convert("RGB")  # noqa: E731
    return [tile(1, 1), tile(1 + dr, 1 + dc)], POSITION_PROMPT, {"relation": relation}


PUZZLES = {
    "rotation": ("puzzle/rotation", _rotation),
    "jigsaw": ("puzzle/jigsaw", _jigsaw),
    "position": ("puzzle/position", _position),
}


def from_folder(
    task: str, directory: str | Path, *, seed: int = 0, per_image: int = 1, size: int = 112, grid: int = 2,
    on_bad_sample: str = "skip", max_pixels: int | None = None,
) -> tuple[list[Sample], list[str]]:
    """(samples, names of the skipped files). Sample ids are `f"{task}-{file stem}-{k}"`."""
    if task not in PUZZLES:
        raise ValueError(f"unknown folder puzzle {task!r} (valid: {', '.join(sorted(PUZZLES))})")
    if on_bad_sample not in ("skip", "raise"):
        raise ValueError(f"on_bad_sample must be skip or raise, got {on_bad_sample!r}")
    sample_task, draw = PUZZLES[task]
    samples, skipped = [], []
    root = Path(directory)
    for path in image_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            kw = {"max_pixels": max_pixels} if max_pixels else {}
            image = _shrink(load_image(path, sample_id=rel, **kw), size)
        except BadSampleError as exc:
            if on_bad_sample == "raise":
                raise
            skipped.append(f"{rel}: {exc}")
            continue
        drawn = []
        try:
            for k in range(per_image):
                rng = random.Random(f"{task}/{seed}/{rel}/{k}")
                drawn.append(draw(image, rng, grid=grid))  # (picture or [pictures], prompt, answer)
        except ValueError as exc:  # e.g. too small for the puzzle: this file's fault, like an unreadable one
            if on_bad_sample == "raise":
                raise BadSampleError(rel, str(exc)) from None
            skipped.append(f"{rel}: {exc}")
            continue
        for k, (picture, prompt, answer) in enumerate(drawn):
            samples.append(Sample(
                id=f"{task}-{path.stem}-{k}",
                messages=[{"role": "user", "content": [*_media_parts(picture), {"type": "text", "text": prompt}]}],
                answer=answer, task=sample_task, meta={"source": rel, "seed": seed},
            ))
    return samples, skipped
