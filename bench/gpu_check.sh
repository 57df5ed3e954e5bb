#!/usr/bin/env bash
# mstagger GPU check: the CUDA paths of training and predict, in ONE command of at most ~8 minutes on
# one GPU with nothing but PyTorch, NumPy, pandas and PyYAML installed. From the repository root:
#
#     bash bench/gpu_check.sh                         results in $GPU_CHECK_OUT (default ./gpu-check-out)
#
# It writes $GPU_CHECK_OUT/log (everything) and $GPU_CHECK_OUT/summary.json (every step's rc and
# seconds, the stage's per-part timings, the step breakdown, the sync check, predict and resume checks,
# bench_train's figures with and without compilation). Steps, each under its own `timeout`, within a
# global budget (BUDGET, default 450 s); a step that does not fit what is left is skipped and says so:
#
#   env      nvidia-smi, torch/CUDA/cuDNN, which packages exist, /dev/shm                       (~5 s)
#   deps     dvclive (the stage logs through it), soundfile, soxr: unzipped from the wheels in
#            $WHEELS when missing (no pip, no network), else bench/gpu_check_stub for dvclive  (~5 s)
#   project  synthetic MTAT-size train-stage inputs (18,706/1,825/256 clips, 3.3 GB), learnable (~20 s)
#   stage    the real train stage (python -m mstagger.train's main) on cuda, 3 epochs: bf16,
#            channels-last, data on the device, BN recalibration, validation, checkpoints; timed
#            parts; verdict on the validation ROC-AUC (> 0.8: it learns)                     (~40 s)
#   micro    one step split into data, host overhead and GPU time; bf16 channels-last / NCHW /
#            fp32; the sync check: an epoch, a recalibration under set_sync_debug_mode("error") (~25 s)
#   predict  load_bundle on cuda against the CPU, odd batch sizes, predict's batching         (~10 s)
#   resume   `python -m mstagger.train` SIGKILLed after epoch 1's checkpoint; the rerun resumes,
#            finishes, removes the checkpoint; weights compared with the uninterrupted run     (~60 s)
#   bench    bench/bench_train.py, eager: seed loop; ours streamed; data on device; fused Adam (~90 s)
#   benchcc  bench/bench_train.py, + torch.compile reduce-overhead, TORCH_LOGS recompiles     (~150 s)
#   profile  bench/step_profile.py: a step and an eval batch per kind of kernel (convolution,
#            max-pool, dtype casts, ...), NCHW, compiled, CUDA graphs: what each change can save (~100 s)
#
# Rerun some steps on the same machine (the project in $WORK is reused):
#     ONLY="stage resume" BUDGET=200 bash bench/gpu_check.sh
# A dry run on a CPU with tiny sizes (plumbing only; tests/test_gpu_check.py runs it):
#     DRY=1 GPU_CHECK_OUT=/tmp/out WORK=/tmp/work bash bench/gpu_check.sh
# Knobs (environment): GPU_CHECK_OUT, WORK, BUDGET, PY, DEVICE, WHEELS, ONLY, REMAKE=1, FORCE_STUB=1.
set -o pipefail

