"""Multi-turn rollouts with tools on the `hf` engine (`mmrl.rollout.multiturn`, issue 19): a trajectory's ids, images
and sampling log-probs equal what the processor and the model give the whole conversation in one pass; tools
returning none, one or two images of different sizes; each image encoded once; stops (no call, max_turns, a budget
that never cuts an image, length). Batched (`rollouts`): every row equals its trajectory alone (`rollout`) — ids,
finish reasons, observations, media, log-probs ≤ 1e-5 — scripted (rows making different numbers of calls, prompts of
different lengths) and sampled (rows ending at different turns), with one forward per turn's observations."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmrl.config import ModelConfig
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.rollout.multiturn import MultiTurnHF
from mmrl.rollout.tool_engine import Script
from mmrl.rollout.types import SamplingParams
from mmrl.rollout.observation import observation_text
from mmrl.tools.calls import ToolCall
from mmrl.tools.run import Tool, make_tool
from mmrl.tools.toolbox import Toolbox
from tests.multiturn_helpers import one_pass

SIZES = [(56, 84), (112, 56)]  # tool images of different sizes (and unlike the prompt's 70 × 42)


def pictures(arguments, state):
    """A test tool: `n` pictures (0, 1 or 2), each of its own size, and a line of text."""
    n = int(arguments.get("n", 0))
    return [Image.new("RGB", SIZES[i], (40 * i + 30, 90, 200 - 50 * i)) for i in range(n)] + [f"{n} pictures"]


def call(n: int) -> str:
    return f'Let me look. <tool_call>{{"name": "pictures", "arguments": {{"n": {n}}}}}</tool_call>'


@pytest.fixture(scope="module")
def policy(zoo_cache):
    return Policy.load(ModelConfig(path="zoo:qwen2_vl"))


@pytest.fixture(scope="module")
def prompt(policy):
    return policy.encode(make("grounding", 1, seed=2, width=70, height=42)[0])


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def family(request, zoo_cache):
    """(policy, prompt) per Qwen-VL family."""
    pol = Policy.load(ModelConfig(path=f"zoo:{request.param}"))
    return pol, pol.encode(make("grounding", 1, seed=2, width=70, height=42)[0])


def _engine(policy, max_turns=4):
    return MultiTurnHF(policy, Toolbox([Tool("pictures", pictures)]), max_turns=max_turns)


def test_a_trajectory_is_the_whole_conversation_inone_pass(family):
    policy, prompt = family
    turns = [call(1), call(2), call(0), "The answer is 3."]
    tower = policy.hf.model.visual
    rows = []
    hook = lambda m, a, k: rows.append(int((a[0] if a else k["hidden_states"]).shape[0]))  # noqa: E731
    handle = tower.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=2000), sampler=Script(policy, turns))
    finally:
        handle.remove()
    assert traj.finish_reason == "eos"
    assert [len(r.images) for t in traj.turns for r in t.results] == [1, 2, 0]
    _checkone_pass(policy, prompt, traj, rows)


def _checkone_pass(policy, prompt, traj, rows):
    inputs = traj.inputs()
    ref = one_pass(policy, prompt, traj)
    n = inputs["input_ids"].shape[1]
    assert torch.equal(inputs["input_ids"], ref["input_ids"][:, :n])
    assert policy.tokenizer.decode(ref["input_ids"][0, n:]) == "\n"  # only the template's newline after the end
    for k in ("pixel_values", "image_grid_thw"):
        assert torch.equal(inputs[k], ref[k].to(inputs[k].dtype)), k
    assert torch.equal(inputs["mm_token_type_ids"], ref["mm_token_type_ids"][:, :n])
    assert sum(rows) == inputs["pixel_values"].shape[0]  # every image encoded once, over the whole trajectory
    # observation tokens masked, image tokens among them
    mask, image_id = traj.loss_mask.bool(), policy.hf.config.image_token_id
    assert not mask[traj.ids == image_id].any() and (traj.logprobs[~mask] == 0).all()
    for t in traj.turns:
        assert mask[t.start:t.end].all()
    # the model's log-probs of the policy's tokens in ONE forward of the whole conversation = the sampling ones
    with torch.no_grad():
        logits = policy.hf(**inputs).logits.float()[0]  # [P + T, V]
    logits[:, policy.never_sample] = -float("inf")
    p = prompt.length
    logp = torch.log_softmax(logits[p - 1:-1], -1).gather(1, traj.ids[:, None]).squeeze(1)  # [T]
    assert torch.allclose(logp[mask], traj.logprobs[mask], atol=1e-4, rtol=0)
    # the M-RoPE positions of the whole sequence: the model's rope index runs over every image
    pos, _ = policy.hf.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                            image_grid_thw=inputs["image_grid_thw"])
    assert pos.shape[-1] == n and int(pos[..., -1].max()) < n - 1  # images take fewer positions than tokens


def test_the_budget_stops_before_an_observation_that_does_not_fit(policy, prompt):
    turns = [call(2), "unused"]
    full = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=2000), sampler=Script(policy, turns))
    first = full.turns[0].end
    traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=first + 20), sampler=Script(policy, turns))
    assert traj.finish_reason == "budget"
    assert len(traj.ids) == first and traj.loss_mask.all()  # nothing of the observation, no image token
    assert traj.media == [] and traj.images == []


def test_max_turns_no_call_and_length(policy, prompt):
    turns = [call(1), call(1), call(1)]
    traj = _engine(policy, max_turns=2).rollout(prompt, SamplingParams(max_new_tokens=2000),
                                                 sampler=Script(policy, turns))
    assert traj.finish_reason == "max_turns" and len(traj.turns) == 2 and len(traj.images) == 1
    assert traj.turns[1].calls and not traj.turns[1].results  # the last turn's call is not run
    traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=2000),
                                   sampler=Script(policy, ["No tool needed."]))
    assert traj.finish_reason == "eos" and len(traj.turns) == 1 and traj.loss_mask.all()
    traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=5), sampler=Script(policy, [call(1)]))
    assert traj.finish_reason == "length" and len(traj.ids) == 5


def test_the_hf_sampler_drives_it_and_records_its_logprobs(policy, prompt):
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=1, step=0)
    a = _engine(policy).rollout(prompt, params)
    b = _engine(policy).rollout(prompt, params)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)  # keyed sampling
    assert a.finish_reason in ("eos", "length", "no_call") and (a.logprobs[a.loss_mask.bool()] <= 0).all()


def test_a_turn_the_policy_ends_itself_keeps_its_eos_and_the_template_its_own_end(policy, prompt):
    """Box calls (no stop string): the turn ends at the policy's EOS, which the observation does not repeat."""
    engine = MultiTurnHF(policy, Toolbox([make_tool("zoom_in")], fmt="box"))
    traj = engine.rollout(prompt, SamplingParams(max_new_tokens=2000),
                          sampler=Script(policy, ["<box>[10, 5, 40, 30]</box>", "Done."], eos_each=True))
    assert traj.finish_reason == "eos" and len(traj.images) == 1 and traj.turns[0].results[0].error is None
    assert int(traj.ids[traj.turns[0].end - 1]) == policy.eos_id and traj.loss_mask[traj.turns[0].end - 1] == 1
    rows = [int(traj.inputs()["pixel_values"].shape[0])]  # (the encoder count is checked in the test above)
    _checkone_pass(policy, prompt, traj, rows)


