#!/usr/bin/env bash
# Create the virtualenv (OPTIMLAB_VENV, default .venv) and install the project into it. The dev
# extra brings Playwright's Python API and driver only: the browser is Debian's chromium
# (.ci/servers.sh), so no `playwright install` download is ever run.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${OPTIMLAB_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"

quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; return "${PIPESTATUS[0]}"; }
# torch first, pinned: pip takes the local CPU wheel; a looser request would pull a CUDA build.
quiet "$py" -m pip install -q --disable-pip-version-check torch==2.13.0 numpy
quiet "$py" -m pip install -q --disable-pip-version-check -e '.[dev,pytorch-optimizer,flower,plot,parquet]'
"$py" -c "import torch, optim_engine, pytest, playwright.sync_api" # fail here, loudly, if an install above failed
