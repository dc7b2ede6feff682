"""Plug-in isolation: worker processes, timeouts, error policies, TRL and EasyR1 calling styles."""

from __future__ import annotations

import json
import textwrap

import pytest

from mmrl.rewards import RewardError, RewardTimeout, score, summarize
from mmrl.rewards.isolation import IsolatedReward, adapt, make_term

PLUGINS = {
    "native.py": """
        def score(completions, answer=None, **columns):
            return [1.0 if a is not None and str(a) in c else 0.0 for c, a in zip(completions, answer)]

        def columns_seen(completions, **columns):
            return [float(len(columns))] * len(completions)

        def pid(completions, **columns):
            import os
            return [float(os.getpid())] * len(completions)
    """,
    "asyncfn.py": """
        import asyncio

        async def score(completions, **columns):
            await asyncio.sleep(0)
            return [float(len(c)) for c in completions]

        async def slow(completions, **columns):
            await asyncio.sleep(30)
            return [0.0] * len(completions)
    """,
    "raises.py": """
        def score(completions, **columns):
            raise ZeroDivisionError("plug-in bug")
    """,
    "hangs.py": """
        import time

        def score(completions, **columns):
            time.sleep(60)
            return [1.0] * len(completions)
    """,
    "easy.py": """
        def compute_score(reward_inputs, format_weight=0.1):
            return [
                {"overall": 1.0 if str(x["ground_truth"]) in x["response"] else 0.0,
                 "length": x["response_length"]}
                for x in reward_inputs
            ]
    """,
    "needs.py": """
        def solution_match(completions, solution, **kwargs):
            return [1.0 if s in c else 0.0 for c, s in zip(completions, solution)]

        def trl_solution(prompts, completions, completion_ids, solution, **kwargs):
            return [0.0] * len(completions)
    """,
    "trlsig.py": """
        def score(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, answer, **kwargs):
            assert completions[0][0]["role"] == "assistant" and "role" in prompts[0][0]
            log_metric("seen", 1.0)
            log_extra("x", [1] * len(completions))
            return [float(len(ids)) + trainer_state.global_step for ids in completion_ids]
    """,
}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation_plugins")
    for name, body in PLUGINS.items():
        (root / name).write_text(textwrap.dedent(body))
    return root


def test_native_plugin_runs_in_a_worker_and_drops_unpicklable_columns(plugins):
    r = IsolatedReward(f"{plugins / 'native.py'}:score", timeout_s=10)
    try:
        assert r(["the answer is 4", "5"], answer=["4", "4"]) == [1.0, 0.0]
        pid = r._proc.pid
        assert r(["4"], answer=["4"]) == [1.0] and r._proc.pid == pid  # persistent worker
    finally:
        r.close()
    assert r._proc is None
    seen = IsolatedReward(f"{plugins / 'native.py'}:columns_seen", timeout_s=10)
    try:  # a lambda does not pickle: that column is left out, the others arrive
        assert seen(["a"], answer=["1"], task=["t"], hook=[lambda: 0]) == [2.0]
    finally:
        seen.close()


def test_bad_spec_fails_at_construction(plugins):
    with pytest.raises(RewardError, match="no attribute"):
        IsolatedReward(f"{plugins / 'native.py'}:missing", timeout_s=5)


def test_async_plugin_shares_a_loop_and_times_out_per_call(plugins):
    r = IsolatedReward(f"{plugins / 'asyncfn.py'}:score", timeout_s=5)
    slow = IsolatedReward(f"{plugins / 'asyncfn.py'}:slow", timeout_s=0.5)
    try:
        assert r(["ab", "abc"]) == [2.0, 3.0]
        assert r(["a"]) == [1.0]
        pid = slow._proc.pid
        with pytest.raises(RewardTimeout):
            slow(["a"])
        assert slow._proc.pid == pid  # an async timeout cancels the coroutine; the worker survives
    finally:
        r.close()
        slow.close()


def test_raising_plugin_returns_the_remote_traceback(plugins):
    r = IsolatedReward(f"{plugins / 'raises.py'}:score", timeout_s=5)
    try:
        with pytest.raises(RewardError) as info:
            r(["a"])
        assert "ZeroDivisionError: plug-in bug" in str(info.value) and "Traceback" in str(info.value)
        assert not isinstance(info.value, RewardTimeout)
    finally:
        r.close()


