"""Puzzles from a folder of real photographs (tests/fixtures/photos, scikit-image's CC0 / public-domain images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmrl.datasets.folder import from_folder, image_files
from mmrl.datasets.sample import BadSampleError
from mmrl.datasets.synthetic import _TRANSPOSE, random_target_text, target_text

PHOTOS = Path(__file__).resolve().parent.parent / "fixtures" / "photos"


@pytest.fixture()
def folder(tmp_path) -> Path:
    """The real photos plus a truncated JPEG, a text file named .png and a non-image file."""
    d = tmp_path / "imgs"
    shutil.copytree(PHOTOS, d)
    (d / "nested").mkdir()
    shutil.move(str(d / "rocket.jpg"), d / "nested" / "rocket.jpg")
    (d / "truncated.jpg").write_bytes((PHOTOS / "astronaut.jpg").read_bytes()[:300])
    (d / "garbage.png").write_text("not an image")
    return d


def test_fixture_photos_are_real_and_licensed():
    photos = image_files(PHOTOS)
    assert len(photos) >= 8 and (PHOTOS / "LICENSES.md").exists()
    for p in photos:
        assert p.name in (PHOTOS / "LICENSES.md").read_text()
        with Image.open(p) as im:
            assert max(im.size) == 96 and len(set(im.convert("L").tobytes())) > 50  # photographs, not flat fills


def test_rotation_from_folder_labels_the_real_transformation(folder):
    samples, skipped = from_folder("rotation", folder, per_image=2, size=64)
    assert sorted(s.split(":")[0] for s in skipped) == ["garbage.png", "truncated.jpg"]  # reported by name
    assert len(samples) == 2 * 10 and len({s.id for s in samples}) == 20
    by_source = {}
    for s in samples:
        by_source.setdefault(s.meta["source"], []).append(s)
    assert "nested/rocket.jpg" in by_source
    for rel, group in by_source.items():
        original = Image.open(folder / rel).convert("RGB")
        original.thumbnail((64, 64))
        for s in group:
            shown = s.media("image")[0]
            op = _TRANSPOSE[s.answer]
            expected = original.transpose(op) if op is not None else original
            assert shown.tobytes() == expected.tobytes(), (rel, s.answer)
            assert target_text(s) == f"<answer>{s.answer}</answer>"
    again, _ = from_folder("rotation", folder, per_image=2, size=64)
    assert [s.answer for s in again] == [s.answer for s in samples]  # seeded by file name


def test_jigsaw_order_reassembles_the_photo(folder):
    samples, skipped = from_folder("jigsaw", folder, size=80, grid=2)
    assert len(samples) == 10 and len(skipped) == 2
    for s in samples:
        order = s.answer["order"]
        assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]
        shown = s.media("image")[0]
        tw, th = shown.width // 2, shown.height // 2
        original = Image.open(folder / s.meta["source"]).convert("RGB")
        original.thumbnail((80, 80))
        for pos, src in enumerate(order):  # the tile at each position is original tile `src`
            got = shown.crop(((pos % 2) * tw, (pos // 2) * th, (pos % 2 + 1) * tw, (pos // 2 + 1) * th))
            want = original.crop(((src % 2) * tw, (src // 2) * th, (src % 2 + 1) * tw, (src // 2 + 1) * th))
            assert got.tobytes() == want.tobytes()
        assert target_text(s) == f"<answer>{order}</answer>"
        import random

        assert random_target_text(s, random.Random(0)).startswith("<answer>[")


def test_bad_files_can_stop_the_build_and_bad_options_fail(folder, tmp_path):
    with pytest.raises(BadSampleError, match="garbage.png"):
        from_folder("rotation", folder, on_bad_sample="raise")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_folder("rotation", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown folder puzzle"):
        from_folder("rotate", folder)


@pytest.mark.integration
def test_cli_folder_puzzles_then_grpo_steps(folder, tmp_path, tiny, capsys, length_reward, check_logged_run):
    import json

    from mmrl.cli import main
    from mmrl.datasets.jsonl import load_jsonl
    from mmrl.train.trainer import Trainer

    out = tmp_path / "data" / "train.jsonl"
    assert main(["data", "make", "rotation", "--images", str(folder), "--out", str(out), "--size", "56"]) == 0
    err = capsys.readouterr().err
    assert "skipped garbage.png" in err and "skipped truncated.jpg" in err and "10 samples, 2 files skipped" in err
    assert len(out.read_text().splitlines()) == 10
    assert main(["data", "make", "grounding", "--images", str(folder), "--out", str(out)]) == 2
    # the demo's accuracy + format rewards, + characters / 10 (an untrained policy scores 0 on the others)
    cfg = tiny(tmp_path / "run", f"data.train={{path: '{out}'}}", "stages=[{name: rl, kind: rl, steps: 2}]",
               "trainer.threads=2", f"rewards=[{{fn: answer_match, name: accuracy}}, {{fn: format, weight: 0.1}},"
               f" {{fn: '{length_reward}', name: len}}]")
    Trainer(cfg, log=lambda *a: None).run()
    photos = {s.id: s for s in load_jsonl(out)[0]}  # the folder's 10 photos, rotated
    logged = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 16 and all(r["answer"] == photos[r["sample_id"]].answer for r in logged)  # 2 groups × G 4
    rl = check_logged_run(tmp_path / "run", cfg, list(photos))
    assert len(rl) == 2 and any(r["adv/zero_frac"] < 1 for r in rl)


def test_position_shows_the_centre_tile_then_the_named_neighbour(folder):
    import random

    from mmrl.datasets.synthetic import POSITIONS
    from mmrl.rewards.puzzles import relative_position

    samples, skipped = from_folder("position", folder, size=90, per_image=3)
    assert len(samples) == 30 and len(skipped) == 2 and {s.task for s in samples} == {"puzzle/position"}
    assert {s.answer["relation"] for s in samples} == set(POSITIONS.values())  # all 8 neighbours occur
    offsets = {name: rc for rc, name in POSITIONS.items()}
    for s in samples:
        assert [p["type"] for p in s.messages[0]["content"]] == ["image", "image", "text"]
        centre, neighbour = s.media("image")
        original = Image.open(folder / s.meta["source"]).convert("RGB")
        original.thumbnail((90, 90))
        tw, th = original.width // 3, original.height // 3
        tile = lambda r, c: original.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th)).tobytes()  # noqa: E731
        dr, dc = offsets[s.answer["relation"]]
        assert centre.tobytes() == tile(1, 1) and neighbour.tobytes() == tile(1 + dr, 1 + dc)
        assert relative_position([target_text(s)], answer=[s.answer]) == [1.0]
    rng = random.Random(0)
    scores = relative_position([random_target_text(s, rng) for s in samples], answer=[s.answer for s in samples])
    assert sum(scores) / len(scores) < 0.5


def test_images_too_small_for_the_puzzle_are_skipped_or_stop_the_build(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    shutil.copy(PHOTOS / "astronaut.jpg", d / "astronaut.jpg")
    Image.new("RGB", (5, 5), "red").save(d / "tiny.png")
    samples, skipped = from_folder("position", d)
    assert len(samples) == 1 and len(skipped) == 1 and skipped[0].startswith("tiny.png: ") and "too small" in skipped[0]
    with pytest.raises(BadSampleError, match="tiny.png.*too small"):
        from_folder("position", d, on_bad_sample="raise")
