#!/usr/bin/env bash
# The GPU check: one command for a GPU host (the device machine), one summary line per step.
#
#   bash bench/gpu_wheels.sh        # first, on a machine with PyPI: the missing wheels into .whl/
#   bash bench/gpu_check.sh         # on the GPU host (device: cuda, GPU-sized figures)
#   bash bench/gpu_check.sh --cpu   # the dry run (device: cpu, tiny sizes): CI runs it
#
# Steps, in order of what matters most (a step the budget cuts short is a FAIL line, not a hole),
# each bounded by `timeout` and all of them together by GPU_CHECK_BUDGET_S (default 470 s, so the
# whole check fits in 8 minutes), each printing ONE line (ok/FAIL, wall time, figures) and the
# next step running whatever the last one did:
#   deps          the carried wheels installed (--target, on PYTHONPATH), the service's imports
#   cuda-tests    pytest -m gpu (tests/optim_engine/test_cuda.py; on a GPU none may skip)
#   impl          the engine's reported optimizer implementation, bf16 and compile vs what ran
#   e2e           optimlab up --workers 1 --gpus 0: a job, a packed sweep, bf16 and compiled jobs
#   packed        bench/packed_trials.py: packed vs sequential trials, N = 32, 128, 512 (MLP 64-128-10)
#   packed-wide   the same at width 512, N = 32, 128 (a model that gives the GPU work)
#   overhead      bench/engine_overhead.py: the engine vs a hand loop, same optimizer implementation
#   engine-tests  the engine's tests again with OPTIMLAB_TEST_DEVICE=<device> (the spec factories)
# The log (every step's output, the service's too) and gpu_check.json (step -> ok, rc, wall_s,
# figures) go to $OUT when it is set (two files: the device tool brings back at most 8), else to a
# temporary folder named on the last line. PYTHON picks the interpreter (default python3).
# Exit status: 0 when every step is ok.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
DEVICE=cuda
if [[ ${1:-} == --cpu ]]; then DEVICE=cpu; fi
PY=${PYTHON:-python3}
DIR=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$DIR"
LOG=$DIR/gpu_check.log
SUMMARY=$DIR/gpu_check.json
WORK=$(mktemp -d -t gpu_check_steps.XXXXXX)  # each step's own log and figures
SITE=${GPU_CHECK_SITE:-/tmp/site}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
rm -f "$SUMMARY" "$LOG"
export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# Engine tests that do not hold on another device by design: a hand loop on the CPU as the
# reference, `device == "cpu"` asserted, and a subprocess that drops PYTHONPATH (the wheels).
DESELECT=(
  --deselect tests/optim_engine/test_train.py::test_seed_article_matches_hand_written_loop
  --deselect tests/optim_engine/test_train.py::test_metrics_follow_design_semantics
  --deselect tests/optim_engine/test_train.py::test_optimizer_plugin_through_entry_point
)
ENGINE_TESTS=(tests/optim_engine/test_packed.py tests/optim_engine/test_train.py tests/optim_engine/test_trials.py)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

if [[ $DEVICE == cuda ]]; then
  OVERHEAD=(--reps 5 --epochs 20) PACKED=(--sizes 32 128 512 --reps 1 --epochs 5)
  WIDE=(--sizes 32 128 --reps 1 --epochs 5) E2E=(--epochs 3 --timeout 120)
  LIMITS=(deps=60 cuda-tests=150 impl=120 engine-tests=120 overhead=60 packed=150 packed-wide=90 e2e=180)
else
  OVERHEAD=(--reps 1 --epochs 2) PACKED=(--sizes 2 4 --reps 1 --epochs 2)
  WIDE=(--sizes 2 --reps 1 --epochs 1) E2E=(--epochs 2 --timeout 60)
  LIMITS=(deps=30 cuda-tests=60 impl=60 engine-tests=120 overhead=30 packed=30 packed-wide=30 e2e=90)
fi

