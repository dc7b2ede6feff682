#!/usr/bin/env bash
# The GPU acceptance check in one command (see benchmarks/gpu_check.py for the steps and the report).
#   on the GPU machine:  bash benchmarks/gpu_check.sh [--out DIR]     (after benchmarks/gather_wheels.sh here)
#   anywhere:            bash benchmarks/gpu_check.sh --cpu [--out DIR]
# Wheels in benchmarks/wheels are installed offline into a private folder first — only those whose package the
# machine lacks, so nothing it has is shadowed — and mmrl runs from this checkout (PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENDOR=${MMRL_VENDOR:-/tmp/mmrl-vendor}
if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
  missing=$("$PY" - benchmarks/wheels/*.whl <<'PYEOF'
import re, sys
from importlib.metadata import PackageNotFoundError, version
for path in sys.argv[1:]:
    name = re.split(r"-\d", path.rsplit("/", 1)[-1], maxsplit=1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        print(path)
PYEOF
)
  if [ -n "$missing" ]; then
    mkdir -p "$VENDOR"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --target "$VENDOR" $missing
    else  # no pip there: a wheel is a zip of its files (none of these needs a build step)
      for w in $missing; do "$PY" -m zipfile -e "$w" "$VENDOR"; done
    fi
  fi
  export PYTHONPATH="$VENDOR${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
