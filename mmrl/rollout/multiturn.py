"""Multi-turn rollouts with tools (issue 19), `hf` engine, one trajectory at a time: `MultiTurnHF.rollout`.

    prefill the prompt
    repeat: sample the policy's turn until EOS, a stop string (the call format's end, `</tool_call>`) or the budget
            → parse its calls (`Toolbox.parse`) → none: stop (`eos` / `no_call`); `max_turns` turns: stop
            → run them (`Toolbox.run`, never raising) → their results as the chat template's tool messages, only
              the new messages templated and tokenised (`mmrl.rollout.observation`), new images through the processor
            → it does not fit the response budget: stop (`budget`; nothing of it is appended, so no image is cut)
            → append it: one forward of [the turn's last token + the observation] on the KV cache

The KV cache lives for the whole trajectory, so the prompt and each image are encoded once; positions of every
forward that holds new tokens come from the model's own rope index over the whole sequence so far
(`_prepare_position_ids_for_generation`, Qwen-VL's M-RoPE over every image), each sampled token's from the last + 1,
as `generate` does. Every token after the prompt is recorded with a loss mask (1: the policy's) and its sampling
log-prob (0 on observation tokens); `Trajectory.inputs()` is the whole conversation for one forward of the trainer.

Sampling is keyed as the `hf` engine's (`row_seed(seed, step, prompt id, g)`, uniform of token position t after the
prompt, observation tokens included), so a trajectory does not depend on the batch it runs in.
Not yet: rows batched together (each trajectory runs alone), the vllm engine, the trainer's wiring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mmrl.model.prompts import TOKEN_KEYS
from mmrl.rollout.hf import Sampler
from mmrl.rollout.hf_decode import generation_positions
from mmrl.rollout.observation import encode_observation, observation_text, tool_messages
from mmrl.rollout.types import SamplingParams, row_seed
from mmrl.tools.calls import FORMATS, ToolCall
from mmrl.tools.toolbox import Toolbox
from mmrl.tools.types import ImageLimits, ToolImage, ToolResult, TrajectoryState

STOPS = {"qwen": ("</tool_call>",)}  # a call format's end, where a turn stops (other formats: EOS only)
FINISH = ("eos", "no_call", "max_turns", "budget", "length", "done")


@dataclass
class Turn:
    """One policy turn: its text, where its tokens lie in `Trajectory.ids` ([start, end)), its calls, results."""

    text: str
    start: int
    end: int
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)


@dataclass
class Trajectory:
    """One row: every token after the prompt (policy and observation), in order, with the media of the tools'
    images. `finish_reason`: eos (the policy ended without a call), no_call (it stopped at a call's end but wrote
    no readable call), max_turns, budget (an observation did not fit), length (the policy's tokens reached the
    budget), done (a tool ended the trajectory)."""

    prompt: Any  # PromptInputs
    ids: torch.Tensor  # [T] long, host
    loss_mask: torch.Tensor  # [T] 1 = the policy's token
    logprobs: torch.Tensor  # [T] sampling log-probs, 0 on observation tokens
    token_types: torch.Tensor  # [T] mm_token_type_ids (1 on image tokens)
    media: list[dict[str, torch.Tensor]]  # per observation with images: its processor tensors, in order
    images: list[ToolImage]  # the tools' images, in order
    turns: list[Turn]
    finish_reason: str

    def inputs(self) -> dict[str, torch.Tensor]:
        """The whole conversation as one batch row [1, P + T] for one forward (host tensors)."""
        return _joined(self.prompt.tensors, self.ids, self.token_types, self.media)


def _joined(prompt: dict[str, torch.Tensor], ids: torch.Tensor, types: torch.Tensor,
            media: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = dict(prompt)
    out["input_ids"] = torch.cat([prompt["input_ids"], ids[None].to(prompt["input_ids"].dtype)], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if "mm_token_type_ids" in prompt:
        out["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], types[None].to(
            prompt["mm_token_type_ids"].dtype)], dim=1)
    for m in media:
        for k, v in m.items():
            out[k] = torch.cat([out[k], v.to(out[k].dtype)]) if k in out else v
    return out


class _Row:
    """A trajectory being sampled: its tokens so far, the KV cache, and the last position."""

    def __init__(self, hf, prompt, device: torch.device):
        self.hf, self.prompt, self.device = hf, prompt, device
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logps: list[float] = []
        self.types: list[int] = []
        self.media: list[dict[str, torch.Tensor]] = []
        self.cache = None
        self.fed = 0  # tokens after the prompt already in the cache
        self.last: torch.Tensor | None = None  # [A, 1, 1] the last position fed

    def extend(self, new_media: dict[str, torch.Tensor]) -> torch.Tensor:
        """Feed every token not yet in the cache (with `new_media`, the images among them), positions from the
        rope index of the whole sequence; returns the last token's logits [1, V]."""
        full = _joined(self.prompt.tensors, torch.tensor(self.ids, dtype=torch.long),
                       torch.tensor(self.types, dtype=torch.long), self.media)
        full = {k: v.to(self.device) for k, v in full.items()}
        start = 0 if self.cache is None else self.prompt.length + self.fed
        positions = generation_positions(self.hf, full)  # [A, 1, L] or None
        kwargs: dict[str, Any] = {k: v.to(self.device) for k, v in new_media.items()}
        if positions is not None:
            kwargs["position_ids"] = positions[..., start:]
            self.last = positions[..., -1:]
        out = self.hf(input_ids=full["input_ids"][:, start:], attention_mask=full["attention_mask"],
                      past_key_values=self.cache, use_cache=True, logits_to_keep=1, **kwargs)
        self.cache, self.fed = out.past_key_values, len(self.ids)
        return out.logits[:, -1].float()

    def step(self) -> torch.Tensor:
        """Feed the last sampled token; its logits [1, V]."""
        kwargs = {}
        if self.last is not None:
            self.last = self.last + 1
            kwargs["position_ids"] = self.last
        mask = torch.ones(1, self.prompt.length + len(self.ids), dtype=torch.long, device=self.device)
        tok = torch.tensor([[self.ids[-1]]], device=self.device)
        out = self.hf(input_ids=tok, attention_mask=mask, past_key_values=self.cache, use_cache=True,
                      logits_to_keep=1, **kwargs)
        self.cache, self.fed = out.past_key_values, len(self.ids)
        return out.logits[:, -1].float()

    def add(self, token: int, logp: float, policy: bool, kind: int = 0) -> None:
        self.ids.append(int(token))
        self.mask.append(int(policy))
        self.logps.append(float(logp) if policy else 0.0)
        self.types.append(int(kind))


