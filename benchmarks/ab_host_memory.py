"""A/B of `--keep_host_buffers` (cnn_jax/host_memory.py): interleaved runs of cnn_jax.benchmark.

    python benchmarks/ab_host_memory.py [--model=resnet20] [--batch=128] [--pairs=3] [--steps=10]
        [--json=PATH]

Each run is a fresh process (the malloc settings are per process, set before JAX starts), in
the order off, on, on, off, ... Prints per run the training img/s, CPU-ms per step, and the
process's minor page faults, kernel (system) CPU time and peak resident memory (its own
`wait4` resource usage); then the medians. Written by hand: no library A/Bs a
process-level setting with the kernel's fault counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(args: argparse.Namespace, kept: bool) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnn_jax.benchmark", f"--model={args.model}",
         f"--batch={args.batch}", f"--steps={args.steps}", "--repeats=3", "--mode=train",
         f"--keep_host_buffers={str(kept).lower()}", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    if status != 0:
        raise SystemExit(f"ERROR: cnn_jax.benchmark failed (wait status {status})")
    r = json.loads(stdout)
    return {"keep_host_buffers": kept, "train_img_per_s": r["train_img_per_s"],
            "train_cpu_ms_per_step": r["train_cpu_ms_per_step"],
            "minor_faults": usage.ru_minflt, "sys_s": usage.ru_stime, "user_s": usage.ru_utime,
            "max_rss_mb": usage.ru_maxrss / 1024, "loadavg": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--json", default="")
    args = p.parse_args()
    if min(args.batch, args.steps, args.pairs) < 1:
        raise SystemExit("ERROR: --batch, --steps and --pairs must be >= 1")
    runs = []
    for i in range(args.pairs):
        for kept in ((False, True) if i % 2 == 0 else (True, False)):
            r = one(args, kept)
            runs.append(r)
            print(f"keep_host_buffers={str(kept):5}  {r['train_img_per_s']:7.1f} img/s  "
                  f"{r['train_cpu_ms_per_step']:5.0f} CPU-ms/step  {r['minor_faults']:>9,} "
                  f"minor faults  sys {r['sys_s']:5.2f} s  user {r['user_s']:6.2f} s  "
                  f"peak RSS {r['max_rss_mb']:6.0f} MB  (load {r['loadavg']:.2f})", flush=True)
    for kept in (False, True):
        side = [r for r in runs if r["keep_host_buffers"] == kept]
        print(f"median, keep_host_buffers={kept}: "
              f"{statistics.median(r['train_img_per_s'] for r in side):.1f} img/s, "
              f"{statistics.median(r['train_cpu_ms_per_step'] for r in side):.0f} CPU-ms/step, "
              f"{statistics.median(r['minor_faults'] for r in side):,.0f} minor faults, "
              f"sys {statistics.median(r['sys_s'] for r in side):.2f} s, peak RSS "
              f"{statistics.median(r['max_rss_mb'] for r in side):.0f} MB per process")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
