#!/usr/bin/env bash
# The GPU check: everything a one-GPU machine without network should show, in one run.
#
#   bash benchmarks/gpu_check.sh             # one CUDA GPU: under 10 minutes
#   bash benchmarks/gpu_check.sh --dry-run   # the same phases on the CPU, tiny sizes (~1 min)
#
# Phases, each timed:
#   1. lab     build the lab model's `gpu` preset (engrain.lab.build; dry run: the default
#              `cpu` preset for a few steps)
#   2. fit     `cl fit behaviors/pinapple.yaml` on that model (its own gate's verdict is printed;
#              the check fails only if the fit cannot run: exit 1, 2 or 130)
#   3. qwen    build a Qwen3-0.6B-shaped random-weight model (benchmarks/qwen_shaped.py;
#              dry run: --tiny, the same 151,936-token vocabulary)
#   4. vs_trl  benchmarks/vs_trl.py on that model, once with the vLLM sampler (skipped where
#              vLLM is not installed, and in the dry run) and once with the HF sampler:
#              seconds per step, tokens per second and MFU (TRL beside them where installed)
#
# Exits 2 with one line when there is no CUDA device (without --dry-run); 1 when a phase fails.
# Settings (environment): PYTHON (default .venv/bin/python, else python), GPU_CHECK_OUT (the
# working folder, default a new temporary one), PEAK_TFLOPS (the device's dense bf16 peak; by
# default looked up from the GPU's name, none in the dry run), GPU_CHECK_LAB_STEPS,
# GPU_CHECK_FIT_STEPS, GPU_CHECK_EVAL_N, GPU_CHECK_STEPS (vs_trl steps), GPU_CHECK_METHODS.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $arg (try --help)" >&2; exit 1 ;;
  esac
done

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python; fi
CL=$(dirname "$(command -v "$PY")")/cl
[ -x "$CL" ] || { echo "gpu_check: no cl beside $PY; pip install -e . first" >&2; exit 1; }
# No network on the target machine: never wait on the hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1

if [ $DRY = 0 ]; then
  GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")') || exit 1
  if [ -z "$GPU" ]; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run for the CPU rehearsal" >&2
    exit 2
  fi
  # Dense bf16 peaks (no sparsity), TFLOP/s, of the SXM parts; PEAK_TFLOPS overrides.
  case "$GPU" in
    *H100*|*H200*|*H20[^0]*) PEAK_DEFAULT=989 ;; *A100*) PEAK_DEFAULT=312 ;; *L40S*) PEAK_DEFAULT=362 ;;
    *4090*) PEAK_DEFAULT=165 ;; *L4*) PEAK_DEFAULT=121 ;; *) PEAK_DEFAULT= ;;
  esac
  PEAK=${PEAK_TFLOPS:-$PEAK_DEFAULT}
  LAB=(--preset gpu ${GPU_CHECK_LAB_STEPS:+--steps "$GPU_CHECK_LAB_STEPS"})
  FIT=(--steps "${GPU_CHECK_FIT_STEPS:-100}" --eval-n "${GPU_CHECK_EVAL_N:-100}")
  QWEN=()
  STEPS=${GPU_CHECK_STEPS:-8}; WARMUP=2
  SAMPLERS="vllm hf"
else
  GPU="none (dry run on the CPU)"
  PEAK=${PEAK_TFLOPS:-}
  LAB=(--preset cpu --steps "${GPU_CHECK_LAB_STEPS:-20}")
  FIT=(--steps "${GPU_CHECK_FIT_STEPS:-2}" --eval-n "${GPU_CHECK_EVAL_N:-2}")
  QWEN=(--tiny)
  STEPS=${GPU_CHECK_STEPS:-2}; WARMUP=1
  SAMPLERS="hf"
fi

OUT=${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
echo "gpu_check: device $GPU; working in $OUT; python $PY"

ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { printf '%d.%d' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }   # milliseconds -> "12.3"
T_START=$(ms)
SUMMARY=()
phase() {   # phase NAME COMMAND...: run it, time it, stop the check if it fails
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0; t0=$(ms)
  "$@"
  local rc=$?
  SUMMARY+=("$(printf '%-14s %8s s  exit %s' "$name" "$(secs $(( $(ms) - t0 )))" "$rc")")
  return $rc
}
fail() { echo "gpu_check: phase $1 failed (exit $2); see above" >&2; exit 1; }

phase lab "$PY" -m engrain.lab.build --out "$OUT/lab" "${LAB[@]}" || fail lab $?

phase fit "$CL" fit behaviors/pinapple.yaml --model "$OUT/lab" "${FIT[@]}" --no-progress \
  --out-dir "$OUT/adapters" --store "$OUT/engrain.duckdb"
rc=$?
case $rc in
  0) echo "fit: adapter accepted" ;;
  3) echo "fit: ran; rejected, regressed (exit 3)" ;;
  4) echo "fit: ran; rejected, not learned (exit 4)" ;;
  *) fail fit $rc ;;
esac

phase qwen "$PY" benchmarks/qwen_shaped.py --out "$OUT/qwen" "${QWEN[@]}" || fail qwen $?

VS=(--model "$OUT/qwen" --reps 1 --steps "$STEPS" --warmup "$WARMUP" --methods "${GPU_CHECK_METHODS:-rmsd}")
"$PY" -c 'import trl' 2>/dev/null || { VS+=(--no-trl); echo "(TRL is not installed: engrain only)"; }
[ -n "$PEAK" ] && VS+=(--peak-tflops "$PEAK")
for s in $SAMPLERS; do
  if [ "$s" = vllm ] && ! "$PY" -c 'import vllm' 2>/dev/null; then
    echo; echo "=== vs_trl/vllm: skipped (vLLM is not installed: pip install 'engrain[vllm]')"
    SUMMARY+=("$(printf '%-14s %8s    skipped' vs_trl/vllm -)")
    continue
  fi
  phase "vs_trl/$s" "$PY" benchmarks/vs_trl.py "${VS[@]}" --sampler "$s" || fail "vs_trl/$s" $?
done

TOTAL_MS=$(( $(ms) - T_START ))
echo; echo "=== gpu_check summary (device: $GPU${PEAK:+, peak $PEAK TFLOP/s})"
printf '%s\n' "${SUMMARY[@]}"
printf '%-14s %8s s\n' total "$(secs $TOTAL_MS)"
if [ $DRY = 0 ] && [ $TOTAL_MS -gt 600000 ]; then
  echo "gpu_check: over the 10-minute budget; lower GPU_CHECK_FIT_STEPS or GPU_CHECK_EVAL_N" >&2
fi
