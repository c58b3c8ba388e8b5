#!/usr/bin/env bash
# Create (or reuse) a virtual environment, install the package with its test extras, lint, run the tests.
#   bash run_scripts/test.sh                 # the full suite (what CI runs)
#   bash run_scripts/test.sh -m "not slow"   # extra arguments go to pytest
# VENV (default .venv) and PYTHON (default python3) choose the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
source run_scripts/_venv.sh

echo "== ruff"
"$VENV/bin/ruff" check .
echo "== pytest"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PY" -m pytest -p no:logging "$@"
