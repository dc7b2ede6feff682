"""Log-probs of completions: the last hidden states at the completion positions (packed without padding, or
padded: the same numbers, `mmrl.model.packing`), then `mmrl.kernels.token_logprobs`, which never holds the
[tokens, vocab] logits; the never-sampled vision specials are left out of the softmax (`renormalize_without`), so
the policy scored is the one the engines sample from."""

from __future__ import annotations

import torch

from mmrl.kernels import minp_log_mass, token_logprobs
from mmrl.kernels.logprobs import renormalize_without
from mmrl.model.packing import pack, rope_index_of
from mmrl.model.prompts import TOKEN_KEYS
from mmrl.model.shared_prompt import prompt_groups, share
from mmrl.model.vision_once import VISION_ROWS, shared_vision
from mmrl.runtime import Runtime


PRESENT = "_mmrl_present"  # batch keys of multi-turn rows (`mmrl.train.rows.micro_inputs`): [N, C] every token …
TOKEN_TYPES = "_mmrl_token_types"  # … and the completion's mm_token_type_ids [N, C]; taken out before the model


def completion_hidden(batch, completion_ids, completion_mask, model, *, packs: bool, runtime: Runtime,
                      shares: bool = False):
    """Last hidden states of the completion positions [N·C, H], their targets [N·C] (−100 where masked)
    and the lm_head weight [V, H]. Packed (`mmrl.model.packing`), padded, or with each prompt once for the rows
    that continue it (`shares`: `mmrl.model.shared_prompt`), the same numbers; a batch collated with `share_vision`
    has its vision encoded once per distinct image or video (`mmrl.model.vision_once`). A batch of multi-turn rows
    (`PRESENT`, `TOKEN_TYPES`) attends to every token of the completion, observations included, and scores the
    policy's (`completion_mask`) only."""
    prompt_len = batch["input_ids"].shape[1]
    inputs = dict(batch)
    rows = inputs.pop(VISION_ROWS, None)  # [N, 6] host
    present = inputs.pop(PRESENT, completion_mask)  # [N, C] multi-turn rows: observation tokens too
    types = inputs.pop(TOKEN_TYPES, None)  # [N, C] their mm_token_type_ids
    for k in TOKEN_KEYS:
        if k in inputs:
            ext = completion_ids if k == "input_ids" else (
                present.to(inputs[k].dtype) if k == "attention_mask"
                else types if types is not None and k == "mm_token_type_ids" else torch.zeros_like(completion_ids)
            )
            inputs[k] = torch.cat([inputs[k], ext.to(inputs[k].dtype)], dim=1)  # [N, P+C]
    shares = shares and types is None  # multi-turn rows hold different media after the prompt: run per row
    leader = prompt_groups(inputs, prompt_len, rows) if shares else []
    with runtime.autocast():
        if len(set(leader)) < len(leader):  # some prompt continued by several rows: it runs once
            hidden = _shared_hidden(inputs, prompt_len, completion_mask, leader, rows, model)  # [N, C, H]
        else:
            if rows is not None:
                inputs = shared_vision(model.model, inputs, rows)
            if packs:
                packed = pack(inputs, prompt_len, present, rope_index_of(model))
                flat = model.model(**packed.inputs, use_cache=False).last_hidden_state[0]  # [ΣL, H]
                hidden = flat[packed.index]  # [N, C, H]
            else:
                hidden = model.model(**inputs, use_cache=False).last_hidden_state  # [N, P+C, H]
                hidden = hidden[:, prompt_len - 1 : -1]  # [N, C, H]: position t predicts completion token t
    n, c, h = hidden.shape
    targets = torch.where(completion_mask.bool(), completion_ids, torch.full_like(completion_ids, -100))
    return hidden.reshape(n * c, h), targets.reshape(-1), model.get_output_embeddings().weight


def _shared_hidden(inputs, prompt_len, completion_mask, leader, rows, model):
    """[N, C, H] through the shared batch of `mmrl.model.shared_prompt` (each prompt once, its media once)."""
    attn = str(getattr(model.config, "_attn_implementation", "sdpa"))
    shared = share(inputs, prompt_len, completion_mask, leader, rope_index=rope_index_of(model), rows_table=rows,
                   attn=attn, dtype=model.dtype)
    batch = shared.inputs
    if shared.rows is not None:
        batch = shared_vision(model.model, batch, shared.rows)
    out = model.model(**batch, use_cache=False).last_hidden_state  # [B', T', H]
    return out.reshape(-1, out.shape[-1])[shared.index]  # [N, C, H]


def scored_tokens(hidden, targets, weight, *, temperature: float, with_entropy: bool, kernels, never_sample):
    """(log-probs [N·C], entropies [N·C] or None) of `targets` under the lm_head `weight`, the `never_sample`
    ids excluded from the softmax."""
    if weight.dtype != hidden.dtype:  # bf16 autocast: the kernel takes one dtype (fp32 accumulation inside)
        weight = weight.to(hidden.dtype)
    logp, ent = token_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=with_entropy,
                               backend=kernels.backend, chunk_size=kernels.chunk_size)
    if never_sample:
        excluded = torch.tensor(never_sample, dtype=torch.long, device=hidden.device)
        logp, ent = renormalize_without(logp, ent, hidden, weight, targets, excluded, temperature=temperature)
    return logp, ent


def minp_mass(hidden, targets, weight, *, kappa: float, temperature: float):
    """Per token: log of the mass a min-p filter at `kappa` keeps, and whether the target survives it."""
    return minp_log_mass(hidden, weight, targets, kappa=kappa, temperature=temperature)