REPO=$(pwd)
HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
OUT=$(mkdir -p "${GPU_CHECK_OUT:-$REPO/gpu-check-out}" && cd "${GPU_CHECK_OUT:-$REPO/gpu-check-out}" && pwd)
WORK=${WORK:-/tmp/mstagger-gpu-check}
PY=${PY:-python3}
BUDGET=${BUDGET:-450}
DEVICE=${DEVICE:-cuda}
N_TRAIN=18706 N_VALID=1825 N_TEST=256 MELS=128 FRAMES=628 STAGE_EPOCHS=3 KILL_DELAY=0.5
BENCH_EAGER_ARGS="--epochs 2 --only 0 1 4 5"
BENCH_COMPILED_ARGS="--epochs 3 --only 7"
MICRO_ARGS="--clips 2048 --steps 60"
PROFILE_ARGS="--steps 10 --repeats 3"
STAGE_ARGS=""
if [[ ${DRY:-0} == 1 ]]; then # tiny sizes on the CPU, one thread: the plumbing, not the figures
  BUDGET=${DRY_BUDGET:-1200} # a loaded 2-core CPU takes minutes over what one GPU does in seconds
  DEVICE=cpu N_TRAIN=70 N_VALID=16 N_TEST=16 MELS=16 FRAMES=64 STAGE_EPOCHS=3 KILL_DELAY=0
  BENCH_EAGER_ARGS="--train-clips 64 --valid-clips 32 --steps 1 --valid-batches 1 --only 0 4 --mels 16 --frames 64"
  BENCH_COMPILED_ARGS=""
  MICRO_ARGS="--clips 64 --steps 2 --batch 4 --mels 16 --frames 64"
  PROFILE_ARGS="--batch 4 --mels 16 --frames 64 --steps 1 --repeats 1 --variants stage nchw"
  MIN_AUC=${MIN_AUC:-0.55} # 3 epochs of 9 steps at 16 x 64 (CPU: 0.60); at MTAT size expect > 0.8
  STAGE_ARGS="batch_size=8" # 70 = 8 x 8 + 6: a partial last batch, as MTAT's 18,706 = 584 x 32 + 18
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
fi
if [[ -z ${WHEELS:-} ]]; then # the wheels the check carries: shared/gpucheck/wheels in or beside the repo
  for w in "$REPO/shared/gpucheck/wheels" "$REPO/../shared/gpucheck/wheels"; do
    [[ -d $w ]] && WHEELS=$(cd "$w" && pwd) && break
  done
fi
DEVTYPE=${DEVICE%%:*}
START=$(date +%s)
export REPO HERE OUT WORK PY DEVICE DEVTYPE STAGE_EPOCHS KILL_DELAY START WHEELS
export MIN_AUC=${MIN_AUC:-0.8}
export N_TRAIN N_VALID N_TEST MELS FRAMES STAGE_ARGS BENCH_EAGER_ARGS BENCH_COMPILED_ARGS MICRO_ARGS PROFILE_ARGS
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor-cache}
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
export PYTHONPATH="$REPO/src:$WORK/deps"
CHECK="$HERE/gpu_check.py"
export CHECK

left() { echo $((BUDGET - ($(date +%s) - START))); }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/status.tsv"; }

# run_step NAME LIMIT MIN FUNCTION: FUNCTION under `timeout` for min(LIMIT, budget left - 15) seconds;
# skipped when fewer than MIN seconds are left.
FAILED=0
run_step() {
  local name=$1 limit=$2 min=$3 fn=$4
  if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then
    echo "=== SKIP $name: not in ONLY=($ONLY)"
    return 0
  fi
  local rem=$(($(left) - 15))
  if ((rem < min)); then
    echo "=== SKIP $name: ${rem}s of the budget left, it needs ${min}s"
    record "$name" -1 0 "skipped: budget"
    return 0
  fi
  local t=$((limit < rem ? limit : rem)) s
  s=$(date +%s)
  echo
  echo "=== STEP $name (timeout ${t}s; $(left)s of ${BUDGET}s left) $(date -u +%T)"
  timeout -k 10 "$t" bash -o pipefail -c "$fn"
  local rc=$? d=$(($(date +%s) - s)) note=""
  ((rc == 124 || rc == 137)) && note="timed out after ${t}s"
  echo "=== END $name rc=$rc in ${d}s $note"
  record "$name" "$rc" "$d" "$note"
  ((rc != 0)) && FAILED=$((FAILED + 1))
  return 0
}

env_info() {
  nvidia-smi || echo "no nvidia-smi"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>/dev/null
  "$PY" "$CHECK" env "$WORK/res/env.json"
  df -h "$WORK" "$REPO" /dev/shm | sed 's/^/  /'
  free -g | sed 's/^/  /'
}

