"""The offline model zoo: tiny random-init VLMs of the real architectures, built on the spot.

No machine here reaches a model hub, so tests and the demo use models built by this module: the real
transformers model and processor classes (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, and LLaVA as a non-Qwen
`AutoModelForImageTextToText` family), a byte-level BPE tokenizer trained on the spot with the real special
tokens, and a chat template. Everything is deterministic (fixed seed, fixed corpus), saved as a normal
checkpoint directory, and cached, so `model.path: zoo:qwen2_vl-tiny` and `model.path: /models/Qwen2-VL-2B`
go through the same loading code.

Names are `FAMILY` or `FAMILY-SIZE` with FAMILY in `families()` and SIZE in `tiny` (default) | `small`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

ZOO_VERSION = 5  # bump when a zoo model's recipe changes: the cache key includes it

QWEN_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
LLAVA_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<pad>"]

# The Qwen-VL chat template, written for content lists (text / image / video parts), behaving as the real
# checkpoints' templates do: Qwen2-VL and Qwen2.5-VL add the default system turn "You are a helpful assistant." when
# the conversation has none (Qwen3-VL does not); `add_vision_id=True` numbers the images / videos ("Picture 1: ").
# A recipe that wants no system prompt gives its own (`data.system_prompt`), as with a real checkpoint.
DEFAULT_SYSTEM = "You are a helpful assistant."


def qwen_chat_template(default_system: str | None) -> str:
    """The zoo's Qwen-VL chat template; `default_system` is the system turn added when a conversation has none."""
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + default_system
              + "<|im_end|>\n{% endif %}") if default_system else ""
    return (
        "{% set n = namespace(image=0, video=0) %}"
        "{% for message in messages %}" + system +
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' or 'image' in part %}{% set n.image = n.image + 1 %}"
        "{% if add_vision_id %}Picture {{ n.image }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif part['type'] == 'video' or 'video' in part %}{% set n.video = n.video + 1 %}"
        "{% if add_vision_id %}Video {{ n.video }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<image>\n"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The tokenizer's training text: the words and formats the synthetic tasks and rewards use, plus numbers.
_CORPUS_LINES = [
    "In which direction has the arrow been rotated? Answer with 0, 90, 180 or 270 inside <answer></answer>.",
    "Locate the red square. Locate the green circle. Locate the blue triangle. Locate the yellow shape.",
    "Answer with its bounding box [x1, y1, x2, y2] inside <answer></answer>.",
    "<think>Let me look at the image carefully.</think><answer>90</answer>",
    "<answer>0</answer> <answer>90</answer> <answer>180</answer> <answer>270</answer>",
    '{"bbox_2d": [12, 34, 56, 78], "label": "red triangle"} {"point_2d": [3, 4]}',
    "The answer is \\boxed{42}. How many objects are there? Which option is correct? A B C D",
    "You are a helpful assistant. What is shown in the image? Describe the video frame order.",
    "system user assistant image video frame first then left right up down top bottom",
]


@dataclass(frozen=True)
class ZooSpec:
    family: str
    size: str

    @property
    def name(self) -> str:
        return f"{self.family}-{self.size}"


# Text dims per size: hidden, layers, heads, kv heads, intermediate, vocab; vision: width, depth, heads.
_SIZES = {
    "tiny": dict(hidden=128, layers=2, heads=4, kv=2, inter=256, vocab=1024, v_dim=64, v_depth=2, v_heads=4),
    "small": dict(hidden=256, layers=4, heads=4, kv=2, inter=768, vocab=2048, v_dim=128, v_depth=4, v_heads=4),
}
_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")


def families() -> tuple[str, ...]:
    return _FAMILIES


def parse_name(name: str) -> ZooSpec:
    """`qwen2_vl` → (qwen2_vl, tiny); `qwen2_5_vl-small` → (qwen2_5_vl, small). Clear error otherwise."""
    family, _, size = name.partition("-")
    size = size or "tiny"
    if family not in _FAMILIES or size not in _SIZES:
        from mmrl.registry import closest

        options = [f"{f}-{s}" for f in _FAMILIES for s in _SIZES]
        hint = closest(name, options)
        raise ValueError(
            f"unknown zoo model {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
            + f" (valid: {', '.join(options)})"
        )
    return ZooSpec(family, size)


def cache_dir() -> Path:
    """Where built zoo models are cached: $MMRL_ZOO_CACHE, else ~/.cache/mmrl/zoo."""
    root = os.environ.get("MMRL_ZOO_CACHE") or Path.home() / ".cache" / "mmrl" / "zoo"
    return Path(root)


def resolve(path: str) -> str:
    """Turn `zoo:NAME` into a cached checkpoint directory (building it once); other paths pass through."""
    if not path.startswith("zoo:"):
        return path
    spec = parse_name(path[len("zoo:"):])
    out = cache_dir() / f"v{ZOO_VERSION}" / spec.name
    if not (out / "config.json").exists():
        build(spec.name, out, replace=False)  # several processes (torchrun) may build it at once: first one wins
    return str(out)


def build(name: str, out_dir: str | os.PathLike, *, replace: bool = True) -> Path:
    """Build zoo model `name` into `out_dir` (written to a temp dir, then renamed: never half-built). With
    `replace=False` a complete model already there (built meanwhile by another process: builds are
    deterministic) is kept and this build discarded."""
    spec = parse_name(name)
    return write_model(out_dir, spec.family, _SIZES[spec.size], meta={"name": spec.name, "version": ZOO_VERSION},
                       replace=replace)


def write_model(out_dir: str | os.PathLike, family: str, dims: dict[str, int], *, meta: dict,
                max_pixels: int | None = None, replace: bool = True) -> Path:
    """A random-init model of `family` with sizes `dims` (the keys of `_SIZES` entries), its trained-on-the-spot
    tokenizer and processor, written atomically to `out_dir`; `max_pixels` lifts the processor's image cap (CPU
    benchmarks at real image sizes). `meta` goes to `mmrl_zoo.json`."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        special = LLAVA_SPECIAL if family == "llava" else QWEN_SPECIAL
        template = LLAVA_CHAT_TEMPLATE if family == "llava" else qwen_chat_template(
            None if family == "qwen3_vl" else DEFAULT_SYSTEM)
        tokenizer = _train_tokenizer(dims["vocab"], special, template)
        processor = _make_processor(family, tokenizer, template)
        if max_pixels is not None:
            ip = processor.image_processor
            ip.size = {"shortest_edge": ip.size["shortest_edge"], "longest_edge": max_pixels}
            ip.max_pixels = max_pixels
        config = _make_config(family, dims, tokenizer)
        from transformers import AutoModelForImageTextToText

        with torch.random.fork_rng():  # a fixed init that leaves the caller's RNG as it was (a cached model
            torch.manual_seed(0)  # consumes none, so a first run must not either: LoRA init follows)
            model = AutoModelForImageTextToText.from_config(config)
        model.generation_config = generation_config(family, tokenizer)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "mmrl_zoo.json").write_text(json.dumps(meta))
        if not (tmp / "config.json").exists() or not list(tmp.glob("*.safetensors")):
            raise RuntimeError(f"zoo: the model was not written to {tmp} (transformers saves on rank 0 only inside a "
                               "process group: build zoo models before joining one)")
        if out.exists() and not replace and (out / "config.json").exists():
            return out  # another process finished first; never delete a model someone may be loading
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # a concurrent builder renamed its copy into place between the check and here
            if replace or not (out / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def generation_config(family: str, tokenizer):
    """The `generation_config.json` a released checkpoint of `family` ships: the Qwen-VL *-Instruct sampling
    defaults and eos list (<|im_end|>, then <|endoftext|>), which mmrl's rollouts must ignore (they reshape
    sampling if merged into it) — the zoo carries them so the suite tests what a real checkpoint does."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    if family == "llava":
        return GenerationConfig(eos_token_id=ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    common = dict(bos_token_id=ids("<|endoftext|>"), pad_token_id=ids("<|endoftext|>"), do_sample=True,
                  eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")])
    if family == "qwen3_vl":  # Qwen3-VL *-Instruct: the model card's recommended sampling
        return GenerationConfig(**common, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.0)
    return GenerationConfig(**common, temperature=0.01, top_k=1, top_p=0.001, repetition_penalty=1.05)


def _train_tokenizer(vocab_size: int, special: list[str], chat_template: str):
    """A byte-level BPE trained on a fixed corpus (deterministic), wrapped as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    numbers = [" ".join(str(n) for n in range(k, k + 50)) for k in range(0, 1000, 50)]
    tok.train_from_iterator(_CORPUS_LINES * 20 + numbers, trainer=trainer)
    is_llava = "<image>" in special
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<pad>" if is_llava else "<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="left",
        extra_special_tokens={} if is_llava else {
            "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
        },
    )
    fast.chat_template = chat_template
    return fast


def _make_processor(family: str, tokenizer, chat_template: str):
    import transformers as tf

    if family == "llava":
        image_proc = tf.CLIPImageProcessor(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        )
        return tf.LlavaProcessor(
            image_processor=image_proc, tokenizer=tokenizer, patch_size=14,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=chat_template,
        )
    patch = 16 if family == "qwen3_vl" else 14
    # Small images keep CPU runs fast: 56² … 224² pixels (4 … 64 vision tokens after the 2×2 merge).
    pix = dict(min_pixels=(2 * patch) ** 2, max_pixels=(8 * patch) ** 2, patch_size=patch)
    image_proc = tf.Qwen2VLImageProcessor(**pix)
    if family == "qwen3_vl":
        video_proc = tf.Qwen3VLVideoProcessor(
            size={"shortest_edge": (2 * patch) ** 2, "longest_edge": (8 * patch) ** 2 * 8}, patch_size=patch
        )
        cls = tf.Qwen3VLProcessor
    else:
        video_proc = tf.Qwen2VLVideoProcessor(min_pixels=(2 * patch) ** 2, max_pixels=(8 * patch) ** 2 * 8)
        cls = tf.Qwen2_5_VLProcessor if family == "qwen2_5_vl" else tf.Qwen2VLProcessor
    return cls(image_processor=image_proc, tokenizer=tokenizer, video_processor=video_proc,
               chat_template=chat_template)


def _make_config(family: str, d: dict, tokenizer):
    import transformers as tf

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_vocab() if t.startswith("<")}
    vocab = max(len(tokenizer), d.get("model_vocab", 0))  # rows of embedding / lm_head (a real model's, benchmarks)
    head_dim = d["hidden"] // d["heads"]
    text = dict(
        vocab_size=vocab, hidden_size=d["hidden"], intermediate_size=d["inter"],
        num_hidden_layers=d["layers"], num_attention_heads=d["heads"], num_key_value_heads=d["kv"],
        max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=tokenizer.pad_token_id,
    )
    if family == "llava":
        vision = tf.CLIPVisionConfig(
            hidden_size=d["v_dim"], intermediate_size=2 * d["v_dim"], num_hidden_layers=d["v_depth"],
            num_attention_heads=d["v_heads"], image_size=56, patch_size=14, projection_dim=d["v_dim"],
        )
        cfg = tf.LlavaConfig(
            vision_config=vision, text_config=tf.LlamaConfig(**text), image_token_index=ids["<image>"],
            vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=False,
        )
        _set_init_range(cfg, INIT_RANGE)
        return cfg
    # mrope sections (temporal, height, width) must sum to head_dim / 2.
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    # A small rope base: with head_dim 32, Qwen's 1e6 leaves the height/width sections of M-RoPE (the lowest
    # frequencies) rotating by < 0.03 rad per position, so a tiny model cannot tell image tokens apart by
    # position and spatial tasks plateau. Base 10 keeps every section in a usable range for short contexts.
    rope = {"rope_type": "default", "rope_theta": 10.0, "mrope_section": mrope}
    if family == "qwen3_vl":
        rope["mrope_interleaved"] = True
    special = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    vision = dict(depth=d["v_depth"], num_heads=d["v_heads"], spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_vl":
        cfg = tf.Qwen2VLConfig(
            text_config=dict(text, rope_parameters=rope),
            vision_config=dict(vision, embed_dim=d["v_dim"], hidden_size=d["hidden"], mlp_ratio=2,
                               patch_size=14),
            **special,
        )
    elif family == "qwen2_5_vl":
        cfg = tf.Qwen2_5_VLConfig(
            text_config=dict(text, rope_parameters=rope),
            vision_config=dict(vision, hidden_size=d["v_dim"], out_hidden_size=d["hidden"],
                               intermediate_size=2 * d["v_dim"], patch_size=14, window_size=56,
                               fullatt_block_indexes=[d["v_depth"] - 1]),
            **special,
        )
    else:
        cfg = tf.Qwen3VLConfig(
            text_config=dict(text, head_dim=head_dim, rope_parameters=rope),
            vision_config=dict(vision, hidden_size=d["v_dim"], out_hidden_size=d["hidden"],
                               intermediate_size=2 * d["v_dim"], patch_size=16, num_position_embeddings=64,
                               deepstack_visual_indexes=[0]),
            **special,
        )
    _set_init_range(cfg, INIT_RANGE)
    cfg.tie_word_embeddings = False
    return cfg


# Weight-init std of the zoo models. transformers' default (0.02) suits wide models; in these tiny ones it leaves
# attention logits so small that learning to look at the image plateaus for a long time. Measured on the demo's
# rotation puzzle (qwen2_vl-tiny, SFT on true labels, batch 32, lr 1e-3): 0.02 needs ~60 steps to leave chance,
# 0.05 ~30; with GRPO it cut the steps to ≥ 95 % held-out accuracy from > 150 to ~50 on two seeds.
INIT_RANGE = 0.05


def _set_init_range(cfg, value: float) -> None:
    for c in (cfg, getattr(cfg, "text_config", None), getattr(cfg, "vision_config", None)):
        if c is not None:
            c.initializer_range = value
