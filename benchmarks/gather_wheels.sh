#!/usr/bin/env bash
# Gather, here, the wheels the GPU check needs that the lent GPU machine lacks (it has Python 3.12 with torch,
# transformers, peft, accelerate, triton, pytest, pyarrow, scipy, pillow, opencv — no torchvision, no network), into
# benchmarks/wheels/ (git-ignored: name it in the device tool's `carry`; about 30 MiB). Versions are the
# ones installed in this checkout's .venv (the pinned stack), as CPython 3.12 manylinux or pure-Python wheels.
#
#   bash benchmarks/gather_wheels.sh            # then, there: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=benchmarks/wheels
# mmrl's own imports missing there (plots: matplotlib and its dependencies; the math reward: math-verify and its
# parsers) and what the test files import at collection time (hypothesis)
NAMES="matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six math-verify
latex2sympy2_extended antlr4-python3-runtime hypothesis sortedcontainers attrs"
PINS=$("$PY" - $NAMES <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name, file=sys.stderr, end=" (not installed here: skipped)\n")
PYEOF
)
# torchvision (transformers builds Qwen-VL's video processor with it) must match that machine's torch 2.11
TORCHVISION=${TORCHVISION:-torchvision==0.26.0}
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$OUT" $PINS "$TORCHVISION"
ls -l "$OUT"
du -sh "$OUT"