# dvclive and its imports, soundfile and soxr: the wheels of the modules missing here, unzipped into
# $WORK/deps (a present module is never shadowed); when the real dvclive still does not work, the stub.
setup_deps() {
  mkdir -p "$WORK/deps"
  declare -A module=([atpublic]=public [flufl_lock]=flufl.lock [zc_lockfile]=zc.lockfile [ruamel_yaml]=ruamel.yaml)
  local whl dist mod probe
  if [[ -n ${WHEELS:-} ]]; then
    for whl in "$WHEELS"/*.whl; do
      [[ -f $whl ]] || continue
      dist=$(basename "$whl" | cut -d- -f1)
      mod=${module[$dist]:-$dist}
      if ! timeout 30 "$PY" -c "import $mod" 2>/dev/null; then
        "$PY" -m zipfile -e "$whl" "$WORK/deps" && echo "deps: unzipped $(basename "$whl")"
      fi
    done
  else
    echo "deps: no wheels folder (set WHEELS): only what is installed"
  fi
  probe=$(mktemp -d)
  if [[ ${FORCE_STUB:-0} != 1 ]] && (cd "$probe" && timeout 60 "$PY" -c "
from dvclive import Live
import dvclive
live = Live('m', dvcyaml=None, report=None, save_dvc_exp=False)
live.log_metric('a', 1.0); live.next_step(); live.end()
print('deps: real dvclive from', dvclive.__file__)"); then
    echo "dvclive=real" >"$WORK/dvclive"
  else
    echo "deps: the real dvclive does not work here; using the stub ($HERE/gpu_check_stub)"
    echo "dvclive=stub" >"$WORK/dvclive"
  fi
  rm -rf "$probe"
}

make_proj() {
  "$PY" "$CHECK" project "$WORK/proj" --train "$N_TRAIN" --valid "$N_VALID" --test "$N_TEST" \
    --mels "$MELS" --frames "$FRAMES"
}

# stage_run NAME OVERRIDES...: the train stage with timers, in $WORK/run_NAME
stage_run() {
  local name=$1 dir=$WORK/run_$1
  shift
  # shellcheck disable=SC2086
  rm -rf "$dir"
  "$PY" "$CHECK" setup-run "$REPO" "$WORK/proj" "$dir" dataset=mtat device="$DEVICE" \
    epochs="$STAGE_EPOCHS" $STAGE_ARGS "$@" || return 1
  cd "$dir" || return 1
  TIMING_JSON=$WORK/res/timing_$name.json "$PY" -u "$CHECK" stage 2>&1 | "$PY" -u "$CHECK" tslines | tee stage.log
  local rc=$?
  [[ -f metrics/train.json ]] || return 1
  cp metrics/train.json "$WORK/res/stage_$name.json"
  # the synthetic tags are learnable: a working run ends far above chance
  "$PY" -c "
import json, sys; auc = json.load(open('metrics/train.json'))['val_roc_auc']
ok = auc > float(sys.argv[1])
print(f'stage $name: val ROC-AUC {auc:.4f} ->', 'LEARNING OK' if ok else 'LEARNING SUSPECT (expected > ' + sys.argv[1] + ')')
sys.exit(0 if ok else 3)" "$MIN_AUC" || rc=3
  return $rc
}
stage_eager() { stage_run eager compile=none data_on_device=auto; }

micro() {
  # shellcheck disable=SC2086
  "$PY" "$CHECK" micro --device "$DEVICE" --params "$REPO/params.yaml" --out "$WORK/res/micro.json" $MICRO_ARGS
}

step_prof() {
  cd "$REPO" || return 1
  # shellcheck disable=SC2086
  "$PY" bench/step_profile.py --device "$DEVICE" $PROFILE_ARGS --out "$WORK/res/step_profile.json"
}

predict_chk() {
  "$PY" "$CHECK" predict "$WORK/run_eager/models/model.pt" "$WORK/proj/data/features" \
    --device "$DEVICE" --out "$WORK/res/predict.json"
}

# `python -m mstagger.train` SIGKILLed KILL_DELAY s after epoch 1's checkpoint; the rerun must resume
# from it, finish and remove it.
resume_chk() {
  local dir=$WORK/run_resume
  rm -rf "$dir"
  # shellcheck disable=SC2086
  "$PY" "$CHECK" setup-run "$REPO" "$WORK/proj" "$dir" dataset=mtat device="$DEVICE" \
    epochs="$STAGE_EPOCHS" $STAGE_ARGS compile=none data_on_device=auto || return 1
  cd "$dir" || return 1
  "$PY" -u -m mstagger.train >first.log 2>&1 &
  local pid=$! killed=0 t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if [[ -f .cache/train/checkpoint.pt ]] && grep -q "epoch  1  lr" first.log; then
      sleep "$KILL_DELAY"
      kill -9 "$pid" 2>/dev/null && killed=1
      break
    fi
    if ((SECONDS - t0 > 120)); then
      kill -9 "$pid"
      break
    fi
    sleep 0.1
  done
  wait "$pid"
  echo "resume: first run rc=$? killed=$killed"
  sed 's/^/  first| /' first.log
  if [[ $killed != 1 || ! -f .cache/train/checkpoint.pt ]]; then
    echo "RESUME CHECK NOT DONE: the first run was not killed after a checkpoint"
    return 1
  fi
  rm -rf metrics/train # what dvc repro does before it reruns the stage
  "$PY" -u -m mstagger.train 2>&1 | "$PY" -u "$CHECK" tslines | tee second.log
  local rc=$?
  if grep -q "resuming from .cache/train/checkpoint.pt after epoch" second.log; then
    echo "RESUME OK: $(grep -o 'resuming from.*' second.log)"
  else
    echo "RESUME CHECK FAILED: no 'resuming from' line"
    rc=1
  fi
  [[ -e .cache/train/checkpoint.pt ]] && echo "RESUME CHECK FAILED: the finished run left its checkpoint" && rc=1
  [[ -f metrics/train.json ]] && cp metrics/train.json "$WORK/res/stage_resume.json"
  if [[ -f $WORK/run_eager/models/model.pt && -f models/model.pt ]]; then
    "$PY" "$CHECK" compare "$WORK/run_eager" "$dir" --out "$WORK/res/resume_compare.json"
  fi
  return $rc
}

bench_eager() {
  cd "$REPO" || return 1
  # shellcheck disable=SC2086
  "$PY" bench/bench_train.py --device "$DEVICE" $BENCH_EAGER_ARGS --out "$WORK/res/bench_train_eager.json"
}

bench_compiled() {
  cd "$REPO" || return 1
  # shellcheck disable=SC2086
  TORCH_LOGS=recompiles,graph_breaks,perf_hints "$PY" bench/bench_train.py --device "$DEVICE" \
    $BENCH_COMPILED_ARGS --out "$WORK/res/bench_train_compiled.json"
}

export -f left record stage_run stage_eager micro step_prof predict_chk resume_chk bench_eager bench_compiled \
  env_info make_proj

main() {
  echo "mstagger GPU check: repo $REPO, out $OUT, work $WORK, device $DEVICE, budget ${BUDGET}s, wheels ${WHEELS:-none}"
  [[ -z ${ONLY:-} ]] && rm -rf "$WORK/res" # a rerun of some steps (ONLY) keeps the other results
  mkdir -p "$WORK/res"
  : >"$WORK/status.tsv"
  run_step env 30 5 env_info
  setup_deps
  if grep -q stub "$WORK/dvclive"; then
    PYTHONPATH="$PYTHONPATH:$HERE/gpu_check_stub"
  fi
  record deps 0 0 "$(cat "$WORK/dvclive")"
  if [[ ! -f $WORK/proj/data/prepared/stats.json || ${REMAKE:-0} == 1 ]]; then
    rm -rf "$WORK/proj"
    run_step project 90 20 make_proj
  fi
  run_step stage 150 60 stage_eager
  run_step micro 60 30 micro
  run_step predict 60 20 predict_chk
  run_step resume 150 60 resume_chk
  run_step bench 150 90 bench_eager
  [[ -n $BENCH_COMPILED_ARGS ]] && run_step benchcc 240 120 bench_compiled
  run_step profile 150 40 step_prof # last: what is left of the budget (compiled kernels cached)
  "$PY" "$CHECK" summarize "$WORK" "$OUT/summary.json"
  echo
  echo "=== steps (name, rc, seconds, note):"
  column -t -s $'\t' "$WORK/status.tsv" 2>/dev/null || cat "$WORK/status.tsv"
  echo "=== $FAILED step(s) failed; total $(($(date +%s) - START)) s; results in $OUT"
  ((FAILED == 0))
}

mkdir -p "$WORK"
main 2>&1 | tee "$OUT/log"
exit "${PIPESTATUS[0]}"
