"""A reward's ground truth must be in the data: a source with no `answer` (or no dataset field a reward requires)
for a reward that scores against it fails at load, naming the reward, the column and the source — instead of the
reward returning None everywhere, its metric vanishing and the run training on the other rewards alone — and
per-sample absences are logged every RL step as `reward/<name>/missing` (the share of the step's completions).
Rewards that need no ground truth (format, length shaping, group agreement, …) are unaffected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.config import ConfigError
from mmrl.datasets.jsonl import write_jsonl
from mmrl.datasets.sample import Sample
from mmrl.datasets.synthetic import make
from mmrl.rewards.isolation import make_term
from mmrl.train.scoring import check_reward_columns


def _rotation_file(path: Path, n: int, *, answered: int = 0) -> Path:
    """A native JSONL of `n` rotation puzzles (task `puzzle/rotation`, whose loader has no answer check); only the
    first `answered` keep their answer."""
    samples = make("rotation", n, seed=0, split="train", size=56)
    for s in samples[answered:]:
        s.answer = None
    return write_jsonl(samples, path)


class _Stop(Exception):
    pass


@pytest.fixture()
def no_model(monkeypatch):
    """Building a Trainer stops where the model would load: the data checks before it have passed."""
    from mmrl.model.policy import Policy

    def stop(*a, **k):
        raise _Stop

    monkeypatch.setattr(Policy, "load", stop)


def test_a_source_without_answers_fails_at_load_naming_reward_column_and_source(tmp_path, tiny, no_model):
    from mmrl.train.trainer import Trainer

    path = _rotation_file(tmp_path / "rot.jsonl", 4)
    cfg = tiny(tmp_path / "run", f"data.train={{path: {path}}}", "stages=[{name: rl, kind: rl, steps: 1}]")
    with pytest.raises(ConfigError, match=r"reward 'accuracy' scores against column 'answer', which no sample of"
                                          r" .*rot\.jsonl\)? has"):
        Trainer(cfg, log=lambda *a: None)
    # rewards that need no ground truth (format, length and repetition shaping, group agreement) train on it
    cfg = tiny(tmp_path / "run", f"data.train={{path: {path}}}", "stages=[{name: rl, kind: rl, steps: 1}]",
               "rewards=[{fn: format}, {fn: format_template}, {fn: overlong, kwargs: {max_len: 8}},"
               " {fn: repetition}, {fn: group_agreement}, {fn: reasoning_consistency}]")
    with pytest.raises(_Stop):
        Trainer(cfg, log=lambda *a: None)


def test_each_source_is_checked_and_every_problem_named():
    rotation = make_term("rotation_exact", name="angle")
    answered = Sample(id="a", messages=[], answer="90", task="puzzle/rotation")
    bare = Sample(id="b", messages=[], task="puzzle/rotation")
    check_reward_columns([rotation], {"data.mix[0] (a.jsonl)": [answered, bare]})  # per-sample gaps: counted later
    with pytest.raises(ConfigError) as err:
        check_reward_columns([rotation, make_term("answer_match", name="acc"), make_term("format")],
                             {"data.mix[0] (a.jsonl)": [answered], "data.mix[1] (b.jsonl)": [bare, bare]},
                             where="stage 'rl': ")
    assert err.value.errors == [
        f"stage 'rl': rewards: reward {name!r} scores against column 'answer', which no sample of data.mix[1]"
        f" (b.jsonl) has: it would be None on all of them (no reward/{name}/mean). Give the records an `answer`, or"
        " score them with rewards that need none" for name in ("angle", "acc")]
    # a plain list is grouped by each sample's source (`load_source` sets it)
    answered.source, bare.source = "train file a.jsonl", "eval task rotation"
    with pytest.raises(ConfigError, match="no sample of eval task rotation has"):
        check_reward_columns([rotation], [answered, bare])


def test_a_dataset_field_a_reward_requires_is_checked_per_source(tmp_path):
    plugin = tmp_path / "needs.py"
    plugin.write_text("def by_solution(completions, solution, **columns):\n"
                      "    return [float(c == s) if s is not None else None for c, s in zip(completions, solution)]\n")
    term = make_term(f"{plugin}:by_solution", name="sol", isolate="never")
    with_field = Sample(id="a", messages=[], answer="1", meta={"solution": "1"})
    without = Sample(id="b", messages=[], answer="1")
    check_reward_columns([term], {"x": [with_field], "y": [with_field, without]})
    with pytest.raises(ConfigError, match=r"reward 'sol' scores against column 'solution', which no sample of y has.*"
                                          r"a `solution` field"):
        check_reward_columns([term], {"x": [with_field], "y": [without]})
    bound = make_term(f"{plugin}:by_solution", name="sol", isolate="never", kwargs={"solution": ["1"]})
    check_reward_columns([bound], {"y": [without]})  # a fixed value through kwargs is no data column


def test_missing_answers_are_logged_each_rl_step(tmp_path, tiny):
    from mmrl.train.trainer import Trainer

    path = _rotation_file(tmp_path / "rot.jsonl", 4, answered=2)  # each step's 4 prompts: 2 without an answer
    cfg = tiny(tmp_path / "run", f"data.train={{path: {path}}}", "stages=[{name: rl, kind: rl, steps: 1}]",
               "data.eval.n=2")
    Trainer(cfg, log=lambda *a: None).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r.get("train/stage") == "rl")
    assert step["reward/accuracy/missing"] == 0.5
    assert "reward/format/missing" not in step  # format needs no ground truth
