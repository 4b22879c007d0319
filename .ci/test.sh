#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then ruff, mypy and pytest.
# Usage: bash .ci/test.sh [pytest args]   (OPTIMLAB_VENV picks the virtualenv; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${OPTIMLAB_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"

# torch first, pinned: pip takes the local CPU wheel; a looser request would pull a CUDA build.
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0 numpy 2>&1 | grep -v "is ignored" || true
"$py" -m pip install -q --disable-pip-version-check -e '.[dev,pytorch-optimizer]' 2>&1 | grep -v "is ignored" || true
"$py" -c "import torch, optim_engine, pytest, ruff" # fail here, loudly, if an install above failed

"$py" -m ruff check .
"$py" -m ruff format --check .
"$py" -m mypy
"$py" -m pytest "$@"
