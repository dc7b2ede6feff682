"""Evaluation metrics: the unbiased pass@k estimator against brute-force enumeration, and sampled avg@k / pass@k
of a trainer's held-out prompts against the completions' own rewards."""

from __future__ import annotations

import itertools
import math

import pytest

from mmrl.train.evaluate import pass_at_k


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_is_the_chance_that_k_draws_include_a_correct_one(n, c, k):
    draws = list(itertools.combinations(range(n), k))  # sample k of n without replacement; the first c are correct
    expected = sum(any(i < c for i in d) for d in draws) / len(draws)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(4, 5, 2)
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(4, 1, 5)


@pytest.mark.integration
def test_sampled_metrics_agree_with_the_scored_completions(tmp_path, tiny, length_reward):
    from mmrl.train.trainer import Trainer

    cfg = tiny(tmp_path / "run", f"rewards=[{{fn: '{length_reward}', name: len}}]", "algorithm.correct_threshold=2.0",
               "data.eval={task: grounding, n: 3, seed: 1}", "data.train={task: grounding, n: 8}")
    trainer = Trainer(cfg, log=lambda *a: None)
    metrics, curve = trainer.evaluator.sampled(4, temperature=1.0, seed=0)
    # the same seeded samples, scored again by hand: correct = the length reward reaches 2.0 (20+ characters)
    from mmrl.rollout import SamplingParams

    r = cfg.rollout
    ro = trainer.engine.generate(trainer.evaluator.inputs, 4, SamplingParams(
        temperature=1.0, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens, seed=0, step=-1))
    ok = [min(len(t), 40) / 10 >= 2.0 for t in ro.texts]
    per_prompt = [sum(ok[g * 4 : (g + 1) * 4]) for g in range(3)]
    assert metrics["pass@1"] == pytest.approx(sum(ok) / len(ok))
    assert metrics["pass@4"] == pytest.approx(sum(c > 0 for c in per_prompt) / 3)
    assert metrics["avg@4/len"] == pytest.approx(sum(min(len(t), 40) / 10 for t in ro.texts) / len(ro.texts))
    # pass@j = mean over prompts of 1 − C(4 − c, j) / C(4, j), written out here rather than through pass_at_k
    assert curve == pytest.approx({j: sum(1 - math.comb(4 - c, j) / math.comb(4, j) for c in per_prompt) / 3
                                   for j in (1, 2, 3, 4)})
    assert curve[1] == metrics["pass@1"] and curve[4] == metrics["pass@4"]
    # correct counts measured [2, 0, 1]: a curve 0.25, 0.444, 0.583, 0.667 that the formula above must get right
    assert 0 < curve[1] < curve[2] < curve[3] < curve[4] < 1, per_prompt
