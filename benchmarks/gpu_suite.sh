#!/usr/bin/env bash
# The GPU benchmark suite: one script, one table, under 8 minutes on an H100/H200.
#
#   bash benchmarks/gpu_suite.sh            # on a GPU machine
#   TINY=1 bash benchmarks/gpu_suite.sh     # seconds-long CPU rehearsal at tiny sizes
#
# Rows: ResNet-50 training at 224, batch 256, bf16 (cnn_jax vs torch.compile vs torch eager);
# ResNet-18/50 inference (bf16, batch 256; cnn_jax vs torch eager, and torch.compile for 50);
# ResNet-20 training at 32x32, batch 512, fed by the on-device CIFAR pipeline (cnn_jax's data
# module augments on the GPU inside the step) vs the same step on a resident batch: the ratio is
# the share of the step the GPU spends on the model (target > 0.9, i.e. no stall).
# Needs only jax (CUDA), flax, optax, numpy, absl, torch, torchvision and this repo: the
# benchmark path imports no ml_collections/clu/TensorFlow (the engine's step is used when its
# package imports, a self-contained equivalent otherwise; the JSON says which).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${TINY:-0}" = "1" ]; then  # a CPU rehearsal of the plumbing: no budget
  BUDGET_S=${BUDGET_S:-100000}; ROW_TIMEOUT=${ROW_TIMEOUT:-1800}
else
  BUDGET_S=${BUDGET_S:-430}      # rows not started by then are skipped: the suite ends < 8 min
  ROW_TIMEOUT=${ROW_TIMEOUT:-170}
fi
OUT=${OUT:-$(mktemp -d /tmp/cnn_jax_gpu_suite.XXXXXX)}
mkdir -p "$OUT"
LOG="$OUT/results.jsonl"
: > "$LOG"
export TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.85}
START=$(date +%s)

if [ "${TINY:-0}" = "1" ]; then
  R50="--image_size=32 --batch=4"; R18="--image_size=32 --batch=4"; C20="--batch=8"
  STEPS="--steps=2 --repeats=1 --warmup=0"; ISTEPS="$STEPS"; EXAMPLES=64
  TORCH_COMPILE=${TORCH_COMPILE:-0}
else
  R50="--batch=256"; R18="--batch=256"; C20="--batch=512"
  STEPS="--steps=20 --repeats=3 --warmup=3"; ISTEPS="--steps=30 --repeats=3 --warmup=3"
  EXAMPLES=50000; TORCH_COMPILE=${TORCH_COMPILE:-1}
fi

# row NAME SIDE CMD...: runs one measurement, tags its JSON with the row and side.
row() {
  local name=$1 side=$2; shift 2
  local elapsed=$(( $(date +%s) - START ))
  echo "[${elapsed}s] $name / $side" >&2
  if [ "$elapsed" -gt "$BUDGET_S" ]; then
    echo "  skipped: past the ${BUDGET_S}s budget" >&2
    "$PY" -c "import json,sys; print(json.dumps(dict(row=sys.argv[1], side=sys.argv[2], failed=True, skipped=True)))" "$name" "$side" >> "$LOG"
    return
  fi
  if out=$(timeout "$ROW_TIMEOUT" "$@" --json 2>>"$OUT/stderr.log" | tail -n 1) && [ -n "$out" ]; then
    "$PY" -c "import json,sys; d=json.loads(sys.argv[1]); d.update(row=sys.argv[2], side=sys.argv[3]); print(json.dumps(d))" \
      "$out" "$name" "$side" >> "$LOG"
  else
    echo "  failed (see $OUT/stderr.log)" >&2
    "$PY" -c "import json,sys; print(json.dumps(dict(row=sys.argv[1], side=sys.argv[2], failed=True)))" "$name" "$side" >> "$LOG"
  fi
}
JAX="$PY -m cnn_jax.benchmark"
TORCH="$PY benchmarks/torch_baseline.py"

