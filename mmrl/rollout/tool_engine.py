"""Multi-turn rollouts with tools as a rollout engine (`rollout.tools`): `ToolEngine.generate(prompts, n, params)
-> Rollouts`, so the trainer, the rewards and `mmrl eval` take trajectories as they take single-turn completions.

A trajectory becomes one completion row: every token after the prompt, the policy's and the observations', in
order. `completion_mask` marks the policy's tokens (the loss, the lengths and the sampling log-probs are over
those); `Rollouts.observed` holds which tokens are present at all, their `mm_token_type_ids` and each row's tool
images as processor tensors, so a log-prob pass runs the whole conversation in one forward
(`mmrl.train.rows.micro_inputs`). `texts` (what rewards parse as the completion) is the last policy turn, the one
holding the answer; the reward column `trajectory` holds the rest (`trajectory_column`).

Sampling runs on the `hf` engine's model and keying, the rows of `batch_prompts` prompts in lock-step
(`mmrl.rollout.multiturn.MultiTurnHF.rollouts`), or with `rollout.engine: vllm` on vLLM, one generate call per turn
(`mmrl.rollout.multiturn_vllm.MultiTurnVLLM`). Scripted turns (SFT targets, `scripted`) always run on the hf loop.
"""

from __future__ import annotations

from typing import Any

import torch

from mmrl.rollout.multiturn import MultiTurnHF, Trajectory, merged_media
from mmrl.rollout.multiturn_vllm import MultiTurnVLLM
from mmrl.rollout.types import Observed, Rollouts, SamplingParams
from mmrl.runtime import HOST
from mmrl.tools.calls import FORMATS
from mmrl.tools.toolbox import Toolbox


NOT_RUN = "not run: the trajectory ended first (max_turns)"  # the `error` of a call written in the last turn
CALL_ENDS = {"qwen": "</tool_call>", "box": "</box>", "region": "</region>"}  # where a turn with a call ends


def trajectory_column(t: Trajectory) -> dict[str, Any]:
    """A trajectory as the `trajectory` reward column sees it: turns, finish reason, each turn's text and each
    call (tool, arguments, error, per-call reward, the box it looked at in the original image's pixels, that
    original's index, the observation text, and `views`: each returned image's [width, height] as the processor
    showed it to the model). Calls still pending when the trajectory ended (its last turn's, at `max_turns`) are
    listed as written, never run: error `NOT_RUN`."""
    calls = []
    for turn in t.turns:
        for k, call in enumerate(turn.calls):
            if k < len(turn.results):
                result = turn.results[k]
                calls.append({"tool": call.name, "arguments": call.arguments, "error": result.error,
                              "reward": result.reward, "box": result.info.get("box"),
                              "origin": result.info.get("origin"), "text": result.text,
                              "views": [[im.geometry.proc_w, im.geometry.proc_h] for im in result.images]})
            else:
                calls.append({"tool": call.name, "arguments": call.arguments, "error": NOT_RUN, "reward": None,
                              "box": None, "origin": None, "text": "", "views": []})
    return {"turns": len(t.turns), "finish_reason": t.finish_reason, "turn_texts": [u.text for u in t.turns],
            "calls": calls}


def trajectory_metrics(trajectories: list[dict], finish_reasons: list[str],
                       prefix: str = "rollout/") -> dict[str, float]:
    """Multi-turn rollouts' shape (`trajectory` column dicts): mean turns and calls per trajectory, the share of
    trajectories that called a tool, of calls that failed, and of each finish reason (`<prefix>finish/<reason>`)."""
    calls = [len(t["calls"]) for t in trajectories]
    failed = sum(c["error"] not in (None, NOT_RUN) for t in trajectories for c in t["calls"])
    n = max(len(trajectories), 1)
    out = {f"{prefix}turns_mean": sum(t["turns"] for t in trajectories) / n,
           f"{prefix}calls_mean": sum(calls) / n,
           f"{prefix}tool_use_frac": sum(c > 0 for c in calls) / n,
           f"{prefix}call_error_frac": failed / max(sum(calls), 1)}
    for reason in sorted(set(finish_reasons)):
        out[f"{prefix}finish/{reason}"] = finish_reasons.count(reason) / n
    return out


