"""Hub ids in `model.path` (and as `mmrl eval` / `mmrl export` sources), resolved offline through the standard
Hugging Face cache: a zoo model laid out as `models--ORG--NAME/snapshots/<rev>/` in a temporary HF_HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmrl.model import zoo

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def _hf_home(tmp_path) -> Path:
    """An HF_HOME whose hub cache holds `mmrl-test/tiny-qwen2-vl` (the zoo's Qwen2-VL) at revision `abc123`."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--mmrl-test--tiny-qwen2-vl"
    shutil.copytree(zoo.resolve("zoo:qwen2_vl"), repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    return home


def _mmrl(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "mmrl", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_hub_ids_train_eval_and_export_from_an_offline_cache(tmp_path, zoo_cache):
    import json

    import torch
    import yaml
    from safetensors.torch import load_file

    from mmrl.train import checkpoint

    home = _hf_home(tmp_path)
    snapshot = load_file(home / "hub" / "models--mmrl-test--tiny-qwen2-vl" / "snapshots" / "abc123"
                         / "model.safetensors")
    run = tmp_path / "run"
    out = _mmrl(home, "train", "recipes/demo.yaml", "smoke=true", "model.path=mmrl-test/tiny-qwen2-vl",
                f"run.dir={run}", "run.progress=false")
    assert out.returncode == 0, out.stderr[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["path"] == "mmrl-test/tiny-qwen2-vl"  # as given
    # the run trained the cached weights: 4 smoke steps (lr ≤ 1e-3) moved every tensor by < 0.01 (measured 1.6e-3);
    # any other start (the zoo's initializer_range is 0.05) would be far off. Checkpoints use the module's names.
    trained = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v
               for k, v in checkpoint.full_weights(checkpoint.latest(run / "checkpoints")).items()}
    assert trained.keys() == snapshot.keys() and len(snapshot) == 58
    assert all(0 < (trained[k] - snapshot[k]).abs().max() < 0.01 for k in snapshot)
    ev = _mmrl(home, "eval", "mmrl-test/tiny-qwen2-vl", "--n", "4", "--out", str(tmp_path / "eval"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metrics"]["eval/n"] == 4 and report["checkpoint"] is None
    assert report["source"] == report["model"] == "mmrl-test/tiny-qwen2-vl"
    assert [c["id"] for c in report["completions"]] == [f"rotation-eval-00000{i}" for i in range(4)]
    ex = _mmrl(home, "export", "mmrl-test/tiny-qwen2-vl", str(tmp_path / "export"))
    assert ex.returncode == 0, ex.stderr[-2000:]
    assert (tmp_path / "export" / "config.json").exists()
    exported = load_file(tmp_path / "export" / "model.safetensors")  # the cached model, untouched
    assert exported.keys() == snapshot.keys() and all(torch.equal(exported[k], snapshot[k]) for k in snapshot)


def test_a_hub_id_missing_from_the_cache_is_named_with_how_to_get_it(tmp_path, zoo_cache):
    out = _mmrl(_hf_home(tmp_path), "train", "recipes/demo.yaml", "smoke=true", "model.path=Qwen/Qwen2.5-VL-3B-Instruct",
                f"run.dir={tmp_path / 'run'}")
    assert out.returncode == 1
    assert "hub id 'Qwen/Qwen2.5-VL-3B-Instruct' is not in the Hugging Face cache" in out.stderr
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in out.stderr