limit_of() {  # this step's limit, cut to what is left of the budget
  local name=$1 entry limit=60
  for entry in "${LIMITS[@]}"; do [[ ${entry%%=*} == "$name" ]] && limit=${entry#*=}; done
  local left=$((BUDGET - SECONDS))
  echo $((limit < left ? limit : left))
}

# step NAME COMMAND...: run it under `timeout`, log it, print its one summary line.
step() {
  local name=$1; shift
  local step_log=$WORK/$name.log step_json=$WORK/$name.json limit rc started ended
  limit=$(limit_of "$name")
  started=$(date +%s.%N)
  if ((limit < 5)); then
    echo "no time left in the ${BUDGET} s budget" >"$step_log"; rc=124
  else
    STEP_JSON=$step_json timeout -k 10 "$limit" "$@" >"$step_log" 2>&1
    rc=$?
  fi
  ended=$(date +%s.%N)
  { echo "=== $name (limit ${limit}s, exit $rc): $*"; cat "$step_log"; } >>"$LOG"
  "$PY" bench/gpu_steps.py summary "$name" "$rc" "$started" "$ended" "$step_json" "$step_log" "$SUMMARY" \
    --device "$DEVICE" | tee -a "$LOG"
}

deps() {  # the carried wheels (on the GPU host, where there are some), then what the check imports
  shopt -s nullglob
  local wheels=(.whl/*.whl) carried=0
  if ((${#wheels[@]})) && [[ $DEVICE == cuda ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
      || return 1
    carried=${#wheels[@]}
  fi
  "$PY" - "$carried" <<'PY'
import importlib, json, os, sys
carried = int(sys.argv[1])
modules = ["torch", "numpy", "pydantic", "pydantic_settings", "fastapi", "uvicorn", "sqlalchemy", "alembic",
           "celery", "kombu", "httpx", "typer", "optuna", "cmaes", "sklearn", "pandas", "pytest",
           "service.app", "service.cli", "workers.app", "optim_engine"]
missing = []
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - every import failure is the finding
        missing.append(f"{name}: {exc!r}"[:160])
import torch
figures = {"ok": not missing, "wheels": carried, "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda": torch.cuda.is_available(), "missing": missing}
json.dump(figures, open(os.environ["STEP_JSON"], "w"))
print(figures)
sys.exit(0 if not missing else 1)
PY
}

if [[ $DEVICE == cuda ]]; then export PYTHONPATH=$SITE:$ROOT; fi
export DEVICE PY SITE
export -f deps
echo "gpu_check: device $DEVICE, budget ${BUDGET}s, log and gpu_check.json in $DIR" | tee -a "$LOG"
step deps bash -c deps
step cuda-tests "${PYTEST[@]}" -m gpu tests/optim_engine
step impl "$PY" bench/gpu_steps.py impl --device "$DEVICE" --json "$WORK/impl.json"
step e2e "$PY" bench/gpu_steps.py e2e --device "$DEVICE" "${E2E[@]}" --logs "$WORK" --json "$WORK/e2e.json"
if [[ -f $WORK/e2e_up.log ]]; then { echo "=== e2e: optimlab up's own output"; cat "$WORK/e2e_up.log"; } >>"$LOG"; fi
step packed "$PY" bench/packed_trials.py --device "$DEVICE" "${PACKED[@]}" --json "$WORK/packed.json"
step packed-wide "$PY" bench/packed_trials.py --device "$DEVICE" --width 512 "${WIDE[@]}" --json "$WORK/packed-wide.json"
step overhead "$PY" bench/engine_overhead.py --device "$DEVICE" "${OVERHEAD[@]}" --json "$WORK/overhead.json"
step engine-tests env OPTIMLAB_TEST_DEVICE="$DEVICE" "${PYTEST[@]}" "${ENGINE_TESTS[@]}" "${DESELECT[@]}"

"$PY" - "$SUMMARY" <<'PY' | tee -a "$LOG"
import json, sys
summary = json.load(open(sys.argv[1]))
failed = [name for name, step in summary["steps"].items() if not step["ok"]]
print(f"gpu_check: {len(summary['steps']) - len(failed)}/{len(summary['steps'])} steps ok" + (f"; FAIL: {', '.join(failed)}" if failed else ""))
PY
echo "gpu_check: $DIR/gpu_check.json, $DIR/gpu_check.log; ${SECONDS}s" | tee -a "$LOG"
rm -rf "$WORK"
"$PY" -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))['ok'] else 1)" "$SUMMARY"
