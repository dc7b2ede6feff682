"""The policy: a VLM + its processor, in `full` or `lora` mode, with its reference and log-probs.

- Loads from any local directory (a zoo model via `zoo:NAME`, or a real checkpoint) with
  `AutoModelForImageTextToText` / `AutoProcessor`; nothing downloads.
- `full` mode trains all (unfrozen) weights; `lora` mode wraps the model with peft adapters and never
  changes a base weight. `freeze_vision` freezes the vision encoder (full) or keeps adapters off it (lora).
- Reference policy (DESIGN.md "Reference policy and stages"): fixed at the start of the first RL stage. In
  LoRA mode a stage boundary merges the trained adapter into the base and starts a fresh one, so the reference
  is "adapters disabled" (no second copy); in full mode a frozen copy is taken, only if a KL term needs it.
- Devices (`mmrl.runtime.Runtime`): the model (and its reference) lives on `runtime.device`; prompts are processed
  once on the host (`encode`: `PromptInputs` keep the processor's host tensors) and `collate` puts a batch of
  them on the device for every completion and pass.
- Log-probs and entropies come from the last hidden states through `mmrl.kernels.token_logprobs` (`kernels.backend`),
  which never holds the [tokens, vocab] logits; `model.packing` drops padding (`mmrl.packing`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmrl import zoo
from mmrl.config import KernelsConfig, ModelConfig
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.kernels import minp_log_mass, token_logprobs
from mmrl.kernels.logprobs import renormalize_without
from mmrl.packing import pack, rope_index_of
from mmrl.perception.geometry import Geometry, convention_for, processed_size
from mmrl.runtime import HOST, Runtime, autocast_dtype

TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
VISION_MODULE_WORDS = ("visual", "vision_tower", "vision_model")
# Special tokens a policy must never sample: they would desynchronise image features and placeholders.
NEVER_SAMPLE = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|im_start|>", "<image>", "<video>", "<pad>")


class ModelLoadError(RuntimeError):
    """The model directory is missing or unusable."""


@dataclass
class PromptInputs:
    """One prompt, processed once: token tensors [1, P] and media tensors, plus the geometry of each image and
    video in prompt order (a video's is its frames')."""

    sample: Sample
    tensors: dict[str, torch.Tensor]
    geometry: list[Geometry] = field(default_factory=list)
    clips: list[list[float]] = field(default_factory=list)  # per video: its sampled frames' times in seconds

    @property
    def length(self) -> int:
        return int(self.tensors["input_ids"].shape[1])

    @property
    def answer_geometry(self) -> Geometry | None:
        """The geometry the answer's coordinates refer to: that of the image or video `answer["media"]` indexes
        (0-based, images and videos counted together in prompt order), else the first; None without media."""
        k = answer_media(self.sample)
        return self.geometry[k] if k < len(self.geometry) else None


def answer_media(sample: Sample) -> int:
    """`answer["media"]` checked: an int in range of the sample's media parts (0 when absent)."""
    k = sample.answer.get("media", 0) if isinstance(sample.answer, dict) else 0
    n = len(sample.media_kinds())
    if isinstance(k, bool) or not isinstance(k, int) or not (0 <= k < max(n, 1)):
        raise BadSampleError(sample.id, f"answer['media']={k!r} must index one of its {n} images/videos (0-based)")
    return k


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


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _frames_clip(frames, sample_id: str, video):
    """A video given as a list of frames (paths or images), taken to be `video.fps` apart (1 s without a rate)."""
    from mmrl.perception.images import load_image
    from mmrl.perception.video import Clip

    if not frames:
        raise BadSampleError(sample_id, "a video given as frames has none")
    images = [load_image(f, sample_id=sample_id) for f in frames]
    rate = video.fps or 1.0
    return Clip(images, [i / rate for i in range(len(images))], rate, len(images) / rate, "frames")


def _in_memory_clip(clip, video):
    """A copy of an in-memory `Clip` (synthetic video tasks) thinned to `video.max_frames` evenly."""
    from mmrl.perception.video import Clip, pick_frames

    idx = pick_frames(clip.timestamps, fps=None, num_frames=None, max_frames=video.max_frames)
    return Clip([clip.frames[i].copy() for i in idx], [clip.timestamps[i] for i in idx], clip.fps, clip.duration,
                "memory", clip.source_size)


