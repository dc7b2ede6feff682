"""Running Python from the repository root must import the Hugging Face `datasets` / `kernels` packages, not
mmrl's sub-packages of the same name (which is why they live under `mmrl/`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", ["datasets", "kernels"])
def test_third_party_package_not_shadowed_from_repo_root(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}, sys; print({module}.__file__)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1]).resolve()
    assert "site-packages" in path.parts, path
    assert ROOT not in path.parents or ".venv" in path.relative_to(ROOT).parts, path
