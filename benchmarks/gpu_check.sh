#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (see benchmarks/README.md); at most 8 minutes.
#   bash benchmarks/gpu_check.sh OUTDIR [DEVICE]      (DEVICE defaults to cuda; cpu = dry run, tiny settings)
# 1. runtime modes (issue 19): ResNet-50 with three heads and the demo model, each under eager and under
#    per-stage CUDA graphs: per-batch early exit, the re-batched throughput mode and the plain deployment
#    (backbone + last head, same runtime), batch 1, 32 and 128 (2048 rows; the offline row of the issue's table)
#    -> benchmarks/results/runtime_modes_cuda_<gpu>.md/.json;
# 2. dyncal profile on ResNet-50 with three heads (batch 1 and 32), results under benchmarks/results;
# 3. the demo pipeline on the device: collect, profile (device and cpu), solve, then verify --throughput under
#    each runtime (graphs and eager on CUDA; eager on a CPU): agreement, paired latency, samples/s of per-batch
#    early exit, the throughput mode and the plain deployment -> benchmarks/results/demo_verify_<runtime>_<dev>_<gpu>.json.
# Each step has its own time limit (STEP1_S, STEP2_S, STEP3_S seconds; 240 + 90 + 140 by default: under 8 minutes).
# Needs torch, torchvision, typer, rich, numpy, scipy, pandas, scikit-learn and fvcore importable;
# dyncal itself is used from this checkout. The Python of step 1 runs on a CPU with --dry (tests/test_gpu_check.py).
set -uo pipefail
OUTDIR=${1:?usage: gpu_check.sh OUTDIR [DEVICE]}
DEVICE=${2:-cuda}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MODES=(--batch-sizes 1,32,128 --rows 2048) PROFILE=(--batch-size 1,32)
[ "${DEVICE%%:*}" = cpu ] && MODES=(--dry --out-dir "$OUTDIR") PROFILE=(--batch-size 1 --repeats 3 --warmup 1)
START=$SECONDS
{ command -v nvidia-smi >/dev/null && nvidia-smi -L; "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"; } 2>&1 | tee "$OUTDIR/env.txt"

echo "== 1. runtime modes on $DEVICE: eager and graphs; per batch, re-batched, plain deployment"
timeout "${STEP1_S:-240}" "$PY" "$ROOT/benchmarks/rebatch_throughput.py" --device "$DEVICE" "${MODES[@]}" 2>&1 \
  | tee "$OUTDIR/runtime_modes.log" | tail -n 60
echo "step 1 rc=${PIPESTATUS[0]} at $((SECONDS - START)) s"
cp "$ROOT"/benchmarks/results/runtime_modes_"${DEVICE%%:*}"* "$OUTDIR"/ 2>/dev/null

echo "== 2. profile ResNet-50 + 3 heads on $DEVICE"
timeout "${STEP2_S:-90}" "$PY" "$ROOT/benchmarks/profile_cuda.py" --device "$DEVICE" "${PROFILE[@]}" 2>&1 | tail -n 30
echo "step 2 rc=${PIPESTATUS[0]} at $((SECONDS - START)) s"
cp "$ROOT"/benchmarks/results/profile_resnet50_"${DEVICE%%:*}"* "$OUTDIR"/ 2>/dev/null

echo "== 3. demo pipeline on $DEVICE: verify --throughput under each runtime"
RUNTIMES="graphs eager" VERIFY_S=15
[ "${DEVICE%%:*}" = cpu ] && RUNTIMES="eager" VERIFY_S=1
GPU=$("$PY" -c "import re, sys, torch; d = sys.argv[1]; n = torch.cuda.get_device_name(d) if d.startswith('cuda') and torch.cuda.is_available() else 'cpu'; print(re.sub(r'[^A-Za-z0-9]+', '-', n).strip('-').lower()[:60])" "$DEVICE" 2>/dev/null || echo unknown)
demo_pipeline() {
  local D="$PY -m dyncal"
  $D collect --model dyncal.demo:DigitsExitNet --weights "$ROOT/dyncal/demo/digits_exitnet.pt" \
    --data dyncal.demo:validation --out "$WORK/run" --device "$DEVICE" -q &&
  { $D profile "$WORK/run" --device "$DEVICE" --device cpu --batch-size 1,32 --json > "$OUTDIR/demo_profile.json" ||
    { echo "profile under the default runtime failed; again under eager"; $D profile "$WORK/run" --device "$DEVICE" \
      --device cpu --batch-size 1,32 --runtime eager --json > "$OUTDIR/demo_profile.json"; }; } &&
  $D solve "$WORK/run" --budget 0.5x --out "$WORK/thresholds.json" > /dev/null || return 1
  for RT in $RUNTIMES; do
    $D verify "$WORK/run" --thresholds "$WORK/thresholds.json" --device "$DEVICE" --runtime "$RT" --throughput \
      --batch-size 1,32,128 --repeats 5 --max-seconds "$VERIFY_S" --out "$OUTDIR/demo_verify_$RT.json" | tail -n 12
    [ "${DEVICE%%:*}" = cpu ] ||
      cp "$OUTDIR/demo_verify_$RT.json" "$ROOT/benchmarks/results/demo_verify_${RT}_${DEVICE%%:*}_$GPU.json"
  done
}
export -f demo_pipeline
export PY ROOT WORK DEVICE OUTDIR RUNTIMES VERIFY_S GPU
timeout "${STEP3_S:-140}" bash -c demo_pipeline
echo "pipeline rc=$? at $((SECONDS - START)) s"
for RT in $RUNTIMES; do
  [ -s "$OUTDIR/demo_verify_$RT.json" ] && "$PY" "$ROOT/benchmarks/verify_summary.py" "$OUTDIR/demo_verify_$RT.json"
done
echo "done in $((SECONDS - START)) s"
