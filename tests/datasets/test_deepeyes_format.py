"""The `deepeyes` record format (mmrl.datasets.formats): verl's RL records as DeepEyes releases them — `prompt`
(chat messages with a system turn and `<image>` markers), `images` (paths or `{bytes, path}` cells),
`reward_model.ground_truth`, `data_source` / `extra_info` — read from the fixture (tests/fixtures/deepeyes: the
layout of ChenShawn/DeepEyes-Datasets-47k; train and eval records on two generated images) and from parquet written
here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmrl.datasets.formats import detect, load_file
from mmrl.datasets.sample import BadSampleError
from mmrl.datasets.sources import load_source

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "deepeyes"
TRAIN = FIXTURE / "train.jsonl"
EVAL = FIXTURE / "eval.jsonl"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _record(**over) -> dict:
    rec = {"data_source": "vstar", "prompt": [{"role": "user", "content": "<image>\nWhat colour?"}],
           "images": ["street.png"], "reward_model": {"ground_truth": "red"}, "extra_info": {"index": 0}}
    return {**rec, **over}


def test_fixture_records_are_detected_and_converted():
    assert all(detect(r) == "deepeyes" for r in _records(TRAIN) + _records(EVAL))
    samples, skipped = load_file(TRAIN)
    assert skipped == 0 and [s.answer for s in samples] == ["red", "2", "right"]
    s = samples[0]
    assert [m["role"] for m in s.messages] == ["system", "user"]
    system = s.messages[0]["content"]
    assert len(system) == 1 and "image_zoom_in_tool" in system[0]["text"]  # the record's own system prompt, kept
    user = s.messages[1]["content"]
    assert [p["type"] for p in user] == ["image", "text"]  # the <image> marker became the image part
    assert user[0]["image"] == str(FIXTURE / "street.png") and user[1]["text"].startswith("Question: What colour")
    assert "<image>" not in user[1]["text"]
    assert s.meta == {"data_source": "vstar", "ability": "vl", "env_name": "visual_toolbox_v2",
                      "reward_model": {"style": "rule"},
                      "extra_info": {"split": "train", "index": 0, "answer": "red",
                                     "question": "What colour is the small square near the top-left corner?"}}
    assert s.id == f"{TRAIN}:1" and s.task == ""
    assert samples[1].media("image") == [str(FIXTURE / "street.png")]  # an HF Image cell {bytes: null, path}
    assert [m["role"] for m in samples[2].messages] == ["user"]  # a record without a system turn
    assert samples[2].meta["data_source"] == "thinklite"
    named, _ = load_file(TRAIN, format="deepeyes")
    assert [n.messages for n in named] == [x.messages for x in samples]
    held_out, _ = load_file(EVAL)
    assert [s.answer for s in held_out] == ["triangle", "yellow"]
    assert {str(FIXTURE / "shelf.png")} == {m for s in held_out for m in s.media("image")}  # no training image


def test_system_prompt_of_the_record_wins_over_the_configured_one():
    samples, _ = load_source(task=None, path=str(TRAIN), n=0, seed=0, split="train", kwargs={},
                             system_prompt="Be brief.")
    assert "image_zoom_in_tool" in samples[0].messages[0]["content"][0]["text"]
    assert samples[2].messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert samples[0].source == f"train file {TRAIN}"


def test_parquet_with_image_bytes_and_markers_in_the_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(name: str) -> bytes:
        buf = io.BytesIO()
        Image.open(FIXTURE / name).save(buf, format="PNG")
        return buf.getvalue()

    rows = [
        _record(prompt=[{"role": "system", "content": "Tools: image_zoom_in_tool."},
                        {"role": "user", "content": "Compare <image> with <image>. Which has a triangle?"}],
                images=[{"bytes": png("street.png"), "path": "/gone/street.jpg"},  # bytes win over a stale path
                        {"bytes": png("shelf.png"), "path": None}],
                reward_model={"style": "rule", "ground_truth": "the second"}),
        _record(prompt=[{"role": "user", "content": "<image>Shape?"}],
                images=[{"bytes": png("shelf.png"), "path": None}],
                reward_model={"style": "rule", "ground_truth": "triangle"}),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data_0.1.2_visual_toolbox_v2.parquet")
    samples, _ = load_file(tmp_path / "data_0.1.2_visual_toolbox_v2.parquet")
    user = samples[0].messages[1]["content"]
    assert [p["type"] for p in user] == ["text", "image", "text", "image", "text"]  # images where the markers stood
    assert [p["text"] for p in user if p["type"] == "text"] == ["Compare", "with", ". Which has a triangle?"]
    first, second = samples[0].media("image")
    assert isinstance(first, Image.Image) and first.size == (112, 84) and second.size == (96, 96)
    assert samples[0].answer == "the second" and samples[0].meta["reward_model"] == {"style": "rule"}
    assert [p["type"] for p in samples[1].messages[0]["content"]] == ["image", "text"]
    templated, _ = load_file(tmp_path / "data_0.1.2_visual_toolbox_v2.parquet", template="{problem} One word.")
    assert templated[1].messages[0]["content"][-1]["text"] == "Shape? One word."


def test_records_without_markers_single_images_and_content_parts(tmp_path):
    rows = [_record(prompt=[{"role": "user", "content": "What colour is the square?"}]),  # no marker: image first
            _record(images="shelf.png", reward_model={"ground_truth": 3}),  # one image, not a list; a numeric truth
            _record(prompt=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]}])]
    samples, _ = load_file(_write_jsonl(tmp_path / "mine.jsonl", rows), image_root=FIXTURE)
    assert [p["type"] for p in samples[0].messages[0]["content"]] == ["image", "text"]
    assert samples[0].media("image") == [str(FIXTURE / "street.png")]
    assert samples[1].answer == 3 and samples[1].media("image") == [str(FIXTURE / "shelf.png")]
    assert "reward_model" not in samples[1].meta  # nothing besides the ground truth
    assert [p["type"] for p in samples[2].messages[0]["content"]] == ["image", "text"]  # content as a list of parts


def test_other_formats_are_still_detected_as_before():
    assert detect({"id": "a", "prompt": "x", "images": ["a.png"], "answer": "y"}) == "native"
    assert detect({"prompt": "<image>x", "images": [{"bytes": b"", "path": None}], "answer": "y"}) == "easyr1"
    assert detect({"prompt": [], "images": [], "reward_model": {}}) == "deepeyes"


@pytest.mark.parametrize(("over", "error"), [
    ({"reward_model": "red"}, r"field 'reward_model': expected an object with a ground_truth, got str"),
    ({"reward_model": {"style": "rule"}}, r"field 'reward_model.ground_truth': missing"),
    ({"reward_model": {"ground_truth": "  "}}, r"field 'reward_model.ground_truth': empty"),
    ({"prompt": "<image>What colour?"}, r"field 'prompt': expected a non-empty list of chat messages"),
    ({"prompt": [{"role": "human", "content": "x"}]}, r"field 'prompt\[0\].role': 'human' is not one of"),
    ({"prompt": [{"role": "user", "content": None}]}, r"field 'prompt\[0\].content': expected text or a list"),
    ({"prompt": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "red"}]},
     r"field 'prompt\[1\].role': the prompt must end with a user turn, not 'assistant'"),
    ({"prompt": [{"role": "user", "content": "<image> vs <image>?"}]},
     r"field 'images': 1 image\(s\) for 2 <image> marker\(s\) in the prompt"),
    ({"prompt": [{"role": "user", "content": ""}], "images": []}, r"field 'prompt\[0\].content': empty"),
    ({"images": ["missing.png"]}, r"missing.png"),
    ({"images": [7]}, r"field 'images\[0\]': expected an image path, bytes or image, got int"),
])
def test_errors_name_the_file_the_record_and_the_field(tmp_path, over, error):
    path = _write_jsonl(tmp_path / "bad.jsonl", [_record(), _record(**over)])
    with pytest.raises(BadSampleError, match=r"bad.jsonl:2: " + (error if "field" in error else ".*" + error)):
        load_file(path, format="deepeyes", image_root=FIXTURE)
    samples, skipped = load_file(path, format="deepeyes", image_root=FIXTURE, on_bad_sample="skip")
    assert len(samples) == 1 and skipped == 1


def test_config_accepts_the_format_by_name():
    from mmrl.cli.checks import load_config
    from mmrl.config import ConfigError

    cfg = load_config(None, [f"data.train={{path: {TRAIN}, format: deepeyes}}"])
    assert cfg.data.train.format == "deepeyes"
    with pytest.raises(ConfigError, match=r"data.train.format: .*did you mean 'deepeyes'"):
        load_config(None, [f"data.train={{path: {TRAIN}, format: deepeye}}"])


@pytest.mark.parametrize(("convention", "seen"), [("auto", [0.0, 48.0, 48.0, 96.0]),
                                                  ("pixel", [0.0, 42.0, 42.0, 84.0])])
def test_the_recipe_crops_a_record_image_and_pays_the_deepeyes_reward(zoo_cache, convention, seen):
    """recipes/deepeyes.yaml's tool and rewards on a held-out record, through the multi-turn loop of the zoo Qwen2.5-VL:
    a scripted `image_zoom_in_tool` call, then the right answer, scores 0.8 + 0.2 + 1.2. The 96 × 96 image reaches the
    model as 84 × 84, so the box [0, 42, 42, 84] is the lower-left quarter in Qwen2.5-VL's convention (the resized
    image's pixels, mapped to the original's) and original pixels with `model.box_convention=pixel`, as DeepEyes
    reads it."""
    from mmrl.cli.checks import load_config
    from mmrl.model.policy import Policy
    from mmrl.rewards import get as get_reward
    from mmrl.rollout.tool_engine import ToolEngine
    from mmrl.tools.toolbox import Toolbox

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "deepeyes.yaml"
    cfg = load_config(recipe, [f"model.box_convention={convention}"])
    policy = Policy.load(cfg.model)
    toolbox = Toolbox.from_configs(cfg.rollout.tools, cfg.rollout.tool_format)
    engine = ToolEngine(policy, toolbox, max_turns=cfg.rollout.max_turns, stops=cfg.rollout.tool_stops)
    try:
        sample = load_file(EVAL)[0][0]  # shelf.png, "What shape is inside the green box?"
        call = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 42, 42, 84]}}</tool_call>'
        ro = engine.scripted([policy.encode(sample)], [[f"<think>Look closer.</think> {call}",
                                                        "<think>A triangle.</think> <answer>triangle</answer>"]])
    finally:
        engine.close()
    (traj,) = ro.columns["trajectory"]
    (made,) = traj["calls"]
    assert made["tool"] == "image_zoom_in_tool" and made["error"] is None and made["box"] == seen
    assert traj["turns"] == 2 and ro.texts == ["<think>A triangle.</think> <answer>triangle</answer>"]
    columns = {"answer": [sample.answer], "trajectory": ro.columns["trajectory"]}
    total = sum(r.weight * get_reward(r.fn)(ro.texts, **columns, **r.kwargs)[0] for r in cfg.rewards)
    assert total == pytest.approx(0.8 + 0.2 + 1.2)