class MultiTurnHF:
    """Multi-turn sampling from the policy's own model (`policy.hf`), with `toolbox`'s tools. `max_turns`: the
    policy's turns at most; `stops`: strings that end a turn (default: the call format's end, `STOPS`);
    `template_kwargs`: extra arguments of the chat template (e.g. `tools=toolbox.schemas()`), the same the prompt
    was rendered with; `system_prompt`: as given to `PromptEncoder.encode`."""

    def __init__(self, policy, toolbox: Toolbox, *, max_turns: int = 4, stops: tuple[str, ...] | None = None,
                 template_kwargs: dict[str, Any] | None = None, system_prompt: str | None = None):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.policy, self.toolbox, self.max_turns = policy, toolbox, max_turns
        fmt = next((k for k, v in FORMATS.items() if v == toolbox.format), None)
        self.stops = stops if stops is not None else STOPS.get(fmt, ())
        self.template_kwargs = template_kwargs or {}
        self.system_prompt = system_prompt
        tok = policy.tokenizer
        self.eos_text = {i: tok.convert_ids_to_tokens(i) for i in policy.eos_ids}
        self.limits = ImageLimits.from_processor(policy.processor, policy.convention)

    def sampler(self, prompt, params: SamplingParams, g: int = 0) -> Sampler:
        """The `hf` engine's sampler for row g of `prompt` (its log-probs recorded per draw)."""
        seed = row_seed(params.seed, params.step, prompt.sample.id, g)
        suppress = self.policy.never_sample + (self.policy.eos_ids if params.ignore_eos else [])
        return Sampler(params, [seed], suppress, 0, self.policy.runtime.device)

    def messages(self, prompt) -> list[dict[str, Any]]:
        """The prompt's messages as `PromptEncoder.encode` renders them."""
        msgs = list(prompt.sample.messages)
        if self.system_prompt is not None and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}] + msgs
        return msgs

    @torch.no_grad()
    def rollout(self, prompt, params: SamplingParams, g: int = 0, sampler=None) -> Trajectory:
        """Trajectory g of `prompt` (PromptInputs). `params.max_new_tokens`: the response budget, every token
        after the prompt. `sampler` (default: `self.sampler`): `draw(logits [1, V], t) -> ids [1]`, recording each
        pick's log-prob in `sampler.logprobs`."""
        from mmrl.perception.images import load_image

        sampler = sampler or self.sampler(prompt, params, g)
        was_training = self.policy.model.training
        self.policy.eval()
        try:
            images = [load_image(s, sample_id=prompt.sample.id) for s in prompt.sample.media("image")]
            state = TrajectoryState.start(images, prompt.geometry if len(prompt.geometry) == len(images) else None,
                                          self.limits)
            return self.policy.call(lambda hf: self._run(hf, prompt, params, sampler, state))
        finally:
            if was_training:
                self.policy.train()

    def _run(self, hf, prompt, params: SamplingParams, sampler, state: TrajectoryState) -> Trajectory:
        row = _Row(hf, prompt, self.policy.runtime.device)
        media = {k: v for k, v in prompt.tensors.items() if k not in TOKEN_KEYS}
        logits = row.extend(media)
        history, turns, tool_images = self.messages(prompt), [], []
        reason = "max_turns"
        for _ in range(self.max_turns):
            turn, ended, logits = self._turn(row, logits, sampler, params.max_new_tokens)
            turns.append(turn)
            if ended == "length":
                reason = "length"
                break
            turn.calls = self.toolbox.parse(turn.text)
            if not turn.calls:
                reason = "eos" if ended == "eos" else "no_call"
                break
            if len(turns) == self.max_turns:
                break  # no turn follows: the calls are not run
            reason, logits, state = self._observe(row, turn, history, state, ended, params.max_new_tokens)
            if reason:
                break
            tool_images.extend(im for r in turn.results for im in r.images)
            reason = "max_turns"
        t = lambda xs, dt: torch.tensor(xs, dtype=dt)  # noqa: E731
        return Trajectory(prompt, t(row.ids, torch.long), t(row.mask, torch.long), t(row.logps, torch.float32),
                          t(row.types, torch.long), row.media, tool_images, turns, reason)

    def _turn(self, row: _Row, logits: torch.Tensor, sampler, budget: int) -> tuple[Turn, str, torch.Tensor]:
        """Sample one policy turn: until EOS (`eos`), a stop string (`stop`) or the budget (`length`). Its last
        token is not fed yet (the observation's forward feeds it)."""
        tok, eos, start = self.policy.tokenizer, set(self.policy.eos_ids), len(row.ids)
        ended = "length"
        while len(row.ids) < budget:
            pick = int(sampler.draw(logits, len(row.ids))[0])
            row.add(pick, float(sampler.logprobs[-1][0]), policy=True)
            if pick in eos:
                ended = "eos"
                break
            if self.stops and any(s in tok.decode(row.ids[max(start, len(row.ids) - 32):]) for s in self.stops):
                ended = "stop"
                break
            if len(row.ids) >= budget:
                break
            logits = row.step()
        text = tok.decode([i for i in row.ids[start:] if i not in eos], skip_special_tokens=False)
        return Turn(text, start, len(row.ids)), ended, logits

    def _observe(self, row: _Row, turn: Turn, history: list[dict[str, Any]], state: TrajectoryState, ended: str,
                 budget: int) -> tuple[str | None, torch.Tensor | None, TrajectoryState]:
        """Run the turn's calls and append their results (None: appended, with the next logits), or why not."""
        for call in turn.calls:
            result = self.toolbox.run(call, state)
            state = state.after(result)
            turn.results.append(result)
        if any(r.done for r in turn.results):
            return "done", None, state
        new = tool_messages(turn.results)
        policy_end = self.eos_text.get(row.ids[-1]) if ended == "eos" else None
        processor = self.policy.processor
        text = observation_text(processor, history, new, policy_end=policy_end, template_kwargs=self.template_kwargs)
        pictures = [im.image for r in turn.results for im in r.images]
        obs = encode_observation(processor, text, pictures, self.policy.prompts.media_dtype)
        if len(row.ids) + len(obs) >= budget:  # checked before anything is appended: no image is ever cut
            return "budget", None, state
        history.extend([{"role": "assistant", "content": [{"type": "text", "text": turn.text}]}, *new])
        for i, kind in zip(obs.ids.tolist(), obs.token_types.tolist()):
            row.add(i, 0.0, policy=False, kind=kind)
        if obs.media:
            row.media.append(obs.media)
        return None, row.extend(obs.media), state
