"""Multi-turn rollouts with tools on the `hf` engine (`mmrl.rollout.multiturn`, issue 19): a trajectory's ids, images
and sampling log-probs equal what the processor and the model give the whole conversation in one pass; tools
returning none, one or two images of different sizes; each image encoded once; stops (no call, max_turns, a budget
that never cuts an image, length)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmrl.config import ModelConfig
from mmrl.datasets.synthetic import make
from mmrl.model.policy import Policy
from mmrl.rollout.multiturn import MultiTurnHF
from mmrl.rollout.types import SamplingParams
from mmrl.rollout.observation import observation_text
from mmrl.tools.run import Tool, make_tool
from mmrl.tools.toolbox import Toolbox

SIZES = [(56, 84), (112, 56)]  # tool images of different sizes (and unlike the prompt's 70 × 42)


def pictures(arguments, state):
    """A test tool: `n` pictures (0, 1 or 2), each of its own size, and a line of text."""
    n = int(arguments.get("n", 0))
    return [Image.new("RGB", SIZES[i], (40 * i + 30, 90, 200 - 50 * i)) for i in range(n)] + [f"{n} pictures"]


def call(n: int) -> str:
    return f'Let me look. <tool_call>{{"name": "pictures", "arguments": {{"n": {n}}}}}</tool_call>'


class Scripted:
    """A policy that writes the given turns (then EOS), recording each token's log-prob under the sampling
    distribution at temperature 1 (the `hf` sampler's, never-sampled ids suppressed)."""

    def __init__(self, policy, turns: list[str], eos_each: bool = False):
        tok = policy.tokenizer
        end = [policy.eos_id] if eos_each else []
        self.queue = [t for text in turns for t in tok(text, add_special_tokens=False)["input_ids"] + end]
        self.eos, self.never = policy.eos_id, policy.never_sample
        self.logprobs: list[torch.Tensor] = []

    def draw(self, logits: torch.Tensor, t: int) -> torch.Tensor:
        pick = self.queue.pop(0) if self.queue else self.eos
        scores = logits.float().clone()
        scores[:, self.never] = -float("inf")
        self.logprobs.append(torch.log_softmax(scores, -1)[:, pick])
        return torch.tensor([pick])


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


def _one_pass(policy, prompt, traj):
    """The processor's ids and tensors of the whole conversation, templated and tokenised at once."""
    msgs = list(prompt.sample.messages)
    tool_images = []
    for turn in traj.turns:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": turn.text}]})
        for r in turn.results:
            content = [{"type": "image"} for _ in r.images] + ([{"type": "text", "text": r.text}] if r.text else [])
            msgs.append({"role": "tool", "content": content})
            tool_images += [im.image for im in r.images]
    from mmrl.perception.images import load_image

    images = [load_image(s, sample_id="x") for s in prompt.sample.media("image")] + tool_images
    text = policy.processor.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    return policy.processor(text=[text], images=images, return_tensors="pt")


def test_a_trajectory_is_the_whole_conversation_in_one_pass(family):
    policy, prompt = family
    turns = [call(1), call(2), call(0), "The answer is 3."]
    tower = policy.hf.model.visual
    rows = []
    hook = lambda m, a, k: rows.append(int((a[0] if a else k["hidden_states"]).shape[0]))  # noqa: E731
    handle = tower.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=2000), sampler=Scripted(policy, turns))
    finally:
        handle.remove()
    assert traj.finish_reason == "eos"
    assert [len(r.images) for t in traj.turns for r in t.results] == [1, 2, 0]
    _check_one_pass(policy, prompt, traj, rows)


def _check_one_pass(policy, prompt, traj, rows):
    inputs = traj.inputs()
    ref = _one_pass(policy, prompt, traj)
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
    full = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=2000), sampler=Scripted(policy, turns))
    first = full.turns[0].end
    traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=first + 20), sampler=Scripted(policy, turns))
    assert traj.finish_reason == "budget"
    assert len(traj.ids) == first and traj.loss_mask.all()  # nothing of the observation, no image token
    assert traj.media == [] and traj.images == []


def test_max_turns_no_call_and_length(policy, prompt):
    turns = [call(1), call(1), call(1)]
    traj = _engine(policy, max_turns=2).rollout(prompt, SamplingParams(max_new_tokens=2000),
                                                 sampler=Scripted(policy, turns))
    assert traj.finish_reason == "max_turns" and len(traj.turns) == 2 and len(traj.images) == 1
    assert traj.turns[1].calls and not traj.turns[1].results  # the last turn's call is not run
    traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=2000),
                                   sampler=Scripted(policy, ["No tool needed."]))
    assert traj.finish_reason == "eos" and len(traj.turns) == 1 and traj.loss_mask.all()
    traj = _engine(policy).rollout(prompt, SamplingParams(max_new_tokens=5), sampler=Scripted(policy, [call(1)]))
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
                          sampler=Scripted(policy, ["<box>[10, 5, 40, 30]</box>", "Done."], eos_each=True))
    assert traj.finish_reason == "eos" and len(traj.images) == 1 and traj.turns[0].results[0].error is None
    assert int(traj.ids[traj.turns[0].end - 1]) == policy.eos_id and traj.loss_mask[traj.turns[0].end - 1] == 1
    rows = [int(traj.inputs()["pixel_values"].shape[0])]  # (the encoder count is checked in the test above)
    _check_one_pass(policy, prompt, traj, rows)


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