def _metadata(clip):
    """transformers' VideoMetadata for already-sampled frames: their own rate, indices 0…T−1, so the processor's
    time positions (Qwen2.5-VL's seconds per grid, Qwen3-VL's timestamps) match the clip's seconds."""
    from transformers.video_utils import VideoMetadata

    t = clip.timestamps
    rate = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else (clip.fps or 1.0)
    return VideoMetadata(total_num_frames=len(t), fps=rate, frames_indices=list(range(len(t))),
                         duration=len(t) / rate)


class Policy:
    def __init__(self, cfg: ModelConfig, hf_model, processor, path: str, kernels: KernelsConfig | None = None,
                 runtime: Runtime | None = None):
        self.cfg = cfg
        self.runtime = runtime or Runtime(HOST, autocast_dtype=autocast_dtype(cfg.autocast))
        self.kernels = kernels or KernelsConfig()
        self.hf = hf_model  # the transformers model (peft, if any, injects adapters into it in place)
        self.model = hf_model  # what is trained: the PeftModel in lora mode, else the same as `hf`
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.path = path
        self.model_type = getattr(hf_model.config, "model_type", "")
        self.convention = cfg.box_convention if cfg.box_convention != "auto" else convention_for(self.model_type)
        self.eos_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.eos_ids = eos_ids(hf_model, self.eos_id)  # every id that ends a completion (the checkpoint's list)
        vocab = self.tokenizer.get_vocab()
        self.never_sample = sorted({vocab[t] for t in NEVER_SAMPLE if t in vocab} - set(self.eos_ids))
        self.reference: torch.nn.Module | None = None  # full mode with KL: a frozen copy
        self.root = None  # its FSDP2 root over `hf` (and `ref_root` over the reference)
        self.ref_root = None
        self.merged_adapters: list[dict[str, torch.Tensor]] = []  # lora: adapters merged at stage boundaries

    # ------------------------------------------------------------------------------------------ loading
    @property
    def dist(self):
        """`mmrl.distributed.Dist` when sharded across processes, else None."""
        return self.runtime.dist

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @classmethod
    def load(cls, cfg: ModelConfig, kernels: KernelsConfig | None = None, runtime: Runtime | None = None) -> "Policy":
        """Load from `cfg.path` (on the host), set up full / LoRA training, and move to `runtime.device` — except
        across processes, where `shard` places each rank's shards on its device."""
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
                path, dtype=_dtype(cfg.dtype), attn_implementation=attention(cfg.attn_implementation, runtime, cfg.dtype)
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"model.path: cannot load {path}: {e}") from e
        policy = cls(cfg, model, processor, path, kernels, runtime)
        policy._setup_trainable()
        if policy.dist is None:
            policy.model.to(policy.device)
        return policy

    def _is_vision(self, name: str) -> bool:
        return any(w in name.split(".") for w in VISION_MODULE_WORDS)

    def _setup_trainable(self) -> None:
        if self.cfg.gradient_checkpointing:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.cfg.mode == "lora":
            self._add_adapter()
            return
        for name, p in self.hf.named_parameters():
            p.requires_grad_(not (self.cfg.freeze_vision and self._is_vision(name)))

    def _lora_target_regex(self) -> str:
        lang = "|".join(re.escape(m) for m in self.cfg.lora.target_modules)
        pattern = rf"(?!.*(?:{'|'.join(VISION_MODULE_WORDS)})).*\.(?:{lang})"
        if not self.cfg.freeze_vision:
            vis = "|".join(re.escape(m) for m in self.cfg.lora.vision_target_modules)
            pattern += rf"|.*(?:{'|'.join(VISION_MODULE_WORDS)}).*\.(?:{vis})"
        return pattern

    def _add_adapter(self) -> None:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=self.cfg.lora.r, lora_alpha=self.cfg.lora.alpha, lora_dropout=self.cfg.lora.dropout,
            target_modules=self._lora_target_regex(), bias="none",
        )
        self.model = get_peft_model(self.hf, lcfg)

    # -------------------------------------------------------------------------------------- processes
    def shard(self, *, needs_reference: bool, mixed_precision: str = "none", reshard_after_forward: bool = True) -> None:
        """FSDP2-shard the policy across the runtime's processes (`mmrl.distributed`), each rank's shards on its
        device. In full mode with a KL term the frozen reference is copied now and sharded alike; `begin_rl` then
        copies the weights into it."""
        from mmrl.distributed import shard

        kw = dict(mixed_precision=mixed_precision, reshard_after_forward=reshard_after_forward)
        if self.cfg.mode == "full" and needs_reference:
            self.reference = copy.deepcopy(self.hf).eval().requires_grad_(False)
            self.ref_root = shard(self.reference, self.device, **kw)
        self.root = shard(self.hf, self.device, **kw)

    def call(self, fn, model: torch.nn.Module | None = None):
        """`fn(model)` (default: the policy's transformers model) — through its FSDP root when sharded."""
        model = self.hf if model is None else model
        if self.root is None:
            return fn(model)
        return (self.ref_root if model is self.reference else self.root)(fn)

    # ------------------------------------------------------------------------------ stages / reference
    def begin_rl(self, needs_reference: bool, adapter_trained: bool) -> None:
        """Fix the reference policy at the start of the first RL stage (KL is exactly 0 at its first step)."""
        if self.cfg.mode == "lora":
            if adapter_trained:  # an SFT stage trained the adapter: fold it into the base, start fresh
                if self.root is not None:
                    raise RuntimeError("merging a LoRA adapter between stages is not supported across processes")
                self.merged_adapters.append(self.adapter_state())
                self.hf = self.model.merge_and_unload()
                self._add_adapter()
            return
        if needs_reference and self.ref_root is not None:  # sharded alike: copy shard by shard
            with torch.no_grad():
                for ref, cur in zip(self.reference.parameters(), self.hf.parameters()):
                    ref.copy_(cur)
        elif needs_reference:
            self.reference = copy.deepcopy(self.hf).eval().requires_grad_(False)

    def reset_reference(self) -> None:
        """π_ref ← π_θ (ProRL's reference reset). LoRA: the adapter is folded into the base and a fresh one starts
        (the parameters change: the caller makes a new optimizer); full: the frozen copy takes the current weights."""
        if self.cfg.mode == "lora":
            self.begin_rl(needs_reference=True, adapter_trained=True)
        elif self.reference is not None:
            self.begin_rl(needs_reference=True, adapter_trained=False)

    @contextlib.contextmanager
    def as_reference(self):
        """Within this context `self.hf` computes the reference policy's outputs."""
        if self.cfg.mode == "lora":
            with self.model.disable_adapter():
                yield self.hf
        else:
            if self.reference is None:
                raise RuntimeError("no reference policy: set algorithm.kl_coef > 0 before the RL stage begins")
            yield self.reference

    # ---------------------------------------------------------------------------------------- weights
    def adapter_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def state_for_checkpoint(self) -> dict[str, torch.Tensor]:
        """LoRA: adapter weights only. Full: every weight (so a checkpoint is a complete model)."""
        if self.cfg.mode == "lora":
            return self.adapter_state()
        return {k: v.detach() for k, v in self.hf.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.cfg.mode == "lora":
            from peft import set_peft_model_state_dict

            res = set_peft_model_state_dict(self.model, state)
            bad = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
            if bad:
                raise ValueError(f"adapter checkpoint does not match the model: unexpected {bad[:3]}")
            return
        missing, unexpected = self.hf.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise ValueError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def replay_merged_adapters(self, adapters: list[dict[str, torch.Tensor]]) -> None:
        """LoRA resume: re-apply and merge the adapters earlier stages merged, then start a fresh adapter."""
        from peft import set_peft_model_state_dict

        for state in adapters:
            set_peft_model_state_dict(self.model, state)
            self.merged_adapters.append(state)
            self.hf = self.model.merge_and_unload()
            self._add_adapter()

    # ----------------------------------------------------------------------------------------- inputs
    def encode(self, sample: Sample, system_prompt: str | None = None, video=None,
               frame_seed: int | None = None) -> PromptInputs:
        """Chat template + processor for one prompt; media loaded here and released on return.

        Video parts (a file path) are decoded and sampled by `mmrl.perception.video.load_video` with the options
        of `video` (a `VideoConfig`; defaults when None) and handed to the processor as frames with their
        metadata (rate of the sampled frames), never as a path; `PromptInputs.clips` keeps each video's frame
        timestamps in seconds. `frame_seed` shuffles each video's sampled frames (never keeping their order) — the
        temporal contrast of T-GRPO.
        """
        from mmrl.config import VideoConfig
        from mmrl.perception.images import load_image
        from mmrl.perception.video import Clip, load_video

        images = [load_image(src, sample_id=sample.id) for src in sample.media("image")]
        video = video or VideoConfig()
        clips = [_in_memory_clip(src, video) if isinstance(src, Clip) else
                 _frames_clip(src, sample.id, video) if isinstance(src, (list, tuple)) else
                 load_video(src, sample_id=sample.id, fps=video.fps, num_frames=video.num_frames,
                            max_frames=video.max_frames, max_pixels=video.max_pixels, backend=video.backend)
                 for src in sample.media("video")]
        if frame_seed is not None:
            from mmrl.perception.perturb import derangement

            for c in clips:
                perm = derangement(len(c.frames), frame_seed)
                c.frames = [c.frames[j] for j in perm]
        messages = sample.messages
        if system_prompt is not None and not any(m.get("role") == "system" for m in messages):  # "": an empty turn
            messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] + messages
        extra = {}
        if clips:
            extra = dict(videos=[c.frames for c in clips], video_metadata=[_metadata(c) for c in clips],
                         do_sample_frames=False)
        try:
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            out = self.processor(text=[text], images=images or None, return_tensors="pt", **extra)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise BadSampleError(sample.id, f"the processor rejected it: {e}") from e
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        for key in ("pixel_values", "pixel_values_videos"):
            if key in tensors:
                tensors[key] = tensors[key].to(self.hf.dtype)
        geometry = self._geometry(sample, images, clips, tensors)
        for im in images + [f for c in clips for f in c.frames]:
            im.close()
        return PromptInputs(sample=sample, tensors=tensors, geometry=geometry,
                            clips=[list(c.timestamps) for c in clips])

    def _geometry(self, sample: Sample, images, clips, tensors) -> list[Geometry]:
        """One `Geometry` per image and video, in prompt order. A video's original size is its source frames'
        (before any `max_pixels` shrink); its processed size is read from `video_grid_thw` × the patch size."""
        answer_media(sample)  # a bad index fails here, naming the sample
        if self.convention == "pixel":
            sizes = iter([im.size for im in images]), iter([c.source_size for c in clips])
            return [Geometry.identity(*next(sizes[kind == "video"])) for kind in sample.media_kinds()]
        per_image = iter([Geometry.for_image(self.processor, im.width, im.height, self.convention) for im in images])
        patch = getattr(getattr(self.processor, "video_processor", None), "patch_size", None)
        grids = tensors.get("video_grid_thw")
        per_video = []
        for j, c in enumerate(clips):
            w, h = c.source_size
            if grids is not None and patch and j < len(grids):
                _, gh, gw = (int(v) for v in grids[j])
                per_video.append(Geometry(w, h, gw * patch, gh * patch, self.convention))
            else:  # no grid to read: the image processor's resize of one frame
                pw, ph = processed_size(self.processor, *c.frames[0].size)
                per_video.append(Geometry(w, h, pw, ph, self.convention))
        videos = iter(per_video)
        return [next(videos) if kind == "video" else next(per_image) for kind in sample.media_kinds()]

    def with_prefix(self, prompt: PromptInputs, text: str, tag: str) -> PromptInputs:
        """The prompt followed by `text` as the start of the assistant's answer (a forced prefix the model
        continues); the sample id gets `#tag` so the continuation's sampling seeds differ from the original's."""
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long,
                           device=HOST)  # [1, K] (prompts stay on the host until collated)
        tensors = dict(prompt.tensors)
        for k in TOKEN_KEYS:
            if k in tensors:
                ext = ids if k == "input_ids" else (torch.ones_like(ids) if k == "attention_mask" else torch.zeros_like(ids))
                tensors[k] = torch.cat([tensors[k], ext.to(tensors[k].dtype)], dim=1)
        sample = dataclasses.replace(prompt.sample, id=f"{prompt.sample.id}#{tag}")
        return PromptInputs(sample=sample, tensors=tensors, geometry=prompt.geometry, clips=prompt.clips)

    def collate(self, prompts: list[PromptInputs], repeats: int = 1) -> dict[str, torch.Tensor]:
        """Batch prompts (each repeated `repeats` times, adjacent) with left padding, media concatenated, on the
        runtime's device (each distinct prompt crosses once)."""
        moved = {id(p): self.runtime.to(p.tensors) for p in prompts}
        rows = [p for p in prompts for _ in range(repeats)]
        width = max(p.length for p in rows)
        batch: dict[str, list[torch.Tensor]] = {}
        for p in rows:
            pad = width - p.length
            for k, v in moved[id(p)].items():
                if k in TOKEN_KEYS:
                    fill = self.pad_id if k == "input_ids" else 0
                    v = torch.nn.functional.pad(v, (pad, 0), value=fill)
                batch.setdefault(k, []).append(v)
        return {k: torch.cat(v, dim=0) for k, v in batch.items()}

    # --------------------------------------------------------------------------------------- log-probs
    @property
    def packs(self) -> bool:
        """Whether log-prob passes pack sequences without padding (`model.packing`; auto = with flash-attention)."""
        if self.cfg.packing == "auto":
            return str(getattr(self.hf.config, "_attn_implementation", "")).startswith("flash_attention")
        return self.cfg.packing == "always"

    def _completion_hidden(self, batch, completion_ids, completion_mask, model):
        """Last hidden states of the completion positions [N·C, H], their targets [N·C] (−100 where masked)
        and the lm_head weight [V, H]. Packed (`mmrl.packing`) or padded, the same numbers."""
        prompt_len = batch["input_ids"].shape[1]
        inputs = dict(batch)
        for k in TOKEN_KEYS:
            if k in inputs:
                ext = completion_ids if k == "input_ids" else (
                    completion_mask.to(inputs[k].dtype) if k == "attention_mask" else torch.zeros_like(completion_ids)
                )
                inputs[k] = torch.cat([inputs[k], ext.to(inputs[k].dtype)], dim=1)  # [N, P+C]
        with self.runtime.autocast():
            if self.packs:
                packed = pack(inputs, prompt_len, completion_mask, rope_index_of(model))
                flat = model.model(**packed.inputs, use_cache=False).last_hidden_state[0]  # [ΣL, H]
                hidden = flat[packed.index]  # [N, C, H]
            else:
                hidden = model.model(**inputs, use_cache=False).last_hidden_state  # [N, P+C, H]
                hidden = hidden[:, prompt_len - 1 : -1]  # [N, C, H]: position t predicts completion token t
        n, c, h = hidden.shape
        targets = torch.where(completion_mask.bool(), completion_ids, torch.full_like(completion_ids, -100))
        return hidden.reshape(n * c, h), targets.reshape(-1), model.get_output_embeddings().weight

    def completion_logprobs(
        self, batch: dict[str, torch.Tensor], completion_ids: torch.Tensor, completion_mask: torch.Tensor, *,
        temperature: float = 1.0, with_entropy: bool = False, model: torch.nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs [N, C] of the completion tokens given the (collated) prompts; masked positions are 0. The
        softmax is over the ids the rollout engines may sample (the never-sampled vision specials excluded:
        `kernels.renormalize_without`), so the policy scored is the one sampled from."""
        def compute(m):
            hidden, targets, weight = self._completion_hidden(batch, completion_ids, completion_mask, m)
            if weight.dtype != hidden.dtype:  # bf16 autocast: the kernel takes one dtype (fp32 accumulation inside)
                weight = weight.to(hidden.dtype)
            logp, ent = token_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=with_entropy,
                                       backend=self.kernels.backend, chunk_size=self.kernels.chunk_size)
            if self.never_sample:
                excluded = torch.tensor(self.never_sample, dtype=torch.long, device=hidden.device)
                logp, ent = renormalize_without(logp, ent, hidden, weight, targets, excluded, temperature=temperature)
            return logp, ent

        n, c = completion_ids.shape
        logp, ent = self.call(compute, model)
        return logp.view(n, c), (ent.view(n, c) if ent is not None else None)

    @torch.no_grad()
    def completion_minp_mass(
        self, batch: dict[str, torch.Tensor], completion_ids: torch.Tensor, completion_mask: torch.Tensor, *,
        kappa: float, temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per completion token [N, C]: log of the probability mass a min-p filter at `kappa` keeps, and whether
        the sampled token survives it (`mmrl.kernels.minp_log_mass`); no gradient."""
        def compute(m):
            hidden, targets, weight = self._completion_hidden(batch, completion_ids, completion_mask, m)
            return minp_log_mass(hidden, weight, targets, kappa=kappa, temperature=temperature)

        n, c = completion_ids.shape
        log_mass, kept = self.call(compute)
        return log_mass.view(n, c), kept.view(n, c)

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def describe(self) -> dict[str, Any]:
        total = sum(p.numel() for p in self.model.parameters())
        train = sum(p.numel() for p in self.parameters())
        return {"model_type": self.model_type, "mode": self.cfg.mode, "params": total, "trainable": train,
                "box_convention": self.convention, "device": self.runtime.describe()}
