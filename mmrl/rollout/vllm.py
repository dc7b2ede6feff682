"""The `vllm` rollout engine (`rollout.engine: vllm`): sampling with vLLM's offline `LLM`, colocated with training.

Targets vLLM 0.11.x (API read from the 0.11.0 source: `vllm.LLM`, `SamplingParams`, `RequestOutput`,
`LLM.apply_model`, `LLM.sleep` / `wake_up`). **The GPU path is not verified on these machines** (no CUDA, and
vLLM's PyPI wheel pins its own torch): everything except the calls into vLLM is a pure function tested on CPU.

- Requests (`build_requests`): the prompt's own token ids (`PromptInputs.tensors["input_ids"]`, so system
  prompts and forced prefixes are exactly what the trainer scores), with each image's / video's run of
  placeholder tokens collapsed to one token — vLLM's multimodal processor expands it again (for token prompts it
  applies its prompt replacement to every single placeholder token). `multi_modal_data` holds the media decoded
  by mmrl (images: RGB PIL; videos: uint8 arrays [T, H, W, 3] of the sampled frames), never paths. After
  generation the expanded prompt vLLM ran (`RequestOutput.prompt_token_ids`) must equal mmrl's, else it raises.
- Sampling (`sampling_params_kwargs`): temperature / top-p / top-k as in `hf`, `seed` from `row_seed(seed, step,
  prompt id)` (vLLM gives the k-th of n completions seed + k), `logprobs=0` (the sampled token's log-prob) under
  the engine's `logprobs_mode="processed_logprobs"` (after logit bias, temperature, top-k/top-p: the sampling
  distribution, like `hf`'s), vision special tokens at logit bias −inf, `stop_token_ids=[eos]`.
- Outputs (`parse_outputs`): rows prompt-major (rows g·G … g·G+G−1 are prompt g's), right-padded, mask up to and
  including EOS; texts decoded by mmrl's tokenizer exactly as `hf` does; vLLM "stop" → "eos", "length" → "length".
- Weights (`sync_weights`): the policy's HF-named tensors go to the model's `load_weights` through
  `LLM.apply_model` in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` is set, so nothing is serialised). LoRA:
  `rollout.vllm_lora_sync: merged` pushes base + ΔW; `adapter` saves the peft adapter and serves it with a
  `LoRARequest` (base weights pushed only when a stage merge changed them). `generate` also pushes by itself
  when the trainable parameters changed since the last push (their in-place version counters,
  `torch.Tensor._version`), so stale weights are never sampled from.
- Memory: with `vllm_sleep_level` 1 / 2, vLLM sleeps between rollouts (KV cache freed; weights offloaded to CPU
  at 1, dropped at 2 and pushed again before the next rollout).

Not supported (raise, never silently wrong): Qwen3-VL videos (vLLM 0.11 expands a video as `<t seconds>` +
vision_start…vision_end per frame group while transformers 5.x wraps those groups in one more vision_start /
vision_end pair, so the sampler would see another prompt), prompts whose video frames were shuffled at encode
time (the `shuffle_frames` pass; `PromptInputs` does not record the permutation), Qwen2.5-VL prompts whose
videos have different frame rates.
Unverified against a running vLLM: Qwen2.5-VL video time positions (we pass `mm_processor_kwargs={"fps": …}`
derived from the prompt's `second_per_grid_ts`), LoRA adapters on vision modules (refused), the peft key names
vLLM's LoRA loader maps.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrl.config import RolloutConfig, VideoConfig
from mmrl.datasets.sample import BadSampleError
from mmrl.rollout.types import Rollouts, SamplingParams, concat_rollouts, row_seed
from mmrl.runtime import HOST

MISSING = "rollout.engine=vllm needs vLLM (pip install 'mmrl[vllm]'; CUDA only)"
WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.11 LoRAConfig: allowed max_lora_rank values


# ------------------------------------------------------------------------------------------------ requests
def load_media(sample, video: VideoConfig) -> tuple[list, list]:
    """(images, clips) of a sample decoded exactly as `Policy.encode` does (same helpers, same options)."""
    from mmrl.perception.images import load_image
    from mmrl.perception.video import Clip, load_video
    from mmrl.policy import _frames_clip, _in_memory_clip

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
    text = getattr(processor, attr, None)
    return tok.convert_tokens_to_ids(text) if isinstance(text, str) else None


def _frames_array(clip) -> np.ndarray:
    return np.stack([np.asarray(f.convert("RGB"), dtype=np.uint8) for f in clip.frames])  # [T, H, W, 3]


def _content_id(arr: np.ndarray, salt: str) -> str:
    return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).hexdigest() + salt


def build_request(prompt, processor, *, model_type: str, video: VideoConfig, uuid_salt: str | None = None) -> dict:
    """One vLLM 0.11 `TokensPrompt` dict for a `PromptInputs` (see the module docstring)."""
    sample, tensors = prompt.sample, prompt.tensors
    ids = tensors["input_ids"][0].tolist()
    images, clips = load_media(sample, video)
    if clips and model_type == "qwen3_vl":
        raise NotImplementedError("rollout.engine=vllm: Qwen3-VL videos are not supported (vLLM 0.11 and "
                                  "transformers 5.x expand their placeholders differently)")
    if clips and "#frames" in sample.id:
        raise NotImplementedError(f"rollout.engine=vllm: prompt {sample.id!r} has its video frames shuffled at "
                                  "encode time (shuffle_frames pass); PromptInputs does not record the order")
    for k, c in enumerate(clips):
        want = prompt.clips[k] if k < len(prompt.clips) else None
        if want is not None and (len(want) != len(c.timestamps) or not np.allclose(c.timestamps, want, atol=1e-6)):
            raise BadSampleError(sample.id, f"video {k} decodes to other frames than the prompt was encoded with: "
                                 "give the engine the run's data.video settings")
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
    if clips:
        data["video"] = [_frames_array(c) for c in clips]
    if data:
        request["multi_modal_data"] = data
    if clips and "second_per_grid_ts" in tensors:  # Qwen2.5-VL: time positions from the sampled frames' rate
        patch = getattr(getattr(processor, "video_processor", None), "temporal_patch_size", 2)
        rates = sorted({round(patch / float(s), 6) for s in tensors["second_per_grid_ts"].flatten()})
        if len(rates) > 1:
            raise NotImplementedError(f"rollout.engine=vllm: prompt {sample.id!r} has videos at different rates")
        request["mm_processor_kwargs"] = {"fps": rates[0]}
    if data and uuid_salt is not None:  # vision weights changed: vLLM must not reuse cached encoder outputs
        salt = uuid_salt + repr(request.get("mm_processor_kwargs", ""))
        arrays = {"image": [np.asarray(im) for im in images], "video": data.get("video", [])}
        request["multi_modal_uuids"] = {k: [_content_id(a, salt) for a in arrays[k]] for k in data}
    return request


def build_requests(prompts, processor, *, model_type: str, video: VideoConfig | None = None,
                   uuid_salt: str | None = None) -> list[dict]:
    """One request per prompt, in order."""
    video = video or VideoConfig()
    return [build_request(p, processor, model_type=model_type, video=video, uuid_salt=uuid_salt) for p in prompts]


# ------------------------------------------------------------------------------------------------ sampling
def prompt_seed(params: SamplingParams, sample_id: str, n: int) -> int:
    """The request's vLLM seed: from (seed, step, prompt id) only; vLLM seeds completion k with seed + k."""
    return row_seed(params.seed, params.step, sample_id) % (2**63 - n)