def test_hanging_plugin_is_killed_counted_and_restarted(plugins):
    term = make_term(f"{plugins / 'hangs.py'}:score", name="hang", timeout_s=1, on_error="skip")
    proc = term.fn._proc
    stats: dict = {}
    totals, comps = score([term], ["a", "b"], {}, stats=stats)
    assert comps == {"hang": [None, None]} and totals == [0.0, 0.0]
    assert term.timeouts == 1 and term.errors == 0
    assert not proc.is_alive() and proc.exitcode is not None  # killed and reaped
    assert summarize(comps, totals, stats)["reward/hang/timeouts"] == 1.0
    ok = make_term(f"{plugins / 'native.py'}:score", name="ok", timeout_s=5)
    term.fn.spec, term.fn.timeout_s = ok.fn.spec, 5.0  # the next call starts a fresh worker (now a quick fn)
    ok.fn.close()
    assert term.fn(["4"], answer=["4"]) == [1.0] and term.fn._proc.pid != proc.pid
    term.fn.close()


def test_on_error_policies(plugins):
    spec = f"{plugins / 'raises.py'}:score"
    zero, skip, loud = (make_term(spec, name=p, on_error=p) for p in ("zero", "skip", "raise"))
    try:
        stats: dict = {}
        _, comps = score([zero, skip], ["a", "b"], {}, stats=stats)
        assert comps == {"zero": [0.0, 0.0], "skip": [None, None]}
        assert stats["zero"] == {"errors": 1.0, "timeouts": 0.0}
        with pytest.raises(RewardError) as info:
            score([loud], ["a"], {})
        assert "in reward 'raise'" in "\n".join(getattr(info.value, "__notes__", []))
        assert loud.errors == 1
    finally:
        for t in (zero, skip, loud):
            t.fn.close()


def test_registry_names_stay_in_process_and_validate():
    term = make_term("format")
    assert not isinstance(term.fn, IsolatedReward) and term.on_error == "zero"
    with pytest.raises(ValueError, match="on_error"):
        make_term("format", on_error="ignore")
    with pytest.raises(ValueError, match="style"):
        make_term("format", style="verl")


def test_trl_think_format_reward_runs_unmodified():
    pytest.importorskip("trl.rewards")
    columns = {"prompts": ["q1", "q2"], "completion_ids": [[1, 2], [3]], "answer": ["x", "y"]}
    completions = ["<think>\nhmm\n</think>\nanswer", "no think"]
    term = make_term("trl.rewards:think_format_reward", name="think", style="trl")
    try:
        assert isinstance(term.fn, IsolatedReward)
        assert score([term], completions, columns)[1] == {"think": [1.0, 0.0]}
    finally:
        term.fn.close()
    local = make_term("trl.rewards:think_format_reward", name="think", style="trl", isolate="never")
    assert score([local], completions, columns)[1] == {"think": [1.0, 0.0]}


def test_trl_signature_receives_what_grpo_passes(plugins):
    fn = adapt(__import__("runpy").run_path(str(plugins / "trlsig.py"))["score"], "trl")
    assert fn(["a", "b"], prompts=["p", "p"], completion_ids=[[1, 2], [3]], answer=["1", "2"]) == [2.0, 1.0]


def test_easyr1_compute_score(plugins):
    term = make_term(f"{plugins / 'easy.py'}:compute_score", name="easy", style="easyr1",
                     kwargs={"format_weight": 0.5})
    try:
        _, comps = score([term], ["it is 7", "it is 8"], {"answer": ["7", "7"], "completion_ids": [[1], [2]]})
        assert comps == {"easy": [1.0, 0.0]}
    finally:
        term.fn.close()


