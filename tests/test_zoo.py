"""The offline zoo: every family builds, loads through the Auto classes, processes an image, runs forward;
builds are deterministic and cached; names fail with a suggestion; special-token ids agree with the config."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrl.model import zoo

QWEN = [f for f in zoo.families() if f.startswith("qwen")]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("MMRL_ZOO_CACHE", str(tmp_path / "zoo-cache"))  # never touch ~/.cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:  # the hub reads the variable at import time
        import huggingface_hub.constants as hub_constants

        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    except (ImportError, AttributeError):
        pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each family built once for this module: {family: directory}."""
    root = tmp_path_factory.mktemp("zoo")
    return {f: zoo.build(f, root / f) for f in zoo.families()}


def n_params(directory) -> int:
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


@pytest.mark.parametrize("family", zoo.families())
def test_family_loads_processes_image_and_runs_forward(built, family):
    out = built[family]
    assert json.loads((out / "mmrl_zoo.json").read_text()) == {"name": f"{family}-tiny", "version": zoo.ZOO_VERSION}
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    image = Image.new("RGB", (61, 45), (200, 30, 30))  # odd size: the processor must resize
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Locate the red square."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    image_token = model.config.image_token_id if family in QWEN else model.config.image_token_index
    n_image_tokens = int((inputs["input_ids"] == image_token).sum())
    if family in QWEN:  # one token per 2×2 merged patch
        assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4 > 0
    else:  # <image> expanded to one token per patch of the resized square image; "default" drops the CLS token
        vc = model.config.vision_config
        assert model.config.vision_feature_select_strategy == "default"
        assert n_image_tokens == (vc.image_size // vc.patch_size) ** 2 == 16  # 56 px / 14 px patches, squared
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert logits.shape[-1] == model.config.get_text_config().vocab_size
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", zoo.families())
def test_build_is_deterministic(built, family, tmp_path):
    again = zoo.build(family, tmp_path / "again")
    a, b = built[family], again
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_build_leaves_no_temp_dirs_and_overwrites(tmp_path):
    out = tmp_path / "m"
    zoo.build("qwen2_vl", out)
    (out / "stale.txt").write_text("x")
    zoo.build("qwen2_vl", out)  # rebuild over an existing directory
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_build_leaves_the_callers_random_state_alone(tmp_path):
    """A first run (which builds the zoo model) and a later one (cached) must draw the same LoRA init after it."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.build("qwen2_vl", tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_resolve_builds_once_and_caches(tmp_path, monkeypatch):
    first = zoo.resolve("zoo:qwen2_vl")
    assert first == str(tmp_path / "zoo-cache" / f"v{zoo.ZOO_VERSION}" / "qwen2_vl-tiny")
    weights = os.path.join(first, "model.safetensors")
    mtime = os.stat(weights).st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("resolve rebuilt a cached zoo model")

    monkeypatch.setattr(zoo, "build", no_rebuild)
    assert zoo.resolve("zoo:qwen2_vl") == first
    assert zoo.resolve("zoo:qwen2_vl-tiny") == first  # the default size is the same cache entry
    assert os.stat(weights).st_mtime_ns == mtime


def test_resolve_passes_other_paths_through():
    assert zoo.resolve("/models/Qwen2-VL-2B") == "/models/Qwen2-VL-2B"


def test_parse_name():
    assert zoo.parse_name("qwen2_vl") == zoo.ZooSpec("qwen2_vl", "tiny")
    assert zoo.parse_name("qwen2_5_vl-small") == zoo.ZooSpec("qwen2_5_vl", "small")
    assert zoo.parse_name("llava-small").name == "llava-small"


@pytest.mark.parametrize(("name", "hint"), [("qwen2vl", "qwen2_vl"), ("qwen2_vl-huge", "qwen2_vl"), ("lava", "llava")])
def test_parse_name_error_suggests(name, hint):
    with pytest.raises(ValueError) as err:
        zoo.parse_name(name)
    msg = str(err.value)
    assert f"unknown zoo model {name!r}" in msg and f"did you mean '{hint}" in msg
    assert all(f in msg for f in zoo.families())


@pytest.mark.parametrize("family", QWEN)
def test_qwen_special_token_ids_match_config(built, family):
    processor = AutoProcessor.from_pretrained(built[family])
    tok = processor.tokenizer
    cfg = AutoModelForImageTextToText.from_pretrained(built[family]).config
    vocab = tok.get_vocab()
    assert all(t in vocab for t in zoo.QWEN_SPECIAL)
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id == tok.image_token_id
    assert tok.convert_tokens_to_ids("<|video_pad|>") == cfg.video_token_id == tok.video_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id
    assert tok.convert_tokens_to_ids("<|vision_end|>") == cfg.vision_end_token_id
    for t in zoo.QWEN_SPECIAL:  # each special token is one id, never split by BPE
        assert tok.encode(t, add_special_tokens=False) == [vocab[t]]
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert max(vocab.values()) < cfg.get_text_config().vocab_size


def test_llava_special_token_ids_match_config(built):
    tok = AutoProcessor.from_pretrained(built["llava"]).tokenizer
    cfg = AutoModelForImageTextToText.from_pretrained(built["llava"]).config
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_index
    assert tok.pad_token == "<pad>" and tok.eos_token == "<|im_end|>"


@pytest.mark.parametrize("family", QWEN)
def test_generation_config_is_a_released_checkpoints(built, family):
    """The Qwen-VL *-Instruct `generation_config.json`: sampling defaults and the eos list <|im_end|>, <|endoftext|>."""
    cfg = json.loads((built[family] / "generation_config.json").read_text())
    tok = AutoProcessor.from_pretrained(built[family]).tokenizer
    end, text_end = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert cfg["eos_token_id"] == [end, text_end] and cfg["pad_token_id"] == text_end == tok.pad_token_id
    assert cfg["do_sample"] is True
    want = (0.7, 20, 0.8, 1.0) if family == "qwen3_vl" else (0.01, 1, 0.001, 1.05)
    assert (cfg["temperature"], cfg["top_k"], cfg["top_p"], cfg.get("repetition_penalty", 1.0)) == want


@pytest.mark.parametrize("family", QWEN)
def test_chat_template_default_system_turn(built, family):
    """Qwen2-VL / Qwen2.5-VL add "You are a helpful assistant." when no system turn is given; Qwen3-VL does not; a
    given system turn replaces it; `add_vision_id` numbers the pictures."""
    processor = AutoProcessor.from_pretrained(built[family])
    user = {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which?"}]}
    text = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    body = "<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * 2 + "Which?<|im_end|>\n"
    default = "" if family == "qwen3_vl" else "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert text == default + body + "<|im_start|>assistant\n"
    own = processor.apply_chat_template([{"role": "system", "content": "Be brief."}, user], tokenize=False)
    assert own == "<|im_start|>system\nBe brief.<|im_end|>\n" + body
    numbered = processor.apply_chat_template([user], tokenize=False, add_vision_id=True)
    assert "Picture 1: <|vision_start|>" in numbered and "Picture 2: <|vision_start|>" in numbered


def test_small_is_bigger_than_tiny(built, tmp_path):
    small = zoo.build("qwen2_vl-small", tmp_path / "small")
    assert n_params(small) > n_params(built["qwen2_vl"])
