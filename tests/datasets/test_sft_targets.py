"""SFT targets for data in a peer's format (EasyR1 / HF `problem`|`prompt`-`answer`-`images`, LLaVA conversations):
an SFT stage with `labels: true` trains on the records' own answers (`<answer>…</answer>`, as the project's own tasks
do) or their assistant turn; records with nothing to train on are named before training — the stage, the source and
what is missing — instead of ending in `unknown target format ''` inside a step."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest
from PIL import Image

from mmrl.datasets.sample import BadSampleError, Sample

PHOTOS = Path(__file__).resolve().parent.parent / "fixtures" / "photos"


def _png(name: str) -> bytes:
    buf = io.BytesIO()
    Image.open(PHOTOS / name).resize((56, 56)).save(buf, format="PNG")
    return buf.getvalue()


def _peer_files(tmp_path: Path) -> dict[str, Path]:
    """An EasyR1 parquet (`problem`, `answer`, `images` as HF Image cells), an HF parquet saying `prompt`, and a
    LLaVA JSONL (`conversations`, `image`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    easyr1 = [{"problem": "<image>How many cats?", "answer": "1", "images": [{"bytes": _png("chelsea.jpg"), "path": None}]},
              {"problem": "<image>What is in the cup?", "answer": "coffee",
               "images": [{"bytes": _png("coffee.jpg"), "path": None}]}]
    pq.write_table(pa.Table.from_pylist(easyr1), tmp_path / "data.parquet")
    hf = [{"prompt": "What flies here?", "answer": "a rocket", "images": [{"bytes": _png("rocket.jpg"), "path": None}]}]
    pq.write_table(pa.Table.from_pylist(hf), tmp_path / "hf.parquet")
    Image.open(PHOTOS / "rocket.jpg").resize((56, 56)).save(tmp_path / "rocket.png")
    llava = [{"id": "l0", "image": "rocket.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat flies?"}, {"from": "gpt", "value": "A rocket."}]}]
    (tmp_path / "llava.jsonl").write_text("".join(json.dumps(r) + "\n" for r in llava))
    return {"easyr1": tmp_path / "data.parquet", "hf": tmp_path / "hf.parquet", "llava": tmp_path / "llava.jsonl"}


SFT = "stages=[{name: warm, kind: sft, steps: 1, labels: true}]"


@pytest.mark.parametrize("kind, targets", [
    ("easyr1", {"<answer>1</answer>", "<answer>coffee</answer>"}),
    ("hf", {"<answer>a rocket</answer>"}),
    ("llava", {"A rocket."}),
])
def test_sft_with_true_labels_trains_on_a_peer_data_sets_own_targets(tmp_path, tiny, kind, targets):
    from mmrl.train.trainer import Trainer

    path = _peer_files(tmp_path)[kind]
    trainer = Trainer(tiny(tmp_path / "run", f"data.train={{path: {path}}}", SFT, "data.eval.n=2"), log=lambda *a: None)
    stage = trainer.cfg.stages[0]
    prompts = trainer.batches.encode(trainer.data.train)
    assert set(trainer.sft.targets(prompts, stage)) == targets
    trainer.optim.new(stage)
    metrics = trainer.sft.run(stage)
    assert math.isfinite(metrics["sft/loss"]) and metrics["sft/loss"] > 0


def test_target_text_without_a_registered_format():
    from mmrl.datasets.synthetic import answer_target, random_target_text, target_text

    def s(answer, task=""):
        return Sample(id="x", messages=[], answer=answer, task=task)

    assert target_text(s("a rocket")) == answer_target("a rocket") == "<answer>a rocket</answer>"
    assert target_text(s(3)) == "<answer>3</answer>"
    mc = {"choice": "B", "options": ["cat", "dog", "cow"], "question": "?"}
    assert target_text(s(mc, task="vqa")) == "<answer>B</answer>"
    assert random_target_text(s(mc), random.Random(0)) in {"<answer>A</answer>", "<answer>B</answer>",
                                                              "<answer>C</answer>"}
    with pytest.raises(BadSampleError, match=r"'x': no SFT target: `answer` \{'boxes'.*task '' has no target format"):
        target_text(s({"boxes": [[0, 0, 1, 1]]}))
    with pytest.raises(BadSampleError, match=r"'x': no SFT target: no `answer`, no assistant turn"):
        target_text(s(None, task="puzzle/rotation"))  # was "<answer>None</answer>"
    with pytest.raises(BadSampleError, match=r"no random SFT target: task '' has no random-label format"):
        random_target_text(s("a rocket"), random.Random(0))


def test_target_problems_name_the_source_and_what_is_missing():
    from mmrl.datasets.synthetic import target_problems

    good = Sample(id="g", messages=[], answer="1")
    response_only = Sample(id="r", messages=[], meta={"response": "A rocket."})
    bare = Sample(id="b", messages=[])
    sources = {"data.train (a.jsonl)": [good, response_only], "data.mix[1] (b.jsonl)": [bare, bare],
               "stages[2].data (c.jsonl)": [good, bare]}
    assert target_problems(sources, "true") == [
        "data.mix[1] (b.jsonl): records have no target: no `answer`, no assistant turn (a LLaVA gpt reply,"
        " `meta.response`)",
        "stages[2].data (c.jsonl): 1 of 2 records (first 'b') have no target: no `answer`, no assistant turn (a LLaVA"
        " gpt reply, `meta.response`)",
    ]
    rotation = Sample(id="rot", messages=[], answer="90", task="puzzle/rotation")
    problems = target_problems({"data.train (a.jsonl)": [good], "data.eval (r.jsonl)": [rotation]}, "random")
    assert len(problems) == 1 and problems[0].startswith("data.train (a.jsonl): records have no target: task ''"
                                                         " has no random-label format")


@pytest.mark.parametrize("labels", ["true", "random"])
def test_an_sft_stage_without_targets_fails_before_the_model_loads(tmp_path, tiny, monkeypatch, labels):
    from mmrl.config import ConfigError
    from mmrl.model.policy import Policy
    from mmrl.train.trainer import Trainer

    rows = [{"id": f"q{i}", "prompt": "What flies?", "image": "rocket.png"} for i in range(2)]  # no answer
    Image.open(PHOTOS / "rocket.jpg").resize((56, 56)).save(tmp_path / "rocket.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if labels == "random":
        path = _peer_files(tmp_path)["llava"]
    monkeypatch.setattr(Policy, "load", lambda *a, **k: pytest.fail("the model loaded before the data was checked"))
    cfg = tiny(tmp_path / "run", f"data.train={{path: {path}}}", "rewards=[{fn: format}]",
               f"stages=[{{name: warm, kind: sft, steps: 1, labels: {labels}}}, {{name: rl, kind: rl, steps: 1}}]")
    what = "no `answer`, no assistant turn" if labels == "true" else "task '' has no random-label format"
    with pytest.raises(ConfigError, match=rf"stage 'warm' \(sft, labels: {labels}\): data.train \(.*{path.name}\):"
                                          rf" records have no target: {what}"):
        Trainer(cfg, log=lambda *a: None)
