"""Loaders for the formats people already have, each read from a small file written here from its documented
schema: VLM-R1 REC JSON, EasyR1 / HF (`problem`, `answer`, `images`) as JSONL, parquet and a saved `datasets`
directory, LLaVA conversations; field mapping, templates, and errors naming the file, record and field."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmrl.datasets.formats import detect, load_file
from mmrl.datasets.sample import BadSampleError

PHOTOS = Path(__file__).resolve().parent.parent / "fixtures" / "photos"


@pytest.fixture()
def images(tmp_path) -> Path:
    d = tmp_path / "coco"
    d.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        (d / name).write_bytes((PHOTOS / name).read_bytes())
    return d


def _write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_vlm_r1_rec_json(tmp_path, images):
    rows = [{"image": "chelsea.jpg", "problem": "the cat", "solution": [3, 4, 60, 50], "normal_caption": "cat"},
            {"image": "coffee.jpg", "problem": "the cup", "solution": "<answer>[10.5, 2, 40, 30]</answer>"}]
    path = _write_json(tmp_path / "refcoco_train.json", rows)
    samples, skipped = load_file(path, image_root=images)
    assert skipped == 0 and [s.task for s in samples] == ["grounding", "grounding"]
    assert samples[0].answer == {"boxes": [[3.0, 4.0, 60.0, 50.0]], "labels": ["the cat"]}
    assert samples[1].answer["boxes"] == [[10.5, 2.0, 40.0, 30.0]]
    assert samples[0].media("image") == [str(images / "chelsea.jpg")]
    assert "Locate the cat." in samples[0].messages[0]["content"][1]["text"]
    assert samples[0].meta == {"normal_caption": "cat"} and samples[0].id == f"{path}[0]"
    custom, _ = load_file(path, image_root=images, template="Find {problem} and give its box.")
    assert custom[0].messages[0]["content"][1]["text"] == "Find the cat and give its box."


def test_easyr1_layouts_jsonl_parquet_and_saved_dataset(tmp_path, images):
    buf = io.BytesIO()
    Image.open(images / "rocket.jpg").save(buf, format="PNG")
    rows = [{"problem": "<image>How many cats?", "answer": "1", "images": ["chelsea.jpg"]},
            {"problem": "Compare <image> with <image>.", "answer": "B", "images": ["coffee.jpg", "rocket.jpg"]},
            {"problem": "What flies?", "answer": "a rocket", "images": [{"bytes": buf.getvalue(), "path": None}]}]
    jsonl = _write_jsonl(tmp_path / "train.jsonl", rows[:2])
    samples, _ = load_file(jsonl, image_root=images)
    parts = [p["type"] for p in samples[1].messages[0]["content"]]
    assert parts == ["text", "image", "text", "image", "text"]  # images where the placeholders stood
    assert samples[0].messages[0]["content"][0]["type"] == "image" and samples[0].answer == "1"

    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = [dict(r, images=[{"bytes": None, "path": p} if isinstance(p, str) else p for p in r["images"]])
             for r in rows]  # an HF Image column: every cell a {bytes, path} struct
    pq.write_table(pa.Table.from_pylist(cells), tmp_path / "train.parquet")
    from_parquet, _ = load_file(tmp_path / "train.parquet", image_root=images)
    assert [s.answer for s in from_parquet] == ["1", "B", "a rocket"]
    in_memory = from_parquet[2].media("image")[0]
    assert isinstance(in_memory, Image.Image) and in_memory.size == Image.open(images / "rocket.jpg").size

    import datasets

    datasets.Dataset.from_list(rows[:2]).save_to_disk(str(tmp_path / "saved"))
    saved, _ = load_file(tmp_path / "saved", image_root=images)
    assert [s.answer for s in saved] == ["1", "B"]


def test_llava_conversations_and_field_mapping(tmp_path, images):
    rows = [{"id": "l0", "image": "chelsea.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat animal is this?"}, {"from": "gpt", "value": "A cat."}]}]
    samples, _ = load_file(_write_json(tmp_path / "llava.json", rows), image_root=images)
    s = samples[0]
    assert s.id == "l0" and s.answer == "A cat." and s.media("image") == [str(images / "chelsea.jpg")]
    assert s.messages[0]["content"][-1]["text"] == "What animal is this?"
    renamed = [{"question": "<image>Colour?", "label": "red", "pics": ["coffee.jpg"]}]
    mapped, _ = load_file(_write_jsonl(tmp_path / "mine.jsonl", renamed), image_root=images,
                          fields={"problem": "question", "answer": "label", "images": "pics"})
    assert mapped[0].answer == "red" and detect({"problem": "x", "answer": "y"}) == "easyr1"


def test_errors_name_file_record_and_field_and_can_be_skipped(tmp_path, images):
    rows = [{"image": "chelsea.jpg", "problem": "the cat", "solution": [1, 2, 3]},
            {"image": "missing.jpg", "problem": "a dog", "solution": [1, 2, 3, 4]},
            {"problem": "<image>?", "answer": "x", "images": ["chelsea.jpg"]},
            {"what": "is this"}]
    path = _write_json(tmp_path / "mixed.json", rows)
    with pytest.raises(BadSampleError, match=r"mixed.json\[0\]: field 'solution': expected a box"):
        load_file(path, image_root=images)
    samples, skipped = load_file(path, image_root=images, on_bad_sample="skip")
    assert len(samples) == 1 and skipped == 3
    with pytest.raises(BadSampleError, match=r"m2.json\[0\].*missing.jpg"):
        load_file(_write_json(tmp_path / "m2.json", rows[1:2]), image_root=images)
    with pytest.raises(BadSampleError, match=r"\[0\]: field '<record>': cannot tell its format"):
        load_file(_write_json(tmp_path / "m3.json", rows[3:]))
    with pytest.raises(BadSampleError, match=r"field 'pics': missing \(mapped to 'images'"):
        load_file(_write_jsonl(tmp_path / "m4.jsonl", [{"problem": "?", "answer": "x"}]), fields={"images": "pics"})
    (tmp_path / "bad.jsonl").write_text('{"problem": "x", "answer": "y"}\n{not json\n')
    with pytest.raises(BadSampleError, match=r"bad.jsonl:2: invalid JSON"):
        load_file(tmp_path / "bad.jsonl")
    with pytest.raises(BadSampleError, match="unknown data file type"):
        load_file(_write_json(tmp_path / "x.txt", []))


def test_config_names_the_format(tmp_path):
    from mmrl.cli.checks import load_config
    from mmrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.train.format: .*did you mean 'llava'"):
        load_config(None, ["data.train={path: x.json, format: lava}"])
