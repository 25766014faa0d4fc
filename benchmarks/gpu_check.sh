#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (see benchmarks/README.md).
#   bash benchmarks/gpu_check.sh OUTDIR [DEVICE]      (DEVICE defaults to cuda; cpu = dry run)
# 1. dyncal profile on ResNet-50 with three heads (batch 1 and 32), results under benchmarks/results;
# 2. the demo pipeline on the device: collect, profile (device and cpu), solve, verify (real early exit).
# Needs torch, torchvision, typer, rich, numpy, scipy, pandas, scikit-learn and fvcore importable;
# dyncal itself is used from this checkout.
set -uo pipefail
OUTDIR=${1:?usage: gpu_check.sh OUTDIR [DEVICE]}
DEVICE=${2:-cuda}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
{ command -v nvidia-smi >/dev/null && nvidia-smi -L; "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"; } 2>&1 | tee "$OUTDIR/env.txt"

echo "== 1. profile ResNet-50 + 3 heads on $DEVICE"
"$PY" "$ROOT/benchmarks/profile_cuda.py" --device "$DEVICE" --batch-size 1,32 2>&1 | tail -n 30
cp "$ROOT"/benchmarks/results/profile_resnet50_"${DEVICE%%:*}"* "$OUTDIR"/ 2>/dev/null

echo "== 2. demo pipeline on $DEVICE"
D="$PY -m dyncal"
$D collect --model dyncal.demo:DigitsExitNet --weights "$ROOT/dyncal/demo/digits_exitnet.pt" \
  --data dyncal.demo:validation --out "$WORK/run" --device "$DEVICE" -q &&
$D profile "$WORK/run" --device "$DEVICE" --device cpu --batch-size 1,32 --json > "$OUTDIR/demo_profile.json" &&
$D solve "$WORK/run" --budget 0.5x --out "$WORK/thresholds.json" > /dev/null &&
$D verify "$WORK/run" --thresholds "$WORK/thresholds.json" --device "$DEVICE" --batch-size 1,32,128 --repeats 5 \
  --json > "$OUTDIR/demo_verify.json" &&
$D info "$WORK/run"
echo "pipeline rc=$?"
"$PY" - "$OUTDIR/demo_verify.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("agreement", d["agreement"], "hardware", d["hardware"])
for t in d["timings"]:
    print(t["key"], "measured", round(t["measured_ms"], 4), "predicted", t["predicted_ms"] and round(t["predicted_ms"], 4),
          "full model", round(t["full_model_ms"], 4), "speed-up", round(t["speedup"], 2), "interval", [round(v, 2) for v in t["speedup_ci"]])
PY
rm -rf "$WORK"
