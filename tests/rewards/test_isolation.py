"""Plug-in isolation: worker processes, timeouts, error policies, TRL and EasyR1 calling styles."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from mmrl.rewards import RewardError, RewardTimeout, score, summarize
from mmrl.rewards.errors import ErrorReport
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
    "dies.py": """
        import os
        import signal

        def die(completions, how, **columns):
            if how[0] == "exit3":
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
    """,
    "hog.py": """
        def hog(completions, mb, **columns):
            buf = bytearray(mb[0] << 20)  # written (zeroed), so really used where it succeeds
            return [float(len(buf) > 0)] * len(completions)

        def reserve(completions, **columns):
            import numpy as np

            buf = np.empty(5 << 30, dtype=np.uint8)  # 5 GiB reserved, never touched: no RAM used where it succeeds
            return [float(buf.nbytes > 0)] * len(completions)

        def torch_matmul(completions, **columns):
            import torch

            x = torch.randn(512, 512)
            return [float((x @ x).shape[0])] * len(completions)
    """,
    "boom.py": """
        def score(completions, **columns):
            for c in completions:
                if "boom" in c:
                    raise ValueError(f"cannot score {c!r}")
            return [1.0] * len(completions)
    """,
    "forever.py": """
        import os
        import re
        import time

        def _entered(marker):
            with open(marker[0], "w") as f:
                f.write(str(os.getpid()))

        def sleep(completions, marker, **columns):
            _entered(marker)
            time.sleep(3600)

        def spin(completions, marker, **columns):  # catastrophic backtracking inside `re`, which holds the GIL
            _entered(marker)
            re.match(r"(a+)+$", "a" * 64 + "b")
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
    from mmrl.train.trainer import Trainer

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
        for t in trainer.base_terms:
            getattr(t.fn, "close", lambda: None)()
    from mmrl.rewards import get

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r.get("train/stage") == "rl" and "reward/total/mean" in r]
    assert len(rl) == 1
    m = rl[0]
    # one scoring call by the evaluation before training (2 prompts, eval_batch 2) + one by the RL step: `bad` raised
    # in both, `slow` timed out in both; the counters are cumulative calls, not completions
    assert (m["reward/bad/errors"], m["reward/bad/timeouts"]) == (2.0, 0.0)
    assert (m["reward/slow/errors"], m["reward/slow/timeouts"]) == (0.0, 2.0)
    assert m["reward/trlsig/errors"] == m["reward/trlsig/timeouts"] == m["reward/aio/errors"] == 0.0
    assert m["reward/bad/mean"] == 0.0 and "reward/slow/mean" not in m  # zero → 0.0 each; skip → None each
    assert m["rollout/truncated_frac"] == 1.0  # every completion is 6 tokens (rollout.max_new_tokens)
    assert m["reward/trlsig/mean"] == 6.0  # len(completion_ids) + trainer_state.global_step (0 during step 1)
    assert m["reward/trlsig/seen"] == 1.0  # reported through TRL's log_metric
    evals = [r for r in rows if "eval/trlsig" in r]  # before training (global step 0) and after it (1)
    assert [r["eval/trlsig"] for r in evals] == [evals[0]["eval/trlsig"], evals[0]["eval/trlsig"] + 1]
    logged = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 8  # the first 2 groups of G 4
    fmt = get("format")
    for r in logged:
        c, comp = r["completion"], r["components"]
        assert r["finish_reason"] == "length"
        assert comp == {"bad": 0.0, "slow": None, "format": fmt([c], answer=[r["answer"]])[0],
                        "aio": float(len(c)), "trlsig": 6.0}
        assert r["reward"] == pytest.approx(comp["format"] + comp["trlsig"])  # weights 1, 1, 0 (aio); bad's 0


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
    from mmrl.train.scoring import check_reward_columns

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


# ------------------------------------------------------------------------------- reliability (issue: plug-ins)
def test_errors_are_shown_three_per_reward_and_all_logged_to_the_run(plugins, tmp_path):
    from mmrl.datasets.sample import Sample

    shown: list[str] = []
    log = tmp_path / "reward_errors.log"
    report = ErrorReport(log, log=shown.append)
    term = make_term(f"{plugins / 'raises.py'}:score", name="bad", report=report)
    pool = make_term(f"{plugins / 'boom.py'}:score", name="pooled", workers=2, report=report)
    samples = [Sample(id="cat-1", messages=[], answer="1"), Sample(id="dog-2", messages=[], answer="2")]
    try:
        for step in range(5):
            state = types.SimpleNamespace(global_step=step)
            score([term], ["a", "b"], {"samples": samples, "trainer_state": state})
        _, comps = score([pool], ["a", "b", "boom", "d"], {})
    finally:
        term.fn.close()
        pool.fn.close()
    assert term.errors == 5 and comps == {"pooled": [0.0] * 4}
    bad = [m for m in shown if "'bad'" in m]
    assert len(bad) == 3  # the first three of this reward; the rest only counted and logged
    assert all("ZeroDivisionError: plug-in bug" in m for m in bad)
    assert "step 0" in bad[0] and "completions 0-1 of 2" in bad[0] and "cat-1" in bad[0] and "dog-2" in bad[0]
    assert "reward/bad/errors" in bad[-1] and str(log) in bad[-1]  # where the others go
    pooled = [m for m in shown if "'pooled'" in m]
    assert len(pooled) == 1 and "ValueError: cannot score 'boom'" in pooled[0]
    assert "completions 2-3 of 4" in pooled[0]  # the failing chunk of the pool
    text = log.read_text()
    assert text.count("ZeroDivisionError: plug-in bug") >= 5 and text.count("Traceback") >= 6
    assert "step 4" in text and "cannot score 'boom'" in text


