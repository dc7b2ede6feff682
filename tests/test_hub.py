"""Hub ids in `model.path` (and as `mmrl eval` / `mmrl export` sources), resolved offline through the standard
Hugging Face cache: a zoo model laid out as `models--ORG--NAME/snapshots/<rev>/` in a temporary HF_HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmrl import zoo

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
    home = _hf_home(tmp_path)
    run = tmp_path / "run"
    out = _mmrl(home, "train", "recipes/demo.yaml", "smoke=true", "model.path=mmrl-test/tiny-qwen2-vl",
                f"run.dir={run}", "run.progress=false")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (run / "summary.json").exists()
    ev = _mmrl(home, "eval", "mmrl-test/tiny-qwen2-vl", "--n", "4", "--out", str(tmp_path / "eval"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert (tmp_path / "eval" / "report.json").exists()
    ex = _mmrl(home, "export", "mmrl-test/tiny-qwen2-vl", str(tmp_path / "export"))
    assert ex.returncode == 0, ex.stderr[-2000:]
    assert (tmp_path / "export" / "config.json").exists()


def test_a_hub_id_missing_from_the_cache_is_named_with_how_to_get_it(tmp_path, zoo_cache):
    out = _mmrl(_hf_home(tmp_path), "train", "recipes/demo.yaml", "smoke=true", "model.path=Qwen/Qwen2.5-VL-3B-Instruct",
                f"run.dir={tmp_path / 'run'}")
    assert out.returncode == 1
    assert "hub id 'Qwen/Qwen2.5-VL-3B-Instruct' is not in the Hugging Face cache" in out.stderr
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in out.stderr
