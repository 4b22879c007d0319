#!/usr/bin/env bash
# Download into .whl/ (ignored by git) the wheels bench/gpu_check.sh installs on the GPU host:
# the project's runtime dependencies, its pytorch-optimizer extra and pytest, resolved for that host's Python (CPython 3.12,
# x86-64 Linux) as one closure with one version of each and the pins of .ci/constraints.txt,
# less what the host already has (CUDA torch and what it needs, numpy, scipy, pandas, ... : the
# list below, from the device machine's image as /work/.library/device/KINDS.md gave it on
# 2026-11-17). The host has no network, so the wheels travel with the working tree (64 MiB in
# all): this refuses a set over 50 MiB.
#
#   bash bench/gpu_wheels.sh            # on a machine that reaches PyPI; PYTHON picks the pip
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
DEST=.whl
MAX_MIB=50
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp)
for n in 17 24 27 28 31 34 35; do TARGET+=(--platform "manylinux_2_${n}_x86_64"); done
TARGET+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# On the GPU host already (normalized names). A carried wheel would shadow the host's build: never
# torch's own stack, nor the numpy-compiled packages built against the host's numpy.
PRESENT="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. What the project runs with (torch excluded: the host's CUDA build is the one to use), the
#    pytorch-optimizer extra (its optimizers are in the catalog the CUDA tests go through), pytest.
"$PY" - >"$work/requirements.txt" <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["pytorch-optimizer"]
for dep in deps:
    if re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0].lower() != "torch":
        print(dep)
print("pytest")
PY

# 2. One closure for the host's Python and platform, pinned where the constraints pin (metadata
#    only: nothing is downloaded whole here).
"$PY" -m pip install --dry-run --ignore-installed --quiet --report "$work/report.json" --target "$work/none" \
  "${TARGET[@]}" -r "$work/requirements.txt" -c .ci/constraints.txt 2> >(grep -v "^WARNING: Location" >&2)

# 3. Those the host lacks, as NAME==VERSION: not torch nor anything torch needs (the extra asks for
#    torch; the host's CUDA build and its own CUDA libraries are the ones to use), not PRESENT.
"$PY" - "$work/report.json" "$PRESENT" >"$work/missing.txt" <<'PY'
import json, re, sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

items = {norm(i["metadata"]["name"]): i["metadata"] for i in json.load(open(sys.argv[1]))["install"]}
needs = {
    name: {norm(re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0]) for req in meta.get("requires_dist", []) if "extra ==" not in req}
    for name, meta in items.items()
}
torch_stack, todo = set(), ["torch"]
while todo:
    name = todo.pop()
    if name in items and name not in torch_stack:
        torch_stack.add(name)
        todo.extend(needs[name])
skip = torch_stack | set(sys.argv[2].split())
for name, meta in items.items():
    if name not in skip:
        print(f"{meta['name']}=={meta['version']}")
PY

# 4. Exactly those wheels, nothing else in the folder (one version of each).
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$DEST" -r "$work/missing.txt" \
  2> >(grep -v "^WARNING: Location" >&2)

count=$(find "$DEST" -type f -name '*.whl' | wc -l)
kib=$(du -sk "$DEST" | cut -f1)
echo "gpu_wheels: $count wheels, $((kib / 1024)) MiB in $DEST/ for CPython 3.12 x86-64:"
tr '\n' ' ' <"$work/missing.txt"
echo
if ((kib > MAX_MIB * 1024)); then
  echo "gpu_wheels: over ${MAX_MIB} MiB: the working tree that travels to the GPU host is capped at 64 MiB" >&2
  exit 1
fi
