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
from mmrl.datasets.tasks import TARGETS
from mmrl.model.prompts import PromptInputs
from mmrl.rollout.types import row_seed
from mmrl.train.rows import chunks, micro_inputs

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

    def __init__(self, cfg: Config, *, policy, batches, optim, progress, tools=None):
        self.cfg, self.policy, self.batches, self.optim, self.progress = cfg, policy, batches, optim, progress
        self.tools = tools  # a `ToolEngine` (`rollout.tools`): targets are trajectories through its loop

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

    def turns(self, prompts: list[PromptInputs], stage: StageConfig) -> list[list[str]]:
        """Each prompt's target as the policy's turns, for a run with tools: the task's registered `turns` (a call,
        then the answer), else its one target text (`targets`)."""
        out = []
        single = self.targets(prompts, stage)
        for p, text in zip(prompts, single):
            fmt = TARGETS.get(p.sample.task) if p.sample.task in TARGETS else None
            if fmt is None or fmt.turns is None:
                out.append([text])
                continue
            rng = random.Random(row_seed(self.cfg.trainer.seed, "sft-turns", self.progress.step, p.sample.id))
            out.append(fmt.turns(p.sample, rng if stage.labels == "random" else None, p.answer_geometry))
        return out

    def run(self, stage: StageConfig) -> dict[str, Any]:
        t0 = time.perf_counter()
        policy = self.policy
        prompts = self.batches.draw(self.cfg.trainer.sft_batch_size)
        if self.tools is not None:  # trajectories through the tools' loop: the observations are not in the loss
            ro = self.tools.scripted(prompts, self.turns(prompts, stage))
            metrics = self._descend(lambda rows: micro_inputs(policy, prompts, ro, rows)[:3], len(ro),
                                    int(ro.completion_mask.sum()))
            calls = sum(len(t["calls"]) for t in ro.columns["trajectory"])
            return {**metrics, "sft/calls_mean": calls / len(ro), "perf/step_s": time.perf_counter() - t0}
        tok = policy.tokenizer
        seqs = [tok(t, add_special_tokens=False)["input_ids"] + [policy.eos_id] for t in self.targets(prompts, stage)]
        width = max(len(s) for s in seqs)
        dev = policy.runtime.device
        ids = torch.tensor([s + [policy.pad_id] * (width - len(s)) for s in seqs], device=dev)  # [B, C]
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=dev)  # [B, C]

        def micro(chunk):
            idx = [0 if r is None else r for r in chunk]
            real = torch.tensor([[r is not None] for r in chunk], dtype=mask.dtype, device=dev)
            return policy.collate([prompts[i] for i in idx]), ids[idx], mask[idx] * real  # padding rows weigh 0

        metrics = self._descend(micro, len(prompts), int(mask.sum()))
        return {**metrics, "perf/step_s": time.perf_counter() - t0}

    def _descend(self, micro, n: int, total: int) -> dict[str, float]:
        """One optimizer step on the mean NLL of the `total` target tokens: per micro-batch of this process's rows
        (padded with None), `micro(rows)` gives (collated prompts, target ids [n, C], mask [n, C])."""
        policy = self.policy
        policy.train()
        loss_sum = 0.0
        for chunk in chunks(policy.runtime.rows(list(range(n))), self.cfg.trainer.micro_batch_size):
            batch, ids, m = micro(chunk)
            logp, _ = policy.completion_logprobs(batch, ids, m)
            loss = -(logp * m).sum() / total
            loss.backward()
            loss_sum += float(loss.detach())
        loss_sum = policy.runtime.sum({"loss": loss_sum})["loss"]
        grad_norm = self.optim.step()
        self.progress.adapter_trained = True
        return {"sft/loss": loss_sum, "actor/grad_norm": grad_norm}