@pytest.mark.integration
def test_failing_plugins_inside_a_training_step(tmp_path, tiny, plugins):
    from mmrl.trainer import Trainer

    raises, hangs = f"{plugins / 'raises.py'}:score", f"{plugins / 'hangs.py'}:score"
    aio, trl = f"{plugins / 'asyncfn.py'}:score", f"{plugins / 'trlsig.py'}:score"
    cfg = tiny(
        tmp_path / "run",
        f"rewards=[{{fn: '{raises}', name: bad, on_error: zero}},"
        f" {{fn: '{hangs}', name: slow, timeout_s: 1, on_error: skip}}, {{fn: format}},"
        f" {{fn: '{aio}', name: aio, weight: 0.0}}, {{fn: '{trl}', name: trlsig, style: trl, on_error: raise}}]",
        "stages=[{name: rl, kind: rl, steps: 1}]", "data.eval.n=2", "trainer.eval_batch=2",
    )
    trainer = Trainer(cfg, log=lambda *a: None)
    try:
        trainer.run()
    finally:
        for t in trainer.terms:
            getattr(t.fn, "close", lambda: None)()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r.get("train/stage") == "rl" and "reward/total/mean" in r]
    assert len(rl) == 1
    assert rl[0]["reward/bad/errors"] >= 1 and rl[0]["reward/slow/timeouts"] >= 1
    assert rl[0]["reward/bad/timeouts"] == 0 and "reward/format/mean" in rl[0]
    assert rl[0]["reward/aio/mean"] > 0 and rl[0]["reward/trlsig/mean"] > 0 and rl[0]["reward/trlsig/errors"] == 0
    assert rl[0]["reward/trlsig/seen"] == 1.0  # reported through TRL's log_metric


def test_required_columns_by_style(plugins):
    from mmrl.rewards.isolation import required_columns

    def native(completions, answer, *, geometry, scale=1.0, **kw): ...

    def trl(prompts, completions, completion_ids, trainer_state, solution, **kw): ...

    assert required_columns(native) == ["answer", "geometry"]
    assert required_columns(trl, "trl") == ["solution"]
    assert required_columns(lambda inputs, w: None, "easyr1") == []
    term = make_term(f"{plugins / 'needs.py'}:trl_solution", name="sol", style="trl")
    try:
        assert term.fn.required == ["solution"]  # reported by the worker, which imported the plug-in
    finally:
        term.fn.close()


def test_missing_column_fails_at_startup_naming_reward_and_column(plugins):
    from mmrl.config import ConfigError
    from mmrl.datasets.sample import Sample
    from mmrl.trainer import check_reward_columns

    term = make_term(f"{plugins / 'needs.py'}:solution_match", name="sol", isolate="never")
    plain = [Sample(id="a", messages=[], answer="1")]
    with pytest.raises(ConfigError, match=r"'sol' needs column\(s\) \['solution'\].*meta"):
        check_reward_columns([term], plain)
    check_reward_columns([term], [Sample(id="b", messages=[], answer="1", meta={"solution": "1"})])
    bound = make_term(f"{plugins / 'needs.py'}:solution_match", name="sol", isolate="never",
                      kwargs={"solution": ["x"]})
    check_reward_columns([bound], plain)  # a fixed value through kwargs also satisfies it


def test_pool_splits_completions_across_workers(plugins):
    from mmrl.rewards.isolation import RewardPool, split_columns

    chunks = split_columns({"answer": [1, 2, 3, 4, 5], "trainer_state": "s", "pair": (1, 2)}, 5, 2)
    assert [c[0] for c in chunks] == [slice(0, 2), slice(2, 5)]  # round(2.5) = 2
    assert chunks[1][1] == {"answer": [3, 4, 5], "trainer_state": "s", "pair": (1, 2)}
    term = make_term(f"{plugins / 'native.py'}:score", name="pooled", workers=2)
    pids = make_term(f"{plugins / 'native.py'}:pid", name="pids", workers=3)
    try:
        assert isinstance(term.fn, RewardPool)
        completions = ["a 1", "b", "c 3", "d", "e 5"]
        _, comps = score([term, pids], completions, {"answer": ["1", "2", "3", "4", "5"]})
        assert comps["pooled"] == [1.0, 0.0, 1.0, 0.0, 1.0]
        assert len(set(comps["pids"])) == 3 and comps["pids"][0] == comps["pids"][1]  # contiguous chunks
    finally:
        term.fn.close()
        pids.fn.close()


def test_pool_chunk_timeout_fails_the_call(plugins):
    term = make_term(f"{plugins / 'hangs.py'}:score", name="slow", workers=2, timeout_s=0.5, on_error="skip")
    try:
        _, comps = score([term], ["a", "b", "c"], {})
        assert comps == {"slow": [None, None, None]} and term.timeouts == 1
    finally:
        term.fn.close()
