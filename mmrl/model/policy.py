"""The policy: a VLM + its processor, in `full` or `lora` mode, with its reference and log-probs.

- Loads from any local directory (a zoo model via `zoo:NAME`, or a real checkpoint) with
  `AutoModelForImageTextToText` / `AutoProcessor`; nothing downloads.
- `full` mode trains all (unfrozen) weights; `lora` mode wraps the model with peft adapters and never
  changes a base weight. `freeze_vision` freezes the vision encoder (full) or keeps adapters off it (lora).
- Reference policy (DESIGN.md "Reference policy and stages"): fixed at the start of the first RL stage. In
  LoRA mode a stage boundary merges the trained adapter into the base and starts a fresh one, so the reference
  is "adapters disabled" (no second copy); in full mode a frozen copy is taken, only if a KL term needs it.
- Devices (`mmrl.runtime.Runtime`): the model (and its reference) lives on `runtime.device`. Prompts go through
  its `PromptEncoder` (`mmrl.model.prompts`: processed once on the host, batched on the device); loading is
  `mmrl.model.loading`, log-probs `mmrl.model.logprobs`.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any

import torch

from mmrl.config import KernelsConfig, ModelConfig
from mmrl.model.loading import eos_ids, load_transformers
from mmrl.model.logprobs import completion_hidden, minp_mass, scored_tokens
from mmrl.model.prompts import PromptEncoder, PromptInputs
from mmrl.perception.geometry import convention_for
from mmrl.runtime import HOST, Runtime, autocast_dtype

VISION_MODULE_WORDS = ("visual", "vision_tower", "vision_model")
# Special tokens a policy must never sample: they would desynchronise image features and placeholders.
NEVER_SAMPLE = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|im_start|>", "<image>", "<video>", "<pad>")


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
        if cfg.share_prompt and self.packs:
            raise ValueError("model.share_prompt runs each prompt once under a 4-D attention mask (sdpa or eager "
                             "attention) and does not combine with packing (model.packing: always, or auto with "
                             "flash-attention): set model.packing: never or model.share_prompt: false")
        self.prompts = PromptEncoder(processor, convention=self.convention, pad_id=self.pad_id,
                                     media_dtype=hf_model.dtype, runtime=self.runtime)

    # ------------------------------------------------------------------------------------------ loading
    @property
    def dist(self):
        """`mmrl.runtime.Dist` when sharded across processes, else None."""
        return self.runtime.dist

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @classmethod
    def load(cls, cfg: ModelConfig, kernels: KernelsConfig | None = None, runtime: Runtime | None = None) -> "Policy":
        """Load from `cfg.path` (on the host), set up full / LoRA training, and move to `runtime.device` — except
        across processes, where `shard` places each rank's shards on its device."""
        model, processor, path = load_transformers(cfg, runtime)
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
        """FSDP2-shard the policy across the runtime's processes (`mmrl.model.sharding`; the run: `mmrl.train.distributed`), each rank's shards on its
        device. In full mode with a KL term the frozen reference is copied now and sharded alike; `begin_rl` then
        copies the weights into it."""
        from mmrl.model.sharding import shard

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
    def encode(self, sample, system_prompt: str | None = None, video=None, frame_seed: int | None = None) -> PromptInputs:
        """`PromptEncoder.encode`: one sample's chat template + processor tensors (host)."""
        return self.prompts.encode(sample, system_prompt, video, frame_seed)

    def with_prefix(self, prompt: PromptInputs, text: str, tag: str) -> PromptInputs:
        """`PromptEncoder.with_prefix`: the prompt with a forced start of the answer."""
        return self.prompts.with_prefix(prompt, text, tag)

    def collate(self, prompts: list[PromptInputs], repeats: int = 1, share_vision: bool = False,
                after: list[dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """`PromptEncoder.collate`: a padded batch on the runtime's device (`share_vision`: for log-prob passes
        that encode each distinct image or video once, `mmrl.model.vision_once`; `after`: per row, media after
        its own, a multi-turn row's tool images)."""
        return self.prompts.collate(prompts, repeats, share_vision, after)

    # --------------------------------------------------------------------------------------- log-probs
    @property
    def packs(self) -> bool:
        """Whether log-prob passes pack sequences without padding (`model.packing`; auto = with flash-attention)."""
        if self.cfg.packing == "auto":
            return str(getattr(self.hf.config, "_attn_implementation", "")).startswith("flash_attention")
        return self.cfg.packing == "always"

    def completion_logprobs(
        self, batch: dict[str, torch.Tensor], completion_ids: torch.Tensor, completion_mask: torch.Tensor, *,
        temperature: float = 1.0, with_entropy: bool = False, model: torch.nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs [N, C] of the completion tokens given the (collated) prompts; masked positions are 0. The
        softmax is over the ids the rollout engines may sample (`mmrl.model.logprobs`)."""
        def compute(m):
            hidden, targets, weight = completion_hidden(batch, completion_ids, completion_mask, m, packs=self.packs,
                                                        runtime=self.runtime, shares=self.cfg.share_prompt)
            return scored_tokens(hidden, targets, weight, temperature=temperature, with_entropy=with_entropy,
                                 kernels=self.kernels, never_sample=self.never_sample)

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
            hidden, targets, weight = completion_hidden(batch, completion_ids, completion_mask, m, packs=self.packs,
                                                        runtime=self.runtime, shares=self.cfg.share_prompt)
            return minp_mass(hidden, targets, weight, kappa=kappa, temperature=temperature)

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