def to_rollouts(trajectories: list[Trajectory], n: int, pad_id: int, device: torch.device) -> Rollouts:
    """B·n trajectories (prompt-major, as `Rollouts` rows) as one `Rollouts` with `observed` and the `trajectory`
    column; tensors right-padded to the longest."""
    width = max(max((len(t.ids) for t in trajectories), default=1), 1)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, width - x.shape[0]), value=v)  # noqa: E731
    ids = torch.stack([pad(t.ids, pad_id) for t in trajectories])  # [N, C]
    mask = torch.stack([pad(t.loss_mask, 0) for t in trajectories])  # [N, C] the policy's tokens
    present = torch.stack([pad(torch.ones_like(t.ids), 0) for t in trajectories])  # [N, C]
    types = torch.stack([pad(t.token_types, 0) for t in trajectories])
    logps = torch.stack([pad(t.logprobs, 0.0) for t in trajectories])
    media = [merged_media(t.media) for t in trajectories]
    index = torch.arange(len(trajectories) // n, device=HOST).repeat_interleave(n)  # [N]
    ro = Rollouts(index, ids.to(device), mask.to(device), logps.to(device),
                  [t.turns[-1].text if t.turns else "" for t in trajectories],
                  [t.finish_reason for t in trajectories], group_size=n,
                  columns={"trajectory": [trajectory_column(t) for t in trajectories]},
                  observed=Observed(present.to(device), types.to(device), media))
    return ro


class Script:
    """A sampler that writes given turns (their tokens in order, then EOS) instead of drawing: teacher forcing through
    the multi-turn loop. Its `logprobs` are the model's at temperature 1 (never-sampled ids left out), as the
    engine's sampler records them. `eos_each`: an EOS after every turn (a turn that ends without a call)."""

    def __init__(self, policy, turns: list[str], eos_each: bool = False):
        tok = policy.tokenizer
        end = [policy.eos_id] if eos_each else []
        self.queue = [i for text in turns for i in tok(text, add_special_tokens=False)["input_ids"] + end]
        self.queue.reverse()
        self.eos, self.never = policy.eos_id, policy.never_sample
        self.logprobs: list[torch.Tensor] = []

    def draw(self, logits: torch.Tensor, t: int) -> torch.Tensor:
        pick = self.queue.pop() if self.queue else self.eos
        scores = logits.float().clone()
        scores[:, self.never] = -float("inf")
        self.logprobs.append(torch.log_softmax(scores, -1)[:, pick])
        return torch.tensor([pick], device=logits.device)


class ToolEngine:
    """Rollouts that call `toolbox`'s tools, on `policy`'s own model (`MultiTurnHF`) or, given a `VLLMEngine`
    (`vllm`), on vLLM (`MultiTurnVLLM`). `max_turns`: the policy's turns at most; `stops`: strings that end a turn
    besides EOS (default: the call format's closing tag, `CALL_ENDS`); `system_prompt`: the one prompts are encoded
    with (`data.system_prompt`); `tool_image_max_pixels`: the pixel cap of the images tools return (hf loop only;
    None: the processor's). With the Qwen JSON call format (`qwen`), the tools' schemas go into the chat
    template (`tools=[…]`) of the prompts and of every observation, as Qwen's templates expect."""

    def __init__(self, policy, toolbox: Toolbox, *, max_turns: int = 4, stops: list[str] | None = None,
                 system_prompt: str | None = None, vllm=None, tool_image_max_pixels: int | None = None):
        if vllm is not None and tool_image_max_pixels is not None:
            raise ValueError("tool_image_max_pixels: tool images on their own pixel cap run on the hf loop only (vLLM "
                             "processes a request's images under one cap)")
        self.policy, self.toolbox = policy, toolbox
        template = {"tools": toolbox.schemas()} if toolbox.format == FORMATS["qwen"] and toolbox.schemas() else {}
        policy.prompts.template_kwargs = template
        if stops is None:
            stops = [end for name, end in CALL_ENDS.items() if FORMATS.get(name) == toolbox.format]
        kwargs = dict(max_turns=max_turns, stops=tuple(stops), template_kwargs=template, system_prompt=system_prompt)
        self.loop = MultiTurnVLLM(vllm, toolbox, **kwargs) if vllm is not None else MultiTurnHF(
            policy, toolbox, tool_image_max_pixels=tool_image_max_pixels, **kwargs)
        self.host = self.loop.host if vllm is not None else self.loop  # scripted turns: always the hf loop

    def sync_weights(self, policy) -> None:
        """The hf loop samples from the training model itself; the vLLM loop gets the weights pushed."""
        self.policy = policy
        if isinstance(self.loop, MultiTurnVLLM):
            self.loop.sync_weights(policy)

    @torch.no_grad()
    def generate(self, prompts, n: int, params: SamplingParams, batch_prompts: int = 16) -> Rollouts:
        """n trajectories of each prompt (PromptInputs), `batch_prompts` prompts at a time."""
        trajectories: list[Trajectory] = []
        for i in range(0, len(prompts), batch_prompts):
            trajectories += self.loop.rollouts(prompts[i : i + batch_prompts], params, n)
        return to_rollouts(trajectories, n, self.policy.pad_id, self.policy.runtime.device)

    @torch.no_grad()
    def scripted(self, prompts, scripts: list[list[str]]) -> Rollouts:
        """One trajectory per prompt whose policy turns are `scripts[i]` (texts, the last one followed by EOS),
        the tools run on the calls they make: SFT targets of a tool-using task, with the observations a rollout would
        see (`Script`). A turn that makes no readable call ends the trajectory there."""
        scripts = [Script(self.policy, turns) for turns in scripts]
        out = self.host.rollouts(prompts, SamplingParams(max_new_tokens=1 << 30), 1, samplers=scripts)
        return to_rollouts(out, 1, self.policy.pad_id, self.policy.runtime.device)

    def metrics(self) -> dict[str, float]:
        """The tool counters since the last call (`tool/<name>/calls|errors|timeouts`, `tool/invalid_calls`)."""
        return self.toolbox.metrics.pop()

    def close(self) -> None:
        self.toolbox.close()
