"""The per-sample reward skeleton (mmrl/rewards/per_sample.py): columns, options, checks, the visible signature."""

from __future__ import annotations

import doctest
import inspect
import json
import os
from pathlib import Path

import pytest

import mmrl.rewards.per_sample as per_sample_module
from mmrl.rewards import get, pure_names
from mmrl.rewards.compose import RewardTerm, truth_columns
from mmrl.rewards.per_sample import per_sample
from mmrl.rewards.styles import required_columns


def test_doctests():
    assert doctest.testmod(per_sample_module).failed == 0


def test_columns_options_and_unused_columns():
    seen = []

    @per_sample
    def score(text, answer, geometry, *, scale=1.0):
        seen.append((text, answer, geometry, scale))
        return None if answer is None else scale * len(text)

    assert score(["ab", "c"], answer=[1, None], scale=2.0, prompts=["p", "q"]) == [4.0, None]
    assert seen == [("ab", 1, None, 2.0), ("c", None, None, 2.0)]  # an absent column is None for every completion
    assert score([], answer=[]) == []
    with pytest.raises(ValueError, match="column 'geometry' has 1 values for 2 completions"):
        score(["a", "b"], answer=[1, 2], geometry=[None])


def test_check_runs_once_per_call_with_defaults_filled_in():
    calls = []

    def check(**options):
        calls.append(options)
        if options["unit"] not in ("char", "word"):
            raise ValueError("unit")

    @per_sample(check=check)
    def score(text, *, unit="char", cap=3):
        return 1.0

    assert score(["a", "b", "c"]) == [1.0] * 3 and calls == [{"unit": "char", "cap": 3}]
    with pytest.raises(ValueError, match="unit"):
        score([], unit="byte")  # a configuration bug fails even on an empty batch


def test_option_without_default_is_refused():
    with pytest.raises(TypeError, match="needs a default"):
        per_sample(lambda text, *, k: 0.0)


def test_visible_signature_is_the_batch_call():
    @per_sample
    def score(text, answer, *, k=2):
        """Doc."""
        return 0.0

    params = inspect.signature(score).parameters
    assert list(params) == ["completions", "answer", "k", "kwargs"]
    assert params["answer"].default is None and params["answer"].kind is inspect.Parameter.KEYWORD_ONLY
    assert score.__doc__ == "Doc." and score.__name__ == "score"
    assert required_columns(score) == [] and truth_columns(RewardTerm("s", score)) == ["answer"]


def test_builtins_keep_their_batch_signatures():
    for name in pure_names():
        params = list(inspect.signature(get(name)).parameters.values())
        assert params[0].name == "completions", name
        assert params[-1].kind is inspect.Parameter.VAR_KEYWORD, name
        assert all(p.default is not p.empty for p in params[1:-1]), name
    box = inspect.signature(get("det_f1")).parameters
    assert {"answer", "geometry", "threshold", "metric", "max_answer_chars", "max_boxes"} <= set(box)


SIGNATURES = Path(__file__).parent.parent / "fixtures" / "reward_signatures.json"


def _signature(fn) -> dict:
    """What a config and the column checks see of a reward: each parameter's name, kind and default."""
    return {p.name: [p.kind.name, repr(p.default) if p.default is not inspect.Parameter.empty else None]
            for p in inspect.signature(fn).parameters.values()}


def test_every_built_in_keeps_its_parameters_and_defaults():
    """Every registered reward's parameters (names, kinds, defaults) and its required and ground-truth columns
    equal the recorded ones (tests/fixtures/reward_signatures.json, recorded when the rewards moved onto the
    per-sample skeleton and checked equal to the hand-written loops before it): a renamed column, a changed default
    or a lost option fails here. Re-record on purpose with MMRL_RECORD_REWARDS=1."""
    from mmrl.rewards.registry import REWARDS

    got = {name: {"parameters": _signature(REWARDS.get(name)), "required": required_columns(REWARDS.get(name)),
                  "truth": sorted(truth_columns(RewardTerm(name=name, fn=REWARDS.get(name), weight=1.0)))}
           for name in REWARDS.names()}
    if os.environ.get("MMRL_RECORD_REWARDS"):
        SIGNATURES.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(SIGNATURES.read_text())
    assert len(recorded) >= 38 and got == recorded
