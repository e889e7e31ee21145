"""Seconds from a re-launched training run's start to its first step, for one or more checkouts.

    python benchmarks/trainer_relaunch.py --checkouts=.,/tmp/cnn_jax_old --rounds=4

What `cnn_jax.benchmark` reports as the first step of a re-launched run is its own start-up on
random data; this times the trainer's (`launch.py`): configuration, data set facts, checkpoint
restore, the data pipeline, the step's trace and persistent-cache load, and the step itself, as
`results.json`'s `first_step_s` records it. Each checkout first trains `--steps` steps in its own
work directory (cold start, not counted); then every round re-launches each checkout in turn with
`--extend` for `--steps` more steps, so that both sides see the same machine load. All checkouts
run with this interpreter (the same installed packages); the persistent compilation cache is the
trainer's default. Prints one JSON line per run and a median per checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(checkout: str, workdir: str, config: str, total: int, extend: bool) -> float:
    cmd = [sys.executable, os.path.join(checkout, "launch.py"), f"--config={config}",
           f"--workdir={workdir}", f"--config.total_steps={total}",
           "--config.eval_every_steps=0"] + (["--extend"] if extend else [])
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    p = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
        return float(json.load(f)["first_step_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkouts", default=".", help="comma-separated repository roots")
    p.add_argument("--config", default="experiments/resnet_cifar10.py:depth=20")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="steps per launch")
    p.add_argument("--out", default="", help="work directories here (default: a temp dir)")
    a = p.parse_args()
    checkouts = [c.strip() for c in a.checkouts.split(",") if c.strip()]
    base = a.out or tempfile.mkdtemp(prefix="cnn_jax_relaunch.")
    dirs = {c: os.path.join(base, f"run{i}") for i, c in enumerate(checkouts)}
    for d in dirs.values():
        if os.path.exists(d):
            sys.exit(f"{d} exists: give another --out (nothing is overwritten)")
    for c in checkouts:
        run(c, os.path.abspath(dirs[c]), a.config, a.steps, extend=False)
    times: dict[str, list[float]] = {c: [] for c in checkouts}
    commits = {c: subprocess.run(["git", "-C", c, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip() for c in checkouts}
    for r in range(a.rounds):
        for c in checkouts:
            total = a.steps * (r + 2)
            s = run(c, os.path.abspath(dirs[c]), a.config, total, extend=True)
            times[c].append(s)
            print(json.dumps({"checkout": c, "commit": commits[c], "round": r + 1,
                              "first_step_s": round(s, 3), "load": round(os.getloadavg()[0], 2),
                              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}),
                  flush=True)
    for c in checkouts:
        print(f"{c}: first step of a re-launched run, median {statistics.median(times[c]):.2f} s "
              f"over {len(times[c])} rounds ({', '.join(f'{t:.2f}' for t in times[c])})")
    if not a.out:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
