"""Prompts: a sample → the chat template and the processor's tensors (`PromptEncoder.encode`, media loaded and
released there), the geometry of each image and video, forced answer prefixes, and batches on the device
(`collate`). Prompts are processed once on the host; `PromptInputs` keep the processor's host tensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.model.vision_once import VISION_ROWS, vision_rows
from mmrl.perception.geometry import Geometry, processed_size
from mmrl.runtime import HOST, Runtime

TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


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


class PromptEncoder:
    """The processor's side of a policy: `processor` (chat template + media), the box `convention`, `pad_id`,
    the dtype pixel tensors take (`media_dtype`, the model's) and the `runtime` batches go to."""

    def __init__(self, processor, *, convention: str, pad_id: int, media_dtype: torch.dtype, runtime: Runtime):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.convention, self.pad_id, self.media_dtype, self.runtime = convention, pad_id, media_dtype, runtime
        self.template_kwargs: dict = {}  # extra chat-template arguments (`tools=[…]`: set by `ToolEngine`)

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
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                      **self.template_kwargs)
            out = self.processor(text=[text], images=images or None, return_tensors="pt", **extra)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise BadSampleError(sample.id, f"the processor rejected it: {e}") from e
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        for key in ("pixel_values", "pixel_values_videos"):
            if key in tensors:
                tensors[key] = tensors[key].to(self.media_dtype)
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

    def collate(self, prompts: list[PromptInputs], repeats: int = 1, share_vision: bool = False,
                after: list[dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Batch prompts (each repeated `repeats` times, adjacent) with left padding, media concatenated, on the
        runtime's device (each distinct prompt crosses once). `share_vision`: the batch also says which rows show
        the same media (`mmrl.model.vision_once.VISION_ROWS`), so log-prob passes and the `hf` engine encode each
        once; the key must be taken out (`mmrl.model.logprobs`, `mmrl.rollout.hf`) before the batch reaches a
        model. `after`: per row, media tensors that follow the row's own (a multi-turn row's tool images, whose
        placeholders lie in its completion), so the batch's media stay in the order of their placeholders."""
        moved = {id(p): self.runtime.to(p.tensors) for p in prompts}
        rows = [p for p in prompts for _ in range(repeats)]
        if after is not None and (share_vision or len(after) != len(rows)):
            raise ValueError(f"collate: `after` needs one entry per row ({len(rows)}, got {len(after)}) and no "
                             "share_vision (the rows' media differ)")
        width = max(p.length for p in rows)
        batch: dict[str, list[torch.Tensor]] = {}
        for r, p in enumerate(rows):
            pad = width - p.length
            for k, v in moved[id(p)].items():
                if k in TOKEN_KEYS:
                    fill = self.pad_id if k == "input_ids" else 0
                    v = torch.nn.functional.pad(v, (pad, 0), value=fill)
                batch.setdefault(k, []).append(v)
            for k, v in (after[r] if after is not None else {}).items():
                batch.setdefault(k, []).append(self.runtime.to(v))
        out = {k: torch.cat(v, dim=0) for k, v in batch.items()}
        if share_vision:
            out[VISION_ROWS] = vision_rows(rows)  # [N, 6] host
        return out
