"""benchmarks/vs_trl.py without running a benchmark: its G arguments and the `ratio` lines its runs end with, on
made-up rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def vs_trl():
    sys.path.insert(0, str(BENCH))  # as `python benchmarks/vs_trl.py` does: it imports its sibling fresh_process
    try:
        spec = importlib.util.spec_from_file_location("vs_trl_under_test", BENCH / "vs_trl.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def _row(size: str, group: int, framework: str, step_s: float | None) -> dict:
    if step_s is None:
        return {"size": size, "group": group, "framework": framework, "skipped": "timed out after 900 s"}
    return {"size": size, "group": group, "framework": framework, "step_s": step_s,
            "tokens_per_s": 4 * group * 32 / step_s}


def test_ratio_line_puts_medium_first_and_says_when_it_did_not_run(vs_trl):
    rows = [_row("tiny", 4, "mmrl", 0.17), _row("tiny", 4, "trl", 0.214),
            _row("medium", 4, "mmrl", 13.77), _row("medium", 4, "trl", 79.27)]
    assert vs_trl.ratio_line(rows) == "ratio mmrl/TRL tokens/s: medium 5.76×, tiny 1.26× (G 4)"
    assert vs_trl.ratio_line(rows[:2]) == "ratio mmrl/TRL tokens/s: tiny 1.26× (G 4; tiny only, medium not run)"
    skipped = [_row("medium", 8, "mmrl", 10.0), _row("medium", 8, "trl", None)]
    assert vs_trl.ratio_line(skipped) == "ratio mmrl/TRL tokens/s: medium – (trl not measured) (G 8)"


def test_curve_ratio_line_and_table_per_g(vs_trl):
    rows = [_row("tiny", 4, "mmrl", 0.2), _row("tiny", 4, "trl", 0.2),
            _row("tiny", 8, "mmrl", 0.3), _row("tiny", 8, "trl", 0.4)]
    assert vs_trl.curve_ratio_line(rows) == "ratio mmrl/TRL tokens/s by G: tiny G 4 1.00×, G 8 1.33×"
    last = vs_trl.curve_table(rows).splitlines()[-1]
    # G | mmrl s | TRL s | mmrl/TRL | mmrl growth | TRL growth | linear
    assert last == "| 8 | 0.300 | 0.400 | 1.33× | 1.50× | 2.00× | 2.00× |"


@pytest.mark.parametrize("argv", [["--group", "1"], ["--g-curve", "4"], ["--g-curve", "4,x"],
                                  ["--g-curve", "4,8", "--group", "8"]])
def test_g_arguments_fail_before_measuring(vs_trl, argv):
    with pytest.raises(SystemExit) as e:
        vs_trl.main(argv)
    assert e.value.code == 2


def test_the_floor_line_reads_the_floor_row(vs_trl):
    rows = [_row("tiny", 4, "mmrl", 0.128), _row("tiny", 4, "trl", 0.18), _row("tiny", 4, "floor", 0.105)]
    lines = vs_trl.ratios(rows)
    assert lines[0] == "tiny: mmrl/TRL tokens-per-second ratio = 1.41 (≥ 1 met, 2× not)"
    assert lines[1].startswith("tiny: floor/TRL tokens-per-second ratio = 1.71 (the model's passes alone")
    assert vs_trl.ratio_line(rows) == "ratio mmrl/TRL tokens/s: tiny 1.41× (G 4; tiny only, medium not run)"


def test_the_floor_child_runs_the_model_passes_of_a_step(vs_trl):
    """The `floor` row's child on the tiny zoo model: every step generates exactly 32 tokens for 4 prompts × G
    rows (the child asserts the shape), and the stages it times add up to no more than its step."""
    import torch

    threads = torch.get_num_threads()
    try:
        res = vs_trl._floor_child(vs_trl.model_path("tiny"), 56, 1, 2, 1, 2)
    finally:
        torch.set_num_threads(threads)  # the child sets its own thread count
    assert res["len_mean"] == [32, 32, 32] and res["steps_total"] == 3 and res["generate_calls"] == 3
    st = res["stages_s"]
    parts = sum(st[k] for k in ("generate", "update: forward (log-probs)", "update: backward",
                                "update: clip + optimizer"))
    assert 0 < parts <= st["step (total)"] * 1.001
    assert len(res["times_s"]) == 3 and res["step_s"] == sum(res["times_s"][1:]) / 2