class _Template:
    """A processor whose template renders earlier turns differently once a tool turn follows."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, **kw):
        n = len(messages)
        text = lambda c: c if isinstance(c, str) else "".join(p.get("text", "") for p in c)  # noqa: E731
        return "".join(f"[{m['role']}{n}]{text(m['content'])}" for m in messages) + ("[gen]" if add_generation_prompt else "")


def test_a_template_that_rerenders_the_history_is_refused():
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="renders the conversation before a tool turn differently"):
        observation_text(_Template(), user, [{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="dropped the assistant's turn text"):
        observation_text(type("Drop", (), {"apply_chat_template": lambda self, m, **kw: "same"})(), user, [])


def _two_prompts(policy):
    """Prompts of different lengths (images of 70 × 42 and 56 × 112) and ids (so different sampling keys)."""
    return [policy.encode(make("grounding", 1, seed=2, width=70, height=42)[0]),
            policy.encode(make("grounding", 2, seed=5, width=56, height=112)[1])]


def _assert_same(got, ref, row):
    assert got.finish_reason == ref.finish_reason, row
    for k in ("ids", "loss_mask", "token_types"):
        assert torch.equal(getattr(got, k), getattr(ref, k)), (row, k)
    assert torch.allclose(got.logprobs, ref.logprobs, atol=1e-5, rtol=0), row
    turn = lambda t: (t.text, t.start, t.end, len(t.calls), [(r.text, len(r.images)) for r in t.results])  # noqa: E731
    assert [turn(t) for t in got.turns] == [turn(t) for t in ref.turns], row
    assert [m.keys() for m in got.media] == [m.keys() for m in ref.media], row
    assert all(torch.equal(m[k], r[k]) for m, r in zip(got.media, ref.media) for k in m), row
    assert [im.image.size for im in got.images] == [im.image.size for im in ref.images], row


# prompt-major: rows 0-2 prompt 0's, rows 3-5 prompt 1's; 0 to 3 observations, of 0, 1 or 2 images each
SCRIPTS = [[call(1), call(2), "The answer is 3."], ["No tool needed."], [call(0), call(1), call(2), "x"],
           [call(2), "Answer."], [call(1), call(1), call(1), call(1)], [call(0), "Fine."]]


def test_batched_rollouts_are_each_trajectory_alone(family):
    policy = family[0]
    prompts, engine, params = _two_prompts(policy), _engine(policy), SamplingParams(max_new_tokens=2000)
    assert prompts[0].length != prompts[1].length  # left padding at the prefill
    fed, encoded = [], []
    emb = policy.hf.get_input_embeddings().register_forward_hook(lambda m, a, out: fed.append(tuple(a[0].shape)))
    tower = policy.hf.model.visual.register_forward_pre_hook(
        lambda m, a, k: encoded.append(int((a[0] if a else k["hidden_states"]).shape[0])), with_kwargs=True)
    try:
        got = engine.rollouts(prompts, params, 3, samplers=[Script(policy, s) for s in SCRIPTS])
    finally:
        emb.remove(), tower.remove()
    assert [t.finish_reason for t in got] == ["eos", "eos", "eos", "eos", "max_turns", "eos"]
    for r, traj in enumerate(got):
        _assert_same(traj, engine.rollout(prompts[r // 3], params, r % 3, sampler=Script(policy, SCRIPTS[r])), r)
    # each prompt prefilled once; then one token a step, and one forward per turn's observations (rows that ended
    # dropped: 5 rows call after turn 1, 3 after turn 2, 2 after turn 3)
    assert fed[0] == (2, max(p.length for p in prompts))
    assert [rows for rows, k in fed[1:] if k > 1] == [5, 3, 2]
    assert all(rows in (6, 5, 3, 2) for rows, _ in fed[1:])
    # the vision tower: once for the prompts, once per turn for every row's new images together
    tools = sum(int(m["pixel_values"].shape[0]) for t in got for m in t.media)
    assert len(encoded) == 4 and sum(encoded) == sum(int(p.tensors["pixel_values"].shape[0]) for p in prompts) + tools


class _EveryTurnCalls(Toolbox):
    """Reads every turn as a call of `pictures`, of len(text) % 3 pictures: the random policy's sampled turns run
    tools and see images."""

    def parse(self, text):
        return [ToolCall("pictures", {"n": len(text) % 3})]


def test_sampled_batched_rollouts_draw_what_each_row_draws_alone(policy):
    """The hf sampler over all rows (one draw a step, each row at its own position) draws each row's tokens alone;
    turns end at a stop string ("e"), so rows end turns, and trajectories, at different steps."""
    prompts = _two_prompts(policy)
    engine = MultiTurnHF(policy, _EveryTurnCalls([Tool("pictures", pictures)]), max_turns=3, stops=("e",))
    for params in (SamplingParams(temperature=1.0, max_new_tokens=80, seed=1),
                   SamplingParams(greedy=True, max_new_tokens=40, seed=1)):
        got = engine.rollouts(prompts, params, 3)
        for r, traj in enumerate(got):
            _assert_same(traj, engine.rollout(prompts[r // 3], params, r % 3), (params.greedy, r))
    sampled = engine.rollouts(prompts, SamplingParams(temperature=1.0, max_new_tokens=80, seed=1), 3)
    assert len({t.finish_reason for t in sampled}) > 1 and len({len(t.turns) for t in sampled}) > 1
    assert len({tuple(t.ids.tolist()) for t in sampled}) == 6  # real draws: every row its own
    with pytest.raises(ValueError, match="2 samplers for 2 prompts"):
        engine.rollouts(prompts, SamplingParams(), 3, samplers=[None, None])
