"""Multi-turn rollouts with tools (issue 19), `hf` engine: `MultiTurnHF.rollouts` runs B prompts × n rows in
lock-step on one KV cache; `MultiTurnHF.rollout` runs one trajectory alone (the reference the batch is tested
against). Per row:

    prefill the prompt
    repeat: sample the policy's turn until EOS, a stop string (the call format's end, `</tool_call>`) or the budget
            → parse its calls (`Toolbox.parse`) → none: stop (`eos` / `no_call`); `max_turns` turns: stop
            → run them (`Toolbox.run`, never raising) → their results as the chat template's tool messages, only
              the new messages templated and tokenised (`mmrl.rollout.observation`), new images through the processor
            → it does not fit the response budget: stop (`budget`; nothing of it is appended, so no image is cut)
            → append it: one forward of [the turn's last token + the observation] on the KV cache

`_Episode` holds a row's record and conversation and takes every decision above on the host; the two drivers only
feed the model: `_Row` (one trajectory, its own cache) and `mmrl.rollout.multiturn_batch` (every live row, one
cache). The KV cache lives
for the whole trajectory, so the prompt and each image are encoded once; positions of every forward that holds new
tokens come from the model's own rope index over the row's whole sequence so far
(`_prepare_position_ids_for_generation`, Qwen-VL's M-RoPE over every image), each sampled token's from the last + 1,
as `generate` does. Every token after the prompt is recorded with a loss mask (1: the policy's) and its sampling
log-prob (0 on observation tokens); `Trajectory.inputs()` is the whole conversation for one forward of the trainer.

Batched (`mmrl.rollout.multiturn_batch`; R live rows, L cache slots, K the widest chunk of new tokens):

    prefill  the B prompts once, left-padded → cache [B, L]; repeated n times (`batch_repeat_interleave`) → [N, L]
    decode   one forward [R, 1] per step; a row whose turn ended is fed padding under mask 0 (a hole in its cache
             row) and waits
    barrier  once every live row's turn ended: each row closes its turn on the host (calls, tools, observation);
             rows that ended are dropped (`batch_select_indices`); the others' [last token + observation] go in one
             forward [R, K], each chunk left-padded (holes), the new images' tensors concatenated in row order

Holes: the 2-D attention mask [R, L] has zeros at the left padding and at every hole; transformers builds the 4-D
mask from it (keys masked, queries placed after the cache's L slots), so no row ever attends a hole. A row's
positions are its own: `generation_positions` of its joined inputs, the function `rollout` uses (the rope index
of the whole batch under the hole-y mask gives the same — Qwen-VL's `get_rope_index` compacts each row by its
mask — but needs every row's whole padded sequence at each barrier). Why a barrier rather than appending each
observation as its row ends: the cache is one rectangle, so every forward is as wide as its widest chunk for every
row — appending per row would run an observation-wide forward (an image is hundreds of tokens) at each distinct
turn end, up to R per turn; the barrier runs one per turn and encodes that turn's images in one vision call, at the
cost of rows idling (as holes) until the batch's longest turn ends.

Sampling is keyed as the `hf` engine's (`row_seed(seed, step, prompt id, g)`, uniform of token position t after the
prompt, observation tokens included), so a trajectory does not depend on the batch it runs in: on the CPU `rollouts`
gives `rollout`'s tokens, and log-probs to ~1e-6 (reductions over padded shapes differ in the last bits).
The trainer takes trajectories through `mmrl.rollout.tool_engine`; the vllm engine's loop is
`mmrl.rollout.multiturn_vllm`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mmrl.model.prompts import TOKEN_KEYS
from mmrl.rollout.hf import Sampler
from mmrl.rollout.hf_decode import generation_positions
from mmrl.rollout.multiturn_batch import batched, each, run_batch
from mmrl.rollout.observation import (
    Observation, encode_observation, observation_text, tool_messages, tool_processor,
)
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
    for k, v in merged_media(media).items():
        out[k] = torch.cat([out[k], v.to(out[k].dtype)]) if k in out else v
    return out


def merged_media(media: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Observations' processor tensors as one dict (each key concatenated in order)."""
    out: dict[str, list[torch.Tensor]] = {}
    for m in media:
        for k, v in m.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


