"""The `mmrl` commands: one real subprocess per command, plus in-process checks of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.cli import main
from mmrl.train.trainer import Trainer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def mmrl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_train_eval_plot_commands(tmp_path, tiny):
    run = tmp_path / "run"
    out = mmrl("train", str(REPO / "recipes" / "demo.yaml"), *tiny.overrides(run))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_before"]["eval/n"] == 8
    before, after = summary["eval_before"]["eval/accuracy"], summary["eval_after"]["eval/accuracy"]
    assert f"eval/accuracy {' ' * 15}before {before:6.3f}   after {after:6.3f}" in out.stdout  # what it printed
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sft = [r["sft/loss"] for r in rows if r.get("train/stage") == "warm"]
    assert len(sft) == 2 and sft[1] < sft[0]  # the warm start learns
    rl = [r for r in rows if r.get("train/stage") == "rl"]
    # no KL, no entropy bonus: an RL step has a gradient exactly when some advantage is non-zero
    assert len(rl) == 3 and all((r["actor/grad_norm"] > 0) == (r["adv/zero_frac"] < 1) for r in rl), rl

    out = mmrl("eval", str(run), "--task", "rotation", "--n", "6", "--k", "4", "--temperature", "1.0")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((run / "eval" / "rotation" / "report.json").read_text())
    assert report["metrics"]["eval/n"] == 6 and report["checkpoint"].endswith("step_000005")
    # the reported accuracy is the accuracy reward of the reported completions (all 6), and it was printed
    from mmrl.rewards.builtin import answer_match

    done = report["completions"]
    scores = answer_match([c["completion"] for c in done], answer=[c["answer"] for c in done])
    assert len(done) == 6 and report["metrics"]["eval/accuracy"] == pytest.approx(sum(scores) / 6)
    assert f"{'eval/accuracy':28s} {report['metrics']['eval/accuracy']:.4f}" in out.stdout
    sampled = report["sampled"]
    assert sampled["k"] == 4 and sampled["n_prompts"] == 6 and "avg@4/accuracy" in sampled
    assert sampled["pass@1"] <= sampled["pass@4"]
    # pass@1 is the mean correctness of the 24 samples (correct: total reward ≥ the run's threshold, 1.0); the
    # total is accuracy + 0.1·format, so a correct sample has accuracy 1 and pass@1 ≤ avg@4/accuracy
    assert sampled["pass@1"] == pytest.approx(round(sampled["pass@1"] * 24) / 24)
    assert sampled["pass@1"] <= sampled["avg@4/accuracy"] + 1e-9
    assert Path(report["pass_at_k_png"]).stat().st_size > 1000 and "pass@4" in out.stdout

    from mmrl.cli.evaluation import run_eval  # in-process: a grounding eval draws its boxes

    grounding = run_eval(str(run), task="grounding", n=4)
    assert Path(grounding["boxes_png"]).exists() and len(grounding["completions"]) == 4

    (run / "plots" / "rewards.png").unlink()
    out = mmrl("plot", str(run))
    assert out.returncode == 0 and (run / "plots" / "rewards.png").exists()

    from mmrl.cli import main  # the comparison, in-process: two runs, one figure

    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(run / "metrics.jsonl", twin / "metrics.jsonl")
    assert main(["plot", str(run), str(twin), "--out", str(tmp_path / "cmp.png")]) == 0
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    assert main(["plot", str(run), str(twin)]) == 2  # several runs need --out
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png"), "--metric", "nope/metric"]) == 1


def test_zoo_and_data_commands(tmp_path, zoo_cache):
    out = mmrl("zoo", "build", "qwen2_5_vl", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    out = mmrl("zoo", "build", "qwen25_vl", str(tmp_path / "bad"))
    assert out.returncode == 2 and "did you mean 'qwen2_5_vl" in out.stderr

    out = mmrl("data", "make", "grounding", "--n", "3", "--out", str(tmp_path / "d" / "g.jsonl"))
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "d" / "g.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["task"] == "grounding"


def test_data_make_new_tasks_options_and_multi_image_puzzles(tmp_path, capsys):
    """One real subprocess for `--option` through argparse; the rest in-process."""
    rows = lambda path: [json.loads(x) for x in path.read_text().splitlines()]  # noqa: E731
    out = mmrl("data", "make", "grounding", "--n", "3", "--option", "targets=all", "--option", "salience=true",
               "--option", "distractors=[0, 1]", "--out", str(tmp_path / "g" / "all.jsonl"))
    assert out.returncode == 0, out.stderr
    for row in rows(tmp_path / "g" / "all.jsonl"):
        assert len(row["answer"]["salience"]) == len(row["answer"]["boxes"]) >= 1

    fo = tmp_path / "fo" / "train.jsonl"  # a video task: real MPEG-4 files, as for `event`
    assert main(["data", "make", "frame_order", "--n", "2", "--option", "frames=5", "--out", str(fo)]) == 0
    from mmrl.perception.video import load_video

    for row in rows(fo):
        (video,) = [p["video"] for p in row["messages"][0]["content"] if p["type"] == "video"]
        assert len(load_video(fo.parent / video, sample_id=row["id"], fps=None).frames) == 5
        assert row["task"] == "temporal/frame_order" and sorted(row["answer"]["order"]) == [1, 2, 3, 4, 5]

    pos = tmp_path / "pos" / "train.jsonl"  # a two-image folder puzzle: both images written
    photos = REPO / "tests" / "fixtures" / "photos"
    assert main(["data", "make", "position", "--images", str(photos), "--out", str(pos), "--size", "60"]) == 0
    for row in rows(pos):
        images = [p["image"] for p in row["messages"][0]["content"] if p["type"] == "image"]
        assert len(images) == 2 and all((pos.parent / im).is_file() for im in images) and len(set(images)) == 2

    counts = tmp_path / "c.jsonl"
    assert main(["data", "make", "counting", "--n", "8", "--option", "max_count=2", "--option", "kind=pair",
                 "--out", str(counts)]) == 0
    assert all(r["answer"]["count"] <= 2 and r["task"] == "counting" for r in rows(counts))
    assert main(["data", "make", "classify", "--n", "2", "--option", "label=both", "--out", str(counts)]) == 0
    capsys.readouterr()
    for argv, message in [
        (["grounding", "--option", "tragets=all"], "did you mean 'targets'"),
        (["grounding", "--option", "targets=some"], "targets must be 'one' or 'all'"),
        (["counting", "--option", "max_count"], "is not KEY=VALUE"),
        (["position", "--images", str(photos), "--option", "gird=3"], "did you mean 'grid'"),
    ]:
        assert main(["data", "make", *argv, "--out", str(tmp_path / "bad.jsonl")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.jsonl").exists()


def _policy_logprobs(policy, trainer) -> torch.Tensor:
    prompts = [policy.encode(s) for s in trainer.data.eval[:3]]
    batch = policy.collate(prompts)
    enc = policy.tokenizer(["<answer>90</answer>", "<answer>0</answer>", "<answer>270</answer>"],
                           add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
    with torch.no_grad():
        return policy.completion_logprobs(batch, enc["input_ids"], enc["attention_mask"])[0]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_export_loads_with_from_pretrained(tmp_path, tiny, length_reward, mode):
    from transformers import AutoModelForImageTextToText

    from mmrl.config import ModelConfig
    from mmrl.model.policy import Policy

    cfg = tiny(tmp_path / "run", f"model.mode={mode}", f"rewards=[{{fn: '{length_reward}', name: len}}]")
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.run()
    expected = _policy_logprobs(trainer.policy, trainer)

    out = mmrl("export", str(tmp_path / "run"), str(tmp_path / "export"), *(["--merge-lora"] if mode == "lora" else []))
    assert out.returncode == 0, out.stderr[-2000:]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "export")
    assert not any("lora" in k for k in model.state_dict())
    exported = Policy.load(ModelConfig(path=str(tmp_path / "export")))
    torch.testing.assert_close(_policy_logprobs(exported, trainer), expected, atol=1e-5, rtol=1e-5)


def test_lora_export_without_merge_after_sft_is_refused(tmp_path, tiny, length_reward, capsys):
    cfg = tiny(tmp_path / "run", "model.mode=lora", f"rewards=[{{fn: '{length_reward}', name: len}}]")
    Trainer(cfg, log=lambda *a: None).run()  # the SFT stage's adapter is merged into the base before RL
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert f"mmrl: error: {tmp_path / 'run'}: earlier stages merged adapters into the base; export with --merge-lora" \
        in err.splitlines()
    out = tmp_path / "x"
    assert not out.exists()  # refused before anything was written (it used to leave an empty OUT behind)


# ------------------------------------------------------------------------------------------- bad input


def test_missing_model_directory_is_a_clear_error(tmp_path, capsys, tiny):
    code = main(["train", str(REPO / "recipes" / "demo.yaml"),
                 *tiny.overrides(tmp_path / "run", f"model.path={tmp_path}/nope")])
    err = capsys.readouterr().err
    assert code == 1 and "model.path" in err and "nope" in err


def _jsonl_with_bad_images(tmp_path: Path) -> Path:
    from PIL import Image

    d = tmp_path / "data"
    d.mkdir()
    Image.new("RGB", (40, 30), "white").save(d / "ok.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    rows = [
        {"id": "good-1", "prompt": "Which way?", "image": "ok.png", "answer": "0", "task": "puzzle/rotation"},
        {"id": "missing-7", "prompt": "Which way?", "image": "gone.png", "answer": "90", "task": "puzzle/rotation"},
        {"id": "corrupt-3", "prompt": "Which way?", "image": "corrupt.png", "answer": "0", "task": "puzzle/rotation"},
        {"id": "good-2", "prompt": "Which way?", "image": "ok.png", "answer": "180", "task": "puzzle/rotation"},
    ]
    path = d / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_images_raise_naming_sample_and_file(tmp_path, capsys, tiny):
    path = _jsonl_with_bad_images(tmp_path)
    code = main(["train", str(REPO / "recipes" / "demo.yaml"), *tiny.overrides(tmp_path / "run"),
                 f"data.train={{path: '{path}'}}"])
    err = capsys.readouterr().err
    assert code == 1 and "missing-7" in err and "gone.png" in err


def test_bad_images_skipped_and_counted(tmp_path, tiny):
    path = _jsonl_with_bad_images(tmp_path)
    cfg = tiny(tmp_path / "run", f"data.train={{path: '{path}'}}", "data.on_bad_sample=skip",
               "stages=[{name: s, kind: sft, steps: 1}]")
    Trainer(cfg, log=lambda *a: None).run()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["data/skipped"] == 2


def test_list_and_bundled_recipes_by_name_from_anywhere(tmp_path, capsys):
    """`mmrl list KIND` names what exists; a bundled recipe is found by name from any directory (the config
    errors out on purpose here, after the recipe was found: exit 2 naming the key, not the recipe)."""
    from mmrl.algorithms import PRESETS
    from mmrl.rewards.registry import REWARDS

    assert main(["list", "presets"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == PRESETS.names()
    assert main(["list", "rewards"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == REWARDS.names()
    assert all(len(line.split(None, 1)) == 2 for line in out.splitlines())  # each with its docstring's sentence
    assert main(["list", "recipes"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"demo", "grounding", "algorithms/grpo"} <= set(names)
    out = mmrl("train", "grounding", "rollout.temperature=0", cwd=tmp_path)  # a directory without recipes/
    assert out.returncode == 2 and "rollout.temperature" in out.stderr, out.stderr
    out = mmrl("train", "groundng", cwd=tmp_path)
    assert out.returncode == 2 and "did you mean 'grounding'" in out.stderr


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, tiny):
    """SIGINT mid-run: the step finishes, a checkpoint of it is written, and the run exits 130 printing the
    command that resumes it (no traceback)."""
    import os
    import signal
    import time

    run = tmp_path / "run"
    args = tiny.overrides(run, "stages=[{name: s, kind: sft, steps: 400, labels: random}]", "trainer.threads=1")
    proc = subprocess.Popen([sys.executable, "-m", "mmrl", "train", "recipes/demo.yaml", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    metrics, deadline = run / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(
            metrics.read_text().splitlines() if metrics.exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    steps = [json.loads(x)["train/step"] for x in metrics.read_text().splitlines()]
    saved = sorted((run / "checkpoints").glob("step_*"))[-1]
    assert saved.name == f"step_{steps[-1]:06d}" and 2 <= steps[-1] < 400  # the last finished step, saved
    assert "Continue with:" in err and "resume=auto" in err and str(saved) in err
    assert "Traceback" not in err
