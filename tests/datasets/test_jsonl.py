"""load_jsonl / write_jsonl: both line shapes, path resolution, round trip, and every error path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mmrl.datasets import synthetic
from mmrl.datasets.jsonl import load_jsonl, write_jsonl
from mmrl.datasets.sample import BadSampleError, Sample


def _write_lines(path: Path, rows: list) -> Path:
    """rows: dicts (dumped as JSON) or raw strings (written as they are)."""
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """tmp/ with data/img/cat.png and data/img/dog.png."""
    (tmp_path / "data" / "img").mkdir(parents=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(tmp_path / "data" / "img" / "cat.png")
    Image.new("RGB", (4, 4), (40, 50, 60)).save(tmp_path / "data" / "img" / "dog.png")
    return tmp_path


def test_short_form_resolves_relative_paths_images_first(folder):
    path = _write_lines(folder / "data" / "train.jsonl", [
        {"id": "a", "prompt": "What is it?", "image": "img/cat.png", "answer": "cat", "task": "vqa"},
        {"id": "b", "prompt": "Two?", "images": ["img/cat.png", str(folder / "data/img/dog.png")]},
        {"id": "c", "prompt": "No image.", "answer": "x"},
    ])
    (a, b, c), skipped = load_jsonl(path)
    assert skipped == 0
    assert a.messages == [{"role": "user", "content": [
        {"type": "image", "image": str(folder / "data" / "img" / "cat.png")},
        {"type": "text", "text": "What is it?"},
    ]}]
    assert (a.answer, a.task, a.meta) == ("cat", "vqa", {})
    assert b.media("image") == [str(folder / "data/img/cat.png"), str(folder / "data/img/dog.png")]
    assert all(Path(p).is_absolute() for p in b.media("image"))
    assert c.messages[0]["content"] == [{"type": "text", "text": "No image."}]


def test_native_form_resolves_paths_and_normalises_text(folder, monkeypatch):
    monkeypatch.chdir(folder)  # relative paths follow the file, not the working directory
    _write_lines(folder / "data" / "n.jsonl", [{
        "id": "n1", "task": "grounding", "meta": {"src": "x"},
        "answer": {"boxes": [[1, 2, 3, 4]], "labels": ["cat"]},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "image", "image": "img/cat.png"}, {"type": "text", "text": "Box?"},
            ]},
        ],
    }])
    (s,), skipped = load_jsonl("data/n.jsonl")
    assert skipped == 0
    assert s.messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert s.media("image") == [str(folder / "data" / "img" / "cat.png")]
    assert s.answer == {"boxes": [[1, 2, 3, 4]], "labels": ["cat"]} and s.meta == {"src": "x"}


def test_round_trip_of_synthetic_samples(tmp_path):
    samples = synthetic.make("grounding", 3, seed=1) + synthetic.make("rotation", 2, seed=1)
    path = write_jsonl(samples, tmp_path / "out" / "set.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["messages"][0]["content"][0]["image"] == "images/grounding-train-000000_0.png"
    loaded, skipped = load_jsonl(path)
    assert skipped == 0 and len(loaded) == len(samples)
    for before, after in zip(samples, loaded):
        for field in ("id", "answer", "task", "meta"):
            assert getattr(after, field) == getattr(before, field)
        (image_path,) = after.media("image")
        assert image_path == str(tmp_path / "out" / "images" / f"{before.id}_0.png")
        with Image.open(image_path) as im:
            assert im.convert("RGB").tobytes() == before.media("image")[0].tobytes()
        assert after.messages[0]["content"][1] == before.messages[0]["content"][1]
    again, _ = load_jsonl(write_jsonl(loaded, tmp_path / "copy.jsonl"))  # path media are written too
    assert [s.media("image") for s in again] == [s.media("image") for s in loaded]


def test_write_sanitises_ids_for_file_names(tmp_path):
    s = Sample("a/b:c", [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (2, 2))}]}])
    (back,), _ = load_jsonl(write_jsonl([s], tmp_path / "x.jsonl"))
    assert back.id == "a/b:c"
    assert Path(back.media("image")[0]).parent == tmp_path / "images"


BAD_LINES = [  # (line, expected id, words the message must contain)
    ('{"id": "j", "prompt": "x",', None, ["invalid JSON"]),
    ('["not", "an", "object"]', None, ["expected a JSON object"]),
    ({"prompt": "hi"}, None, ["'id'", "missing"]),
    ({"id": 7, "prompt": "hi"}, None, ["'id'", "expected str"]),
    ({"id": "m"}, "m", ["'messages'", "missing"]),
    ({"id": "t", "prompt": "hi", "task": 3}, "t", ["'task'", "expected str"]),
    ({"id": "u", "prompt": "hi", "anwser": 1}, "u", ["'anwser'", "did you mean 'answer'"]),
    ({"id": "p", "prompt": 5}, "p", ["'prompt'", "expected str"]),
    ({"id": "r", "messages": [{"content": "x"}]}, "r", ["messages[0].role"]),
    ({"id": "k", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "k",
     ["messages[0].content[0].type"]),
    ({"id": "i", "prompt": "x", "image": "img/missing.png"}, "i", ["missing.png", "not found"]),
    ({"id": "b", "prompt": "x", "task": "grounding", "answer": {"boxes": [[1, 2, "3", 4]]}}, "b",
     ["'answer'", "boxes[0]", "grounding"]),
    ({"id": "b2", "prompt": "x", "task": "grounding", "answer": {"boxes": [[5, 2, 3, 4]]}}, "b2", ["x2 < x1"]),
    ({"id": "s", "prompt": "x", "task": "temporal/event", "answer": {"span": [3.0, 1.0]}}, "s", ["start <= end"]),
    ({"id": "n", "prompt": "x", "task": "counting", "answer": {"count": -1}}, "n", ["'answer'", "count"]),
]


@pytest.mark.parametrize("line, sample_id, words", BAD_LINES)
def test_each_error_names_file_line_and_field(folder, line, sample_id, words):
    path = _write_lines(folder / "data" / "bad.jsonl", [{"id": "ok", "prompt": "fine"}, line])
    with pytest.raises(BadSampleError) as err:
        load_jsonl(path)
    expected_id = sample_id or f"{path}:2"
    assert err.value.sample_id == expected_id
    message = str(err.value)
    assert f"{path}:2" in message
    for word in words:
        assert word in message


def test_corrupt_and_truncated_images(folder):
    data = folder / "data"
    (data / "img" / "bad.png").write_bytes(b"definitely not a png")
    full = (data / "img" / "cat.png").read_bytes()
    (data / "img" / "cut.png").write_bytes(full[: len(full) // 2])
    path = _write_lines(data / "imgs.jsonl", [
        {"id": "bad", "prompt": "x", "image": "img/bad.png"},
        {"id": "cut", "messages": [{"role": "user", "content": [{"type": "image", "image": "img/cut.png"}]}]},
    ])
    field = re.escape("field 'messages[0].content[0].image'")
    expected = rf"imgs.jsonl:1: {field}: image file .*bad.png.*cannot be decoded"
    with pytest.raises(BadSampleError, match=expected):
        load_jsonl(path)
    samples, skipped = load_jsonl(path, on_bad_sample="skip")
    assert (samples, skipped) == ([], 2)
    unchecked, skipped = load_jsonl(path, check_media=False)
    assert [s.id for s in unchecked] == ["bad", "cut"] and skipped == 0


def test_skip_counts_every_bad_line(folder):
    bad = [line for line, _, _ in BAD_LINES]
    rows = [{"id": "ok1", "prompt": "a"}, *bad, "", {"id": "ok2", "prompt": "b"}]
    samples, skipped = load_jsonl(_write_lines(folder / "data" / "mixed.jsonl", rows), on_bad_sample="skip")
    assert [s.id for s in samples] == ["ok1", "ok2"]
    assert skipped == len(BAD_LINES)  # the blank line is not a sample


def test_duplicate_ids(folder):
    path = _write_lines(folder / "dup.jsonl", [
        {"id": "a", "prompt": "1"}, {"id": "b", "prompt": "2"}, {"id": "a", "prompt": "3"},
    ])
    with pytest.raises(BadSampleError, match=r"dup.jsonl:3: field 'id': duplicate id \(first on line 1\)"):
        load_jsonl(path)
    samples, skipped = load_jsonl(path, on_bad_sample="skip")
    assert [s.messages[0]["content"][0]["text"] for s in samples] == ["1", "2"] and skipped == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="on_bad_sample"):
        load_jsonl(tmp_path / "x.jsonl", on_bad_sample="ignore")
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        load_jsonl(tmp_path / "x.jsonl")