# Most important first: rows not started within BUDGET_S are skipped.
row "resnet50 train bf16" cnn_jax $JAX --model=resnet50 $R50 --dtype=bfloat16 --mode=train $STEPS
[ "$TORCH_COMPILE" = "1" ] && row "resnet50 train bf16" torch_compile $TORCH --model=resnet50 $R50 --dtype=bfloat16 --mode=train --compile $STEPS
row "resnet50 train bf16" torch_eager $TORCH --model=resnet50 $R50 --dtype=bfloat16 --mode=train $STEPS
row "resnet20 train, resident batch" cnn_jax $JAX --model=resnet20 $C20 --mode=train $STEPS
row "resnet20 train, on-device CIFAR pipeline" cnn_jax $JAX --model=resnet20 $C20 --mode=train --data=on_device --data_examples=$EXAMPLES $STEPS
row "resnet20 train, resident batch" torch_eager $TORCH --model=resnet20 $C20 --mode=train $STEPS
for m in resnet18 resnet50; do
  row "$m infer bf16" cnn_jax $JAX --model=$m $R18 --dtype=bfloat16 --mode=infer $ISTEPS
  row "$m infer bf16" torch_eager $TORCH --model=$m $R18 --dtype=bfloat16 --mode=infer $ISTEPS
  [ "$TORCH_COMPILE" = "1" ] && [ "$m" = resnet50 ] && row "$m infer bf16" torch_compile $TORCH --model=$m $R18 --dtype=bfloat16 --mode=infer --compile $ISTEPS
done

"$PY" - "$LOG" "$START" <<'EOF'
import json, os, sys, time

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
ok = [r for r in rows if not r.get("failed")]
dev = next((r.get("device_name") for r in ok if r.get("device_name")), None)
jx = next((r for r in ok if r["side"] == "cnn_jax"), {})
tr = next((r for r in ok if r["side"] != "cnn_jax"), {})
print(f"\nGPU suite: device {jx.get('device', '?')} / {dev or '?'}; jax {jx.get('jax')} "
      f"flax {jx.get('flax')}; torch {tr.get('torch')} ({tr.get('impl', '?')})")
print(f"| {'row':42} | {'side':13} | {'img/s':>10} | {'vs cnn_jax':>10} | {'first step s':>12} | "
      f"{'peak MiB':>9} |")
print(f"|{'-' * 44}|{'-' * 15}|{'-' * 12}|{'-' * 12}|{'-' * 14}|{'-' * 11}|")
base = {}
for r in rows:
    if r.get("failed"):
        why = "SKIPPED" if r.get("skipped") else "FAILED"
        print(f"| {r['row']:42} | {r['side']:13} | {why:>10} | {'':>10} | {'':>12} | {'':>9} |")
        continue
    rate = r.get("train_img_per_s", r.get("infer_img_per_s"))
    if r["side"] == "cnn_jax" and r["row"] not in base:
        base[r["row"]] = rate
    ratio = base.get(r["row"], float("nan")) / rate if r["side"] != "cnn_jax" else 1.0
    # first train step; for inference rows torch's first call or cnn_jax's compile time
    first = r.get("first_step_s", r.get("infer_first_s", r.get("infer_compile_s", float("nan"))))
    mem = r.get("peak_memory_bytes")
    print(f"| {r['row']:42} | {r['side']:13} | {rate:>10,.0f} | {ratio:>9.2f}x | {first:>12.2f} | "
          f"{(mem or 0) / 2**20 if mem else float('nan'):>9,.0f} |")
res = {r["row"]: r for r in ok if r["side"] == "cnn_jax"}
a, b = res.get("resnet20 train, resident batch"), res.get("resnet20 train, on-device CIFAR pipeline")
if a and b:
    print(f"on-device pipeline: {b['train_img_per_s']:,.0f} img/s vs {a['train_img_per_s']:,.0f} on a "
          f"resident batch -> model share of the step {b['train_img_per_s'] / a['train_img_per_s']:.1%}")
home = os.path.expanduser("~").rstrip("/") + "/"  # the log names no one machine's home
shown = "~/" + sys.argv[1][len(home):] if sys.argv[1].startswith(home) and home != "/" else sys.argv[1]
print(f"'vs cnn_jax' = cnn_jax img/s / this row's img/s; total {time.time() - float(sys.argv[2]):.0f} s; "
      f"raw: {shown}")
EOF
