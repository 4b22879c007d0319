#!/usr/bin/env bash
# Regenerate .ci/constraints.txt (the Docker image's pins) from the CI virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${OPTIMLAB_VENV:-.venv}/bin/python"
{
    echo "# Pinned versions for the Docker image (pip install -c). torch is pinned in the Dockerfile itself,"
    echo "# from PyTorch's CUDA index. Regenerate: bash .ci/constraints.sh"
    "$py" -m pip freeze --exclude-editable | grep -viE "^(torch|optimlab)[=@ ]|^-e "
} > .ci/constraints.txt