class _Episode:
    """One trajectory's record and conversation, the model aside: every token after the prompt (ids, loss mask,
    log-probs, types), the observations' media, the chat history, the turns, the tools' state. `fed`: tokens after
    the prompt already in the KV cache (a turn's last token waits for the observation's forward)."""

    def __init__(self, engine: "MultiTurnHF", prompt, state: TrajectoryState, budget: int, row: int = 0):
        self.engine, self.prompt, self.state, self.budget = engine, prompt, state, budget
        self.row = row  # its index among the rows of `rollouts`
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logps: list[float] = []
        self.types: list[int] = []
        self.media: list[dict[str, torch.Tensor]] = []
        self.history = engine.messages(prompt)
        self.turns: list[Turn] = []
        self.images: list[ToolImage] = []
        self.start = 0  # the current turn's first token
        self.fed = 0
        self.reason: str | None = None  # set once the trajectory ended

    def add(self, token: int, logp: float, policy: bool, kind: int = 0) -> None:
        self.ids.append(int(token))
        self.mask.append(int(policy))
        self.logps.append(float(logp) if policy else 0.0)
        self.types.append(int(kind))

    def begin(self) -> str | None:
        """A turn begins: `length` when the budget leaves no token for it (else None: draw)."""
        self.start = len(self.ids)
        return "length" if len(self.ids) >= self.budget else None

    def sampled(self, token: int, logp: float) -> str | None:
        """Record the policy's `token`; why its turn ended with it (`eos`, `stop`, `length`), else None."""
        self.add(token, logp, policy=True)
        if token in self.engine.policy.eos_ids:
            return "eos"
        stops, tok = self.engine.stops, self.engine.policy.tokenizer
        if stops and any(s in tok.decode(self.ids[max(self.start, len(self.ids) - 32):]) for s in stops):
            return "stop"
        return "length" if len(self.ids) >= self.budget else None

    def end_turn(self, ended: str) -> Observation | None:
        """Close the turn that `ended`: parse its calls, run them, append their observation to the record and
        return it (to be fed), or None when the trajectory ended (`reason` set)."""
        e, eos = self.engine, set(self.engine.policy.eos_ids)
        text = e.policy.tokenizer.decode([i for i in self.ids[self.start:] if i not in eos], skip_special_tokens=False)
        turn = Turn(text, self.start, len(self.ids))
        self.turns.append(turn)
        if ended == "length":
            return self._finish("length")
        turn.calls = e.toolbox.parse(turn.text)
        if not turn.calls:
            return self._finish("eos" if ended == "eos" else "no_call")
        if len(self.turns) == e.max_turns:
            return self._finish("max_turns")  # no turn follows: the calls are not run
        for call in turn.calls:
            result = e.toolbox.run(call, self.state)
            self.state = self.state.after(result)
            turn.results.append(result)
        if any(r.done for r in turn.results):
            return self._finish("done")
        new = tool_messages(turn.results)
        policy_end = e.eos_text.get(self.ids[-1]) if ended == "eos" else None
        processor = e.policy.processor
        obs_text = observation_text(processor, self.history, new, policy_end=policy_end,
                                    template_kwargs=e.template_kwargs)
        pictures = [im.image for r in turn.results for im in r.images]
        obs = encode_observation(e.tool_processor, obs_text, pictures, e.policy.prompts.media_dtype)
        if len(self.ids) + len(obs) >= self.budget:  # checked before anything is appended: no image is ever cut
            return self._finish("budget")
        self.history.extend([{"role": "assistant", "content": [{"type": "text", "text": turn.text}]}, *new])
        for i, kind in zip(obs.ids.tolist(), obs.token_types.tolist()):
            self.add(i, 0.0, policy=False, kind=kind)
        if obs.media:
            self.media.append(obs.media)
        self.images.extend(im for r in turn.results for im in r.images)
        return obs

    def _finish(self, reason: str) -> None:
        self.reason = reason

    def inputs(self, hf, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The whole sequence so far as one row [1, P + T] on `device`, and its positions under `hf`'s rope index
        ([A, 1, P + T], or None when `hf` takes no positions)."""
        full = _joined(self.prompt.tensors, torch.tensor(self.ids, dtype=torch.long),
                       torch.tensor(self.types, dtype=torch.long), self.media)
        full = {k: v.to(device) for k, v in full.items()}
        return full, generation_positions(hf, full)

    def trajectory(self) -> Trajectory:
        t = lambda xs, dt: torch.tensor(xs, dtype=dt)  # noqa: E731
        return Trajectory(self.prompt, t(self.ids, torch.long), t(self.mask, torch.long), t(self.logps, torch.float32),
                          t(self.types, torch.long), self.media, self.images, self.turns, self.reason or "max_turns")


class _Row:
    """One trajectory alone on its own KV cache (`rollout`): no padding, no holes."""

    def __init__(self, hf, ep: _Episode, device: torch.device):
        self.hf, self.ep, self.device = hf, ep, device
        self.cache = None
        self.last: torch.Tensor | None = None  # [A, 1, 1] the last position fed

    def extend(self, new_media: dict[str, torch.Tensor]) -> torch.Tensor:
        """Feed every token not yet in the cache (with `new_media`, the images among them), positions from the
        rope index of the whole sequence; returns the last token's logits [1, V]."""
        ep = self.ep
        full, positions = ep.inputs(self.hf, self.device)  # positions: [A, 1, L] or None
        start = 0 if self.cache is None else ep.prompt.length + ep.fed
        kwargs: dict[str, Any] = {k: v.to(self.device) for k, v in new_media.items()}
        if positions is not None:
            kwargs["position_ids"] = positions[..., start:]
            self.last = positions[..., -1:]
        out = self.hf(input_ids=full["input_ids"][:, start:], attention_mask=full["attention_mask"],
                      past_key_values=self.cache, use_cache=True, logits_to_keep=1, **kwargs)
        self.cache, ep.fed = out.past_key_values, len(ep.ids)
        return out.logits[:, -1].float()

    def step(self) -> torch.Tensor:
        """Feed the last sampled token; its logits [1, V]."""
        ep, kwargs = self.ep, {}
        if self.last is not None:
            self.last = self.last + 1
            kwargs["position_ids"] = self.last
        mask = torch.ones(1, ep.prompt.length + len(ep.ids), dtype=torch.long, device=self.device)
        tok = torch.tensor([[ep.ids[-1]]], device=self.device)
        out = self.hf(input_ids=tok, attention_mask=mask, past_key_values=self.cache, use_cache=True,
                      logits_to_keep=1, **kwargs)
        self.cache, ep.fed = out.past_key_values, len(ep.ids)
        return out.logits[:, -1].float()


@contextlib.contextmanager
def _evaluating(policy):
    was_training = policy.model.training
    policy.eval()
    try:
        yield
    finally:
        if was_training:
            policy.train()


class MultiTurnHF:
    """Multi-turn sampling from the policy's own model (`policy.hf`), with `toolbox`'s tools. `max_turns`: the
    policy's turns at most; `stops`: strings that end a turn (default: the call format's end, `STOPS`);
    `template_kwargs`: extra arguments of the chat template (e.g. `tools=toolbox.schemas()`), the same the prompt
    was rendered with; `system_prompt`: as given to `PromptEncoder.encode`; `tool_image_max_pixels`: the pixel cap of
    the images tools return (`tool_processor`; None: the processor's own)."""

    def __init__(self, policy, toolbox: Toolbox, *, max_turns: int = 4, stops: tuple[str, ...] | None = None,
                 template_kwargs: dict[str, Any] | None = None, system_prompt: str | None = None,
                 tool_image_max_pixels: int | None = None):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.policy, self.toolbox, self.max_turns = policy, toolbox, max_turns
        fmt = next((k for k, v in FORMATS.items() if v == toolbox.format), None)
        self.stops = stops if stops is not None else STOPS.get(fmt, ())
        self.template_kwargs = template_kwargs or {}
        self.system_prompt = system_prompt
        tok = policy.tokenizer
        self.eos_text = {i: tok.convert_ids_to_tokens(i) for i in policy.eos_ids}
        self.tool_processor = tool_processor(policy.processor, tool_image_max_pixels)
        self.limits = ImageLimits.from_processor(self.tool_processor, policy.convention)

    def sampler(self, prompt, params: SamplingParams, g: int = 0) -> Sampler:
        """The `hf` engine's sampler for row g of `prompt` (its log-probs recorded per draw)."""
        return self._sampler(params, [row_seed(params.seed, params.step, prompt.sample.id, g)])

    def _sampler(self, params: SamplingParams, seeds: list[int]) -> Sampler:
        suppress = self.policy.never_sample + (self.policy.eos_ids if params.ignore_eos else [])
        return Sampler(params, seeds, suppress, 0, self.policy.runtime.device)

    def messages(self, prompt) -> list[dict[str, Any]]:
        """The prompt's messages as `PromptEncoder.encode` renders them."""
        msgs = list(prompt.sample.messages)
        if self.system_prompt is not None and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}] + msgs
        return msgs

    def _start(self, prompt) -> TrajectoryState:
        from mmrl.perception.images import load_image

        images = [load_image(s, sample_id=prompt.sample.id) for s in prompt.sample.media("image")]
        return TrajectoryState.start(images, prompt.geometry if len(prompt.geometry) == len(images) else None,
                                     self.limits)

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(hf)` in eval mode, `hf` the policy's transformers model (through its FSDP root when sharded)."""
        with _evaluating(self.policy):
            return self.policy.call(fn)

    @torch.no_grad()
    def rollout(self, prompt, params: SamplingParams, g: int = 0, sampler=None) -> Trajectory:
        """Trajectory g of `prompt` (PromptInputs), alone. `params.max_new_tokens`: the response budget, every
        token after the prompt. `sampler` (default: `self.sampler`): `draw(logits [1, V], t) -> ids [1]`, recording
        each pick's log-prob in `sampler.logprobs`."""
        sampler = sampler or self.sampler(prompt, params, g)
        ep = _Episode(self, prompt, self._start(prompt), params.max_new_tokens)
        return self._call(lambda hf: self._run(hf, ep, sampler))

    def _run(self, hf, ep: _Episode, sampler) -> Trajectory:
        row = _Row(hf, ep, self.policy.runtime.device)
        logits = row.extend({k: v for k, v in ep.prompt.tensors.items() if k not in TOKEN_KEYS})
        while True:
            ended = ep.begin()
            while ended is None:
                pick = int(sampler.draw(logits, len(ep.ids))[0])
                ended = ep.sampled(pick, float(sampler.logprobs[-1][0]))
                if ended is None:
                    logits = row.step()
            obs = ep.end_turn(ended)
            if obs is None:
                return ep.trajectory()
            logits = row.extend(obs.media)

    @torch.no_grad()
    def rollouts(self, prompts, params: SamplingParams, n: int, samplers: list | None = None) -> list[Trajectory]:
        """n trajectories of each of the B `prompts` (PromptInputs), in lock-step on one KV cache (see the module
        docstring): N = B·n trajectories, rows b·n … b·n+n−1 prompt b's, row (b, g) what `rollout(prompts[b],
        params, g)` gives. `samplers` (default: the `hf` sampler of every row, one draw per step): the N rows' own,
        each as `rollout`'s `sampler`."""
        if samplers is not None and len(samplers) != len(prompts) * n:
            raise ValueError(f"{len(samplers)} samplers for {len(prompts)} prompts × {n} rows")
        eps = []
        for p in prompts:
            state = self._start(p)  # immutable: the n rows share it
            eps += [_Episode(self, p, state, params.max_new_tokens, row=len(eps) + g) for g in range(n)]
        if samplers is None:
            seeds = [row_seed(params.seed, params.step, p.sample.id, g) for p in prompts for g in range(n)]
            draw = batched(self._sampler(params, seeds))
        else:
            draw = each(samplers)
        self._call(lambda hf: run_batch(hf, self.policy, prompts, eps, n, draw))
        return [ep.trajectory() for ep in eps]
