from PIL import Image

from mmrl.datasets.sample import Sample
from mmrl.datasets.sources import drop_overlap, load_source


def _sample(i: int, image) -> Sample:
    return Sample(id=f"s{i}", messages=[{"role": "user", "content": [{"type": "image", "image": image}]}])


def test_drop_overlap_removes_pixel_identical_and_same_file_images():
    train = [_sample(0, Image.new("RGB", (8, 8), (1, 2, 3))), _sample(1, "/data/a.png")]
    held = [
        _sample(2, Image.new("RGB", (8, 8), (1, 2, 3))),  # same pixels as s0
        _sample(3, Image.new("RGB", (8, 8), (9, 9, 9))),
        _sample(4, "/data/a.png"),  # same file as s1
        _sample(5, "/data/b.png"),
    ]
    kept, dropped = drop_overlap(train, held)
    assert [s.id for s in kept] == ["s3", "s5"] and dropped == 2


def test_load_source_synthetic_is_deterministic():
    a, skipped = load_source(task="rotation", path=None, n=3, seed=0, split="eval", kwargs={})
    b, _ = load_source(task="rotation", path=None, n=3, seed=0, split="eval", kwargs={})
    assert skipped == 0 and [s.id for s in a] == [s.id for s in b]
    assert all(x.media()[0].tobytes() == y.media()[0].tobytes() for x, y in zip(a, b))


def test_templates_and_system_prompts_apply_per_source(tmp_path):
    import json

    import pytest

    a, _ = load_source(task="rotation", path=None, n=2, seed=0, split="train", kwargs={},
                       template="Puzzle: {problem} Think first.", system_prompt="You solve puzzles.")
    assert a[0].messages[0] == {"role": "system", "content": [{"type": "text", "text": "You solve puzzles."}]}
    text = a[0].messages[1]["content"][-1]["text"]
    assert text.startswith("Puzzle: In which direction") and text.endswith("Think first.")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    row = {"id": "n1", "answer": "cat", "messages": [
        {"role": "system", "content": "Own system turn."},
        {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "What is it?"}]}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    b, _ = load_source(task=None, path=str(tmp_path / "d.jsonl"), n=0, seed=0, split="train", kwargs={},
                       template="Q: {problem}", system_prompt="Ignored: the record has its own.")
    assert b[0].messages[0]["content"][0]["text"] == "Own system turn." and len(b[0].messages) == 2
    assert b[0].messages[1]["content"][1]["text"] == "Q: What is it?"
    for bad in ("no placeholder", "{problem} {other}"):
        with pytest.raises(ValueError, match="template"):
            load_source(task="rotation", path=None, n=1, seed=0, split="train", kwargs={}, template=bad)


def test_a_bad_template_is_a_config_error_naming_the_source():
    import pytest

    from mmrl.cli.checks import load_config
    from mmrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.mix\[1\]\.template: .*no \{problem\}"):
        load_config(None, ["data.mix=[{task: rotation, n: 4}, {task: grounding, n: 4, template: 'Find it.'}]"])


def test_an_empty_system_prompt_replaces_the_templates_default(zoo_cache):
    """`system_prompt: ""` gives an empty system turn (Qwen2-VL's template would add its default one); null keeps the
    template's default."""
    from mmrl.config import ModelConfig
    from mmrl.model.policy import Policy

    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    (plain,), _ = load_source(task="rotation", path=None, n=1, seed=0, split="train", kwargs={})
    (empty,), _ = load_source(task="rotation", path=None, n=1, seed=0, split="train", kwargs={}, system_prompt="")
    text = lambda s, sp=None: policy.tokenizer.decode(policy.encode(s, sp).tensors["input_ids"][0])  # noqa: E731
    assert text(plain).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user")
    assert text(empty).startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user")
    assert text(plain, "") == text(empty)  # data.system_prompt: "" does the same for every source