def sampling_params_kwargs(params: SamplingParams, n: int, *, never_sample: list[int], eos_id: int,
                           seed: int) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` (0.11) for G = n completions of one prompt.

    Greedy → temperature 0 and n = 1 (vLLM refuses greedy with n > 1; the engine repeats the request instead).
    top_k 0 = off (vLLM 0.11 reads 0 or −1 as off). Vision special tokens get logit bias −inf (applied before
    temperature, in greedy decoding too). Texts are decoded by mmrl, so vLLM does not detokenize.
    """
    greedy = params.greedy
    return dict(
        n=1 if greedy else n,
        temperature=0.0 if greedy else params.temperature,
        top_p=1.0 if greedy else params.top_p,
        top_k=0 if greedy else params.top_k,
        max_tokens=params.max_new_tokens,
        seed=seed,
        logprobs=0,
        stop_token_ids=[] if params.ignore_eos else [eos_id],
        ignore_eos=params.ignore_eos,
        detokenize=False,
        logit_bias={int(i): float("-inf") for i in never_sample} or None,
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


def parse_outputs(outputs, n: int, *, tokenizer, pad_id: int, eos_id: int, never_sample: list[int] = ()) -> Rollouts:
    """`Rollouts` from vLLM `RequestOutput`s (G = n completions per prompt, or n requests of one completion).

    Each completion: `token_ids`, `logprobs` (one {token id: Logprob} per token), `finish_reason`, `index`.
    """
    rows = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
    if not rows or len(rows) % n:
        raise ValueError(f"vLLM returned {len(rows)} completions, not a multiple of the group size {n}")
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
        end = toks.index(eos_id) + 1 if eos_id in toks else len(toks)
        reason = {"stop": "eos", "length": "length"}.get(c.finish_reason, "error")
        if reason != "error":
            reason = "eos" if eos_id in toks else reason
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


# ------------------------------------------------------------------------------------ train/infer mismatch
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
    """The smallest `max_lora_rank` vLLM 0.11 accepts that fits rank r."""
    fits = [k for k in LORA_RANKS if k >= r]
    if not fits:
        raise ValueError(f"model.lora.r={r} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}")
    return fits[0]


def llm_kwargs(policy, cfg: RolloutConfig, adapter: bool) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` (0.11 `EngineArgs` fields)."""
    kw: dict[str, Any] = dict(
        model=policy.path, tokenizer=policy.path, dtype=policy.cfg.dtype,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, max_model_len=cfg.vllm_max_model_len,
        enable_sleep_mode=cfg.vllm_sleep_level > 0, enforce_eager=cfg.vllm_enforce_eager,
        logprobs_mode="processed_logprobs",  # log-probs of the sampling distribution (after temperature, top-k/p)
        generation_config="vllm",  # no sampling defaults or extra stop ids from the checkpoint: only ours
    )
    if adapter:
        kw.update(enable_lora=True, max_lora_rank=lora_rank(policy.cfg.lora.r), max_loras=1)
    return kw


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
        except ImportError as e:
            raise ImportError(MISSING) from e
        self.cfg, self.video, self.policy = cfg or RolloutConfig(), video or VideoConfig(), policy
        self.adapter = policy.cfg.mode == "lora" and self.cfg.vllm_lora_sync == "adapter"
        if self.adapter and not policy.cfg.freeze_vision:
            raise ValueError("rollout.vllm_lora_sync=adapter serves language-model adapters only; set "
                             "model.freeze_vision: true or use vllm_lora_sync: merged")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: apply_model shares tensors
        self.vllm = vllm
        self.llm = vllm.LLM(**llm_kwargs(policy, self.cfg, self.adapter))
        self.state = _State()
        self.lora_request = None
        self._dirs: list[tempfile.TemporaryDirectory] = []
        self._sleep()

    def _sleep(self) -> None:
        if self.cfg.vllm_sleep_level > 0 and not self.state.asleep:
            self.llm.sleep(level=self.cfg.vllm_sleep_level)
            self.state.asleep = frozenset({"weights", "kv_cache"})
            if self.cfg.vllm_sleep_level == 2:  # weights discarded: push before the next rollout
                self.state.pushed = self.state.base = None

    def _wake(self, *tags: str) -> None:
        todo = [t for t in tags if t in self.state.asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self.state.asleep = self.state.asleep - set(todo)

    def _load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        self.llm.apply_model(lambda model: model.load_weights(weights))

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
        salt = f"-w{self.state.version}" if not policy.cfg.freeze_vision else None  # the vision tower trains
        requests = build_requests(prompts, policy.processor, model_type=policy.model_type, video=self.video,
                                  uuid_salt=salt)
        repeat = n if params.greedy else 1  # greedy: n copies of a one-completion request
        sps = [self.vllm.SamplingParams(**sampling_params_kwargs(
                   params, n, never_sample=policy.never_sample, eos_id=policy.eos_id,
                   seed=prompt_seed(params, p.sample.id, n)))
               for p in prompts for _ in range(repeat)]
        requests = [r for r in requests for _ in range(repeat)]
        outs = self.llm.generate(requests, sps, use_tqdm=False, lora_request=self.lora_request)
        want = [p.tensors["input_ids"][0].tolist() for p in prompts for _ in range(repeat)]
        names = [p.sample.id for p in prompts for _ in range(repeat)]
        check_prompt_ids([o.prompt_token_ids for o in outs], want, names)
        return parse_outputs(outs, n, tokenizer=policy.tokenizer, pad_id=policy.pad_id, eos_id=policy.eos_id,
                             never_sample=policy.never_sample)
