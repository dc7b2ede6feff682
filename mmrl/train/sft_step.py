"""One SFT step: sample prompts → encode → targets (the data's own, derived from the answer, or random labels) →
the NLL of the targets, accumulated over micro-batches → one optimizer step. Shapes: B prompts, C target tokens."""

from __future__ import annotations

import random
import re
import time
from typing import Any

import torch

from mmrl.config import Config, StageConfig
from mmrl.datasets.synthetic import random_target_text, target_text
from mmrl.model.prompts import PromptInputs
from mmrl.rollout.types import row_seed

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def drop_thought(text: str) -> str:
    r"""The target with its reasoning replaced by an empty thought (TON, "Think or Not? Selective Reasoning via
    Reinforcement Learning for Vision-Language Models", arXiv:2505.16854): `<think>\n\n</think>` stands where
    the `<think>` block was, or is put first when there was none.

    >>> drop_thought("<think>it points up</think><answer>0</answer>"), drop_thought("<answer>0</answer>")
    ('<think>\n\n</think><answer>0</answer>', '<think>\n\n</think><answer>0</answer>')
    """
    empty = "<think>\n\n</think>"
    return _THINK.sub(empty, text, count=1) if _THINK.search(text) else empty + text


class SFTStep:
    """One SFT step over its collaborators: the policy, the prompt `Batches`, the `Optimization`, the `Progress`."""

    def __init__(self, cfg: Config, *, policy, batches, optim, progress):
        self.cfg, self.policy, self.batches, self.optim, self.progress = cfg, policy, batches, optim, progress

    def targets(self, prompts: list[PromptInputs], stage: StageConfig) -> list[str]:
        """Each prompt's target text: a random label (`labels: random`), the data's own `response`, or the one
        derived from its answer; a share `thought_dropout` with an empty thought."""
        out = []
        for p in prompts:
            rng = random.Random(row_seed(self.cfg.trainer.seed, "sft-label", self.progress.step, p.sample.id))
            if stage.labels == "random":
                text = random_target_text(p.sample, rng)
            elif isinstance(p.sample.meta.get("response"), str):  # a data set's own full response
                text = p.sample.meta["response"]
            else:
                text = target_text(p.sample, p.answer_geometry)
            out.append(drop_thought(text) if rng.random() < stage.thought_dropout else text)
        return out

    def run(self, stage: StageConfig) -> dict[str, Any]:
        t0 = time.perf_counter()
        policy, micro = self.policy, self.cfg.trainer.micro_batch_size
        prompts = self.batches.draw(self.cfg.trainer.sft_batch_size)
        tok = policy.tokenizer
        seqs = [tok(t, add_special_tokens=False)["input_ids"] + [policy.eos_id] for t in self.targets(prompts, stage)]
        width = max(len(s) for s in seqs)
        dev = policy.runtime.device
        ids = torch.tensor([s + [policy.pad_id] * (width - len(s)) for s in seqs], device=dev)  # [B, C]
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=dev)  # [B, C]
        total = int(mask.sum())
        policy.train()
        loss_sum = 0.0
        rows = policy.runtime.rows(list(range(len(prompts))))  # all, or this process's block (padded)
        for chunk in [rows[i : i + micro] for i in range(0, len(rows), micro)]:
            idx = [0 if r is None else r for r in chunk]
            real = torch.tensor([[r is not None] for r in chunk], dtype=mask.dtype, device=dev)
            m = mask[idx] * real  # padding rows weigh nothing
            logp, _ = policy.completion_logprobs(policy.collate([prompts[i] for i in idx]), ids[idx], m)
            loss = -(logp * m).sum() / total
            loss.backward()
            loss_sum += float(loss.detach())
        loss_sum = policy.runtime.sum({"loss": loss_sum})["loss"]
        grad_norm = self.optim.step()
        self.progress.adapter_trained = True
        return {"sft/loss": loss_sum, "actor/grad_norm": grad_norm, "perf/step_s": time.perf_counter() - t0}
