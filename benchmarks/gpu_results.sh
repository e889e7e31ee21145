#!/usr/bin/env bash
# Full-scale result runs for one GPU call of under 8 minutes (issue "Results", item 5).
#
#   bash benchmarks/gpu_results.sh              # on an H100/H200 (the device tool's machine)
#   TINY=1 bash benchmarks/gpu_results.sh       # CPU rehearsal of the plumbing at runlocal sizes
#
# What it runs, most important first, all at once on the one GPU (each process gets a share of
# its memory), each point an ordinary resumable launch.py run:
#   1. the depth ablation (experiments/ablation_depth.py): plain and residual nets at DEPTHS
#      (default 20+56), SEEDS (default 0+1), He et al.'s recipe shrunk to EPOCHS (default 60; the
#      paper's is 182) on the 45,000/5,000 train/val carve of the CIFAR-10 JPEG tree, all data on
#      the device;
#   2. ResNet-18 on Fashion-MNIST (experiments/resnet18_fashion_mnist.py) for FMNIST_EPOCHS
#      (default 30; the recipe's is 60), towards the published 94.9% test top-1.
# A run still going at DEADLINE_S is sent SIGTERM: it checkpoints and stops, and re-running this
# script resumes it (the same workdirs under $RUNS). Everything written goes to $OUT: the
# launch logs, every run's config.json / metrics.jsonl / results.json, the depth sweep's report
# (summary.csv/md, plots) and summary.json with the headline figures.
#
# Data, found or extracted: CIFAR-10 from $CNN_JAX_CIFAR10, else ~/data/cifar10-jpeg, else the
# tarball $CIFAR_TAR (default ../shared/datasets/cifar10-jpeg-train.tar.gz, or shared/datasets/...
# inside the checkout as the device tool lays it out); Fashion-MNIST's four IDX files from
# $FMNIST_DIR (default /usr/share/datasets/fashion-mnist; carry them to a machine without the
# Debian package). Needs jax, flax, optax, orbax, absl, numpy, pillow, ml_collections (carry its
# wheel to an image that lacks it) and, for the report's plots, matplotlib (optional).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-$(mktemp -d /tmp/cnn_jax_gpu_results.XXXXXX)}
RUNS=${RUNS:-$HOME/runs/gpu_results}
mkdir -p "$OUT" "$RUNS"
START=$(date +%s)
export TF_CPP_MIN_LOG_LEVEL=3
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/session.log" >&2; }

if [ "${TINY:-0}" = "1" ]; then
  DEPTH_ARGS="runlocal,data=synthetic,depths=${DEPTHS:-20},seeds=${SEEDS:-0}"
  FMNIST_ARGS="runlocal"
  DEADLINE_S=${DEADLINE_S:-1800}; PARALLEL=${PARALLEL:-1}; MEM_FRACTION=""
  EXTRA=()
else
  DEPTH_ARGS="epochs=${EPOCHS:-60},depths=${DEPTHS:-20+56},seeds=${SEEDS:-0+1}"
  FMNIST_ARGS="epochs=${FMNIST_EPOCHS:-30}"
  DEADLINE_S=${DEADLINE_S:-420}; PARALLEL=${PARALLEL:-4}
  MEM_FRACTION=${MEM_FRACTION:-0.15}          # per process: PARALLEL + 1 processes share the GPU
  EXTRA=(--config.data.on_device=True --config.steps_per_dispatch=${STEPS_PER_DISPATCH:-8})
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi
[ -n "$MEM_FRACTION" ] && export XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION

# CIFAR-10: an existing tree, else extract the tarball once.
if [ "${TINY:-0}" != "1" ]; then
  export CNN_JAX_CIFAR10=${CNN_JAX_CIFAR10:-$HOME/data/cifar10-jpeg}
  if [ ! -d "$CNN_JAX_CIFAR10/train" ]; then
    tar_path=${CIFAR_TAR:-}
    for t in ../shared/datasets/cifar10-jpeg-train.tar.gz shared/datasets/cifar10-jpeg-train.tar.gz; do
      [ -z "$tar_path" ] && [ -f "$t" ] && tar_path=$t
    done
    if [ -z "$tar_path" ]; then
      log "ERROR: no CIFAR-10 tree at $CNN_JAX_CIFAR10 and no tarball: set CNN_JAX_CIFAR10=DIR or CIFAR_TAR=FILE"
      exit 1
    fi
    mkdir -p "$CNN_JAX_CIFAR10" && tar xzf "$tar_path" -C "$CNN_JAX_CIFAR10"
    log "extracted $tar_path into $CNN_JAX_CIFAR10"
  fi
