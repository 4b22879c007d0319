#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (Python deps, Playwright's
# Python API among them; Redis, PostgreSQL and Debian's Chromium under CI=true), then ruff,
# ruff format, mypy and pytest.
# Usage: bash .ci/test.sh [pytest args]   (OPTIMLAB_VENV picks the virtualenv; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install.sh
bash .ci/servers.sh
py="${OPTIMLAB_VENV:-.venv}/bin/python"

"$py" -m ruff check .
"$py" -m ruff format --check .
"$py" -m mypy
"$py" -m pytest "$@"
