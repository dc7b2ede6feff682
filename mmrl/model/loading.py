"""Loading a model: `model.path` (a zoo model, a local directory or a hub id in the cache) → the transformers
model and its processor, on the host, with the attention implementation and dtype the config asks for."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mmrl.config import ModelConfig
from mmrl.model import zoo
from mmrl.runtime import Runtime


class ModelLoadError(RuntimeError):
    """The model directory is missing or unusable."""


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path: str) -> bool:
    """`ORG/NAME` that is not a local path (a hub id, as every peer accepts in `model.path`)."""
    return bool(HUB_ID.match(path)) and not Path(path).exists()


def model_dir(path: str) -> str:
    """`model.path` → a local model directory: `zoo:NAME` (built once, offline), a local directory, or a hub id
    `ORG/NAME` resolved through the standard Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`). mmrl runs with
    `HF_HUB_OFFLINE=1` unless told otherwise, so a hub id must already be in the cache then (`hf download ORG/NAME`
    on a machine with network); with `HF_HUB_OFFLINE=0` it is downloaded."""
    if path.startswith("zoo:") or not is_hub_id(path):
        return zoo.resolve(path)
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", "")
    try:
        return snapshot_download(path, local_files_only=offline)
    except LocalEntryNotFoundError:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelLoadError(
            f"model.path: hub id {path!r} is not in the Hugging Face cache ({HF_HUB_CACHE}) and downloads are off "
            f"(HF_HUB_OFFLINE=1); download it first with `hf download {path}` (or set HF_HUB_OFFLINE=0), or give a "
            f"local directory") from None


def eos_ids(hf_model, tokenizer_eos: int) -> list[int]:
    """The tokenizer's eos id and every eos id of the checkpoint's `generation_config.json` (real Qwen-VL Instruct
    checkpoints list `<|im_end|>` and `<|endoftext|>`), in that order, without repeats."""
    declared = getattr(getattr(hf_model, "generation_config", None), "eos_token_id", None)
    declared = [declared] if isinstance(declared, int) else list(declared or [])
    return list(dict.fromkeys([tokenizer_eos, *(int(i) for i in declared)]))


def attention(name: str, runtime: Runtime | None, dtype: str) -> str:
    """`model.attn_implementation`: `auto` is flash_attention_2 when the model will be on CUDA in bfloat16 (flash
    attention computes in fp16/bf16 only; generation runs without autocast) and flash-attn imports — its varlen
    kernel then also serves packing — else sdpa; any other name is passed to transformers."""
    if name != "auto":
        return name
    if runtime is None or runtime.device.type != "cuda" or dtype != "bfloat16":
        return "sdpa"
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_transformers(cfg: ModelConfig, runtime: Runtime | None = None):
    """(model, processor, local directory) for `cfg.path`, on the host; ModelLoadError names the key and path."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = model_dir(cfg.path)
    if not Path(path).is_dir() or not (Path(path) / "config.json").exists():
        raise ModelLoadError(
            f"model.path: {cfg.path!r} is not a model directory (no config.json at {path}); use "
            f"`zoo:NAME` (one of {', '.join(zoo.families())}), a local checkpoint directory or a hub id"
        )
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype_of(cfg.dtype), attn_implementation=attention(cfg.attn_implementation, runtime, cfg.dtype)
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.path: cannot load {path}: {e}") from e
    if cfg.image_min_pixels is not None or cfg.image_max_pixels is not None:
        from mmrl.perception.geometry import set_pixel_limits

        try:
            set_pixel_limits(processor, cfg.image_min_pixels, cfg.image_max_pixels)
        except ValueError as e:
            raise ModelLoadError(f"model.image_min_pixels / image_max_pixels: {e}") from e
    return model, processor, path