fi
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || lscpu | grep 'Model name'
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  git rev-parse HEAD 2>/dev/null; date -u; } > "$OUT/machine.txt" 2>&1
log "machine: $(head -n 2 "$OUT/machine.txt" | tail -n 1)"

# 2. ResNet-18 on Fashion-MNIST, in the background beside the depth sweep.
log "resnet18_fashion_mnist:$FMNIST_ARGS -> $RUNS/resnet18_fmnist"
timeout -s TERM -k 60 "$DEADLINE_S" "$PY" launch.py \
  --config="experiments/resnet18_fashion_mnist.py:$FMNIST_ARGS" --workdir="$RUNS/resnet18_fmnist" \
  --config.data.path="$FMNIST_DIR" "${EXTRA[@]}" > "$OUT/resnet18_fmnist.log" 2>&1 &
FMNIST_PID=$!

# 1. The depth sweep, PARALLEL points at a time.
log "ablation_depth:$DEPTH_ARGS -> $RUNS/ablation_depth (parallel $PARALLEL)"
timeout -s TERM -k 60 "$DEADLINE_S" "$PY" launch.py \
  --config="experiments/ablation_depth.py:$DEPTH_ARGS" --workdir="$RUNS/ablation_depth" --sweep \
  --sweep_parallel="$PARALLEL" "${EXTRA[@]}" > "$OUT/ablation_depth.log" 2>&1
log "depth sweep exit $?"
wait "$FMNIST_PID"; log "resnet18_fashion_mnist exit $?"

"$PY" -m cnn_jax.report "$RUNS/ablation_depth" >> "$OUT/ablation_depth.log" 2>&1 || log "report failed"
# Raw logs of every run, and the report, beside this session's logs.
for d in "$RUNS"/ablation_depth "$RUNS"/ablation_depth/* "$RUNS"/resnet18_fmnist; do
  [ -d "$d" ] || continue
  rel=${d#"$RUNS"/}; mkdir -p "$OUT/$rel"
  for f in config.json metrics.jsonl results.json sweep.json sweep_status.json summary.csv summary.md; do
    [ -f "$d/$f" ] && cp "$d/$f" "$OUT/$rel/"
  done
  cp "$d"/*.png "$OUT/$rel/" 2>/dev/null || true
done

"$PY" - "$RUNS" "$OUT" "$START" <<'EOF'
import glob, json, os, sys, time

runs, out, start = sys.argv[1], sys.argv[2], float(sys.argv[3])


def final(run_dir):
    """The last train record and the last held-out record of a run's metrics.jsonl."""
    train = held = None
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        for line in open(path):
            rec = json.loads(line)
            if rec.get("split") == "train":
                train = rec
            elif rec.get("split") in ("val", "test"):
                held = rec
    return train, held


summary = {"machine": open(os.path.join(out, "machine.txt")).read().splitlines(),
           "wall_s": round(time.time() - start, 1), "depth_points": {}}
for d in sorted(glob.glob(os.path.join(runs, "ablation_depth", "*", ""))):
    train, held = final(d)
    status = {}
    if os.path.exists(os.path.join(d, "sweep_status.json")):
        status = json.load(open(os.path.join(d, "sweep_status.json")))
    summary["depth_points"][os.path.basename(d.rstrip("/"))] = {
        "status": status.get("status"), "step": (train or {}).get("step"),
        "train_top1": (train or {}).get("top1"), "heldout_split": (held or {}).get("split"),
        "heldout_top1": (held or {}).get("top1")}
train, held = final(os.path.join(runs, "resnet18_fmnist"))
summary["resnet18_fmnist"] = {"step": (train or {}).get("step"), "split": (held or {}).get("split"),
                              "top1": (held or {}).get("top1")}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
EOF
log "done; raw logs and summary.json in $OUT"
