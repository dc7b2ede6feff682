"""Extra rollout passes on the tiny offline VLM: ACRE's option-shuffled second answer and VL-Rethinker's forced
rethinking (real processor, real generation; the engine is wrapped only to record what it was asked)."""

from __future__ import annotations

import dataclasses
import doctest

import pytest
import torch

import mmrl.rollout.passes as passes_module
from mmrl.rollout.passes import PassContext, _cut, rethink_pass, shuffled_options_pass, think_block
from mmrl.rollout.types import Rollouts, SamplingParams

pytestmark = pytest.mark.integration


def test_text_helpers():
    assert think_block("no tags") == "" and think_block("<think>a</think> <think>b</think>") == "<think>a</think>"
    assert _cut("<think>x</think><answer>1</answer>") == "<think>x"
    assert _cut("so \\boxed{2}") == "so " and _cut("plain") == "plain"
    assert doctest.testmod(passes_module).failed == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny):
    from mmrl.train.trainer import Trainer

    cfg = tiny(tmp_path_factory.mktemp("passes") / "run", "data.train.kwargs.choices=true",
               "data.eval.kwargs.choices=true", "rewards=[{fn: mc, name: accuracy}]",
               "stages=[{name: rl, kind: rl, steps: 10}]", "trainer.threads=2")
    t = Trainer(cfg, log=lambda *a: None)
    prompts = t.batches.encode(t.batches.samples(2))
    asked: list = []
    real = t.engine.generate

    def recording(inputs, n, params, batch_prompts=16):
        asked.append(list(inputs))
        return real(inputs, n, params, batch_prompts=batch_prompts)

    t.engine.generate = recording
    ctx = PassContext(t.policy, t.engine, SamplingParams(max_new_tokens=6, seed=0, step=3), 16, t.rl.score, 1.0)
    return t, prompts, ctx, asked


def _rollouts(texts: list[str], group: int, policy) -> Rollouts:
    ids = [policy.tokenizer(t, add_special_tokens=False)["input_ids"] + [policy.eos_id] for t in texts]
    width = max(map(len, ids))
    return Rollouts(
        prompt_index=torch.arange(len(texts) // group).repeat_interleave(group),
        completion_ids=torch.tensor([r + [policy.pad_id] * (width - len(r)) for r in ids]),
        completion_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
        sampling_logprobs=torch.zeros(len(texts), width), texts=list(texts), finish_reasons=["eos"] * len(texts),
        group_size=group,
    )


def test_shuffle_options_asks_again_with_shuffled_options_and_the_same_reasoning(setup):
    t, prompts, ctx, asked = setup
    asked.clear()
    ro = _rollouts(["<think>it points left</think><answer>A</answer>", "<answer>B</answer>"] * 2, 2, t.policy)
    given = ro
    ro, stats = shuffled_options_pass(ctx, prompts, ro)
    assert "pair" not in given.columns  # a new record; the one given stays as it was
    assert stats == {"asked": 4.0} and len(asked) == 1 and len(asked[0]) == 4
    pairs = ro.columns["pair"]
    for i, pair in enumerate(pairs):
        p = prompts[int(ro.prompt_index[i])]
        perm = pair["permutation"]
        assert sorted(perm) == [0, 1, 2, 3] and perm != [0, 1, 2, 3]
        text = t.policy.tokenizer.decode(asked[0][i].tensors["input_ids"][0])
        shown = [p.sample.answer["options"][j] for j in perm]
        assert "\n".join(f"{'ABCD'[k]}. {o}" for k, o in enumerate(shown)) in text  # the shuffled options
        if i % 2 == 0:  # the same reasoning is the forced start of the second answer
            assert text.endswith("<think>it points left</think>")
            assert pair["completion"].startswith("<think>it points left</think>")
        assert asked[0][i].sample.id == f"{p.sample.id}#options{i}"
    assert pairs[0]["permutation"] == pairs[1]["permutation"]  # one shuffle per prompt
    again, _ = shuffled_options_pass(ctx, prompts, _rollouts(["<answer>A</answer>"] * 4, 2, t.policy))
    assert [q["completion"] for q in again.columns["pair"]] == [q["completion"] for q in
                                                               _fresh_pairs(t, prompts, ctx)]  # seeded


def _fresh_pairs(t, prompts, ctx):
    ro, _ = shuffled_options_pass(ctx, prompts, _rollouts(["<answer>A</answer>"] * 4, 2, t.policy))
    return ro.columns["pair"]


def test_non_multiple_choice_samples_get_no_pair(setup):
    import dataclasses

    t, prompts, ctx, asked = setup
    broken = [dataclasses.replace(p, sample=dataclasses.replace(p.sample, answer="90")) for p in prompts]
    ro = _rollouts(["<answer>A</answer>"] * 4, 2, t.policy)
    ro, stats = shuffled_options_pass(ctx, broken, ro)
    assert stats == {"asked": 0.0} and ro.columns["pair"] == [None] * 4


def test_rethink_replaces_only_continuations_that_end_correct(setup, monkeypatch):
    t, prompts, ctx, asked = setup
    texts = ["<think>hmm</think><answer>A</answer>", "<answer>B</answer>", "C", "<answer>D</answer>"]
    ro = _rollouts(texts, 2, t.policy)
    before = ro.completion_ids.clone()

    def score_all(value):
        def score(cand, prompts_):
            return dataclasses.replace(cand, total=torch.full((len(cand),), value), rewards={})
        return score

    rejecting = PassContext(ctx.policy, ctx.engine, ctx.params, 16, score_all(0.0), 1.0)
    out, stats = rethink_pass(rejecting, prompts, ro, ratio=1.0, triggers=["\nWait"])
    assert stats == {"tried": 4.0, "accepted": 0.0} and out.texts == texts and torch.equal(out.completion_ids, before)

    accepting = PassContext(ctx.policy, ctx.engine, ctx.params, 16, score_all(1.0), 1.0)
    given = ro
    ro, stats = rethink_pass(accepting, prompts, ro, ratio=1.0, triggers=["\nWait"])
    assert stats == {"tried": 4.0, "accepted": 4.0}
    assert given.texts == texts and torch.equal(given.completion_ids, before)  # the given record is unchanged
    assert ro.texts[0].startswith("<think>hmm\nWait") and ro.texts[2].startswith("C\nWait")
    for i in range(4):  # tokens, mask and text agree; the trigger's sampling log-probs are 0
        n = int(ro.completion_mask[i].sum())
        decoded = t.policy.tokenizer.decode(ro.completion_ids[i, :n], skip_special_tokens=True)
        assert decoded == ro.texts[i]
        head = len(t.policy.tokenizer(_cut(texts[i]) + "\nWait", add_special_tokens=False)["input_ids"])
        assert torch.equal(ro.sampling_logprobs[i, :head], torch.zeros(head))


def test_rethink_ratio_zero_touches_nothing(setup):
    t, prompts, ctx, asked = setup
    ro = _rollouts(["<answer>A</answer>"] * 4, 2, t.policy)
    out, stats = rethink_pass(ctx, prompts, ro, ratio=0.0)
    assert stats == {"tried": 0.0, "accepted": 0.0} and out is ro