def test_errors_reach_stderr_when_no_run_log_is_given(plugins, capfd):
    term = make_term(f"{plugins / 'raises.py'}:score", name="bad_on_stderr")
    try:
        score([term], ["a"], {})
    finally:
        term.fn.close()
    err = capfd.readouterr().err
    assert "'bad_on_stderr'" in err and "ZeroDivisionError: plug-in bug" in err


def test_dead_worker_reports_its_exit_code_or_signal(plugins):
    r = IsolatedReward(f"{plugins / 'dies.py'}:die", timeout_s=10)
    try:
        with pytest.raises(RewardError, match=r"died \(exit code 3\)"):
            r(["a"], how=["exit3"])
        with pytest.raises(RewardError, match=r"died \(killed by signal 9 \(SIGKILL\)\)"):
            r(["a"], how=["kill"])  # a fresh worker started for this call
    finally:
        r.close()


LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /proc, RLIMIT_DATA, PDEATHSIG")

_TRAINER_LIKE = """
import sys, threading
from mmrl.rewards.isolation import IsolatedReward

spec, marker, where = sys.argv[1:4]

def score():
    IsolatedReward(spec, timeout_s=3600)(["x"], marker=[marker])

if where == "thread":
    threading.Thread(target=score).start()
else:
    score()
"""


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (a container's init may not reap it at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@LINUX
@pytest.mark.parametrize("fn, where", [("sleep", "main"), ("sleep", "thread"), ("spin", "main")],
                         ids=["sleeping", "started-from-a-thread", "holding-the-gil"])
def test_worker_dies_with_a_sigkilled_trainer(plugins, tmp_path, fn, where):
    """`spin` holds the GIL (only the kernel's parent-death signal can end it); a worker started from a thread
    gets no such signal (only the worker's parent-pid poll ends it); `sleep` from the main thread has both."""
    marker = tmp_path / "entered"
    spec = f"{plugins / 'forever.py'}:{fn}"
    parent = subprocess.Popen([sys.executable, "-c", _TRAINER_LIKE, spec, str(marker), where])
    worker = None
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text()):  # the worker is inside the plug-in's call
            assert parent.poll() is None and time.monotonic() < deadline, "the worker never entered the plug-in"
            time.sleep(0.05)
        worker = int(marker.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(worker), f"worker {worker} outlived its SIGKILLed parent"
    finally:
        parent.kill()
        if worker is not None and not _gone(worker):
            os.kill(worker, signal.SIGKILL)


@LINUX
def test_default_memory_cap_stops_a_5_gb_allocation(plugins):
    from mmrl.config import RewardConfig

    term = make_term(f"{plugins / 'hog.py'}:reserve", name="reserve")
    try:
        _, comps = score([term], ["a"], {})
    finally:
        term.fn.close()
    assert comps == {"reserve": [0.0]} and term.errors == 1  # an error like any other, not a trainer crash
    assert inspect.signature(make_term).parameters["memory_mb"].default == RewardConfig().memory_mb


@LINUX
def test_memory_cap_is_an_error_naming_the_key_and_the_next_call_works(plugins):
    shown: list[str] = []
    term = make_term(f"{plugins / 'hog.py'}:hog", name="hog", memory_mb=256, config_key="rewards[0]",
                     report=ErrorReport(None, log=shown.append))
    try:
        _, comps = score([term], ["a"], {"mb": [1024]})
        assert comps == {"hog": [0.0]} and term.errors == 1
        assert "cap of 256 MB" in shown[0] and "rewards[0].memory_mb" in shown[0]
        _, comps = score([term], ["a"], {"mb": [64]})
        assert comps == {"hog": [1.0]}  # an allocation under the cap (in a fresh worker)
    finally:
        term.fn.close()


def test_default_memory_cap_lets_a_torch_plugin_run(plugins):
    term = make_term(f"{plugins / 'hog.py'}:torch_matmul", name="torchy", on_error="raise")
    try:
        assert score([term], ["a"], {})[1] == {"torchy": [512.0]}
    finally:
        term.fn.close()


def test_a_plug_in_returning_the_wrong_number_of_values_is_shown_once(tmp_path):
    """compose's own output checks (one value per completion, finite) are failures of the reward too: shown and
    logged once, not only counted; a failure the worker already reported is not reported again."""
    plugin = tmp_path / "short.py"
    plugin.write_text("def score(completions, **kw):\n    return [1.0]\n")
    shown: list[str] = []
    report = ErrorReport(tmp_path / "reward_errors.log", log=shown.append)
    term = make_term(f"{plugin}:score", name="short", report=report)
    try:
        _, comps = score([term], ["a", "b"], {})
    finally:
        term.fn.close()
    assert comps == {"short": [0.0, 0.0]} and term.errors == 1
    assert len(shown) == 1 and "'short'" in shown[0] and "2" in shown[0], shown
    assert (tmp_path / "reward_errors.log").read_text().count("=== ") == 1
