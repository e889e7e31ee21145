"""A run directory's confusion matrix as a PNG, from `eval_metrics.json` or `results.json`.

    python -m cnn_jax.report_confusion RUN_DIR [--split=test] [--out=FILE.png]

`eval_metrics.json` (written by `--mode=eval`) wins over the final evaluation in `results.json`
(`final.<split>`, the test split when there is one). The colour of a cell is its share of the
true class (rows sum to 1); counts are written into the cells when there are at most 20 classes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

EVAL_FILE = "eval_metrics.json"
RESULTS_FILE = "results.json"
PNG_FILE = "confusion_matrix.png"
MAX_ANNOTATED_CLASSES = 20


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def find_confusion(run_dir: str, split: str | None = None) -> tuple[np.ndarray, str]:
    """(counts [true, predicted], where they come from) of the run in `run_dir`.

    Raises FileNotFoundError when neither file holds a confusion matrix (for `split`).
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir!r} does not exist")
    ev = _read(os.path.join(run_dir, EVAL_FILE))
    if ev and "confusion_matrix" in ev and split in (None, ev.get("split")):
        return np.asarray(ev["confusion_matrix"], np.int64), \
            f"{EVAL_FILE}, split {ev.get('split')}, step {ev.get('step')}"
    final = (_read(os.path.join(run_dir, RESULTS_FILE)) or {}).get("final") or {}
    labels = [split] if split else ["test", "val"]
    for label in labels:
        m = final.get(label) or {}
        if "confusion_matrix" in m:
            return np.asarray(m["confusion_matrix"], np.int64), f"{RESULTS_FILE}, final {label}"
    where = f" for split {split!r}" if split else ""
    raise FileNotFoundError(
        f"no confusion matrix{where} in {run_dir}: it needs {EVAL_FILE} (python launch.py ... "
        f"--workdir={run_dir} --mode=eval) or a finished run's {RESULTS_FILE}")


def plot_confusion(run_dir: str, out: str | None = None, split: str | None = None) -> str:
    """Draws the run's confusion matrix into `out` (default RUN_DIR/confusion_matrix.png)."""
    counts, source = find_confusion(run_dir, split)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"the confusion matrix in {run_dir} ({source}) is not square: "
                         f"shape {counts.shape}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, np.float64), where=rows > 0)
    size = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{os.path.basename(os.path.abspath(run_dir))}: top-1 {100 * accuracy:.2f}% "
                 f"({source})", fontsize=9)
    fig.tight_layout()
    out = out or os.path.join(run_dir, PNG_FILE)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnn_jax.report_confusion",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default=None, help="results.json split (default: test, val)")
    parser.add_argument("--out", default=None, help=f"PNG path (default: RUN_DIR/{PNG_FILE})")
    args = parser.parse_args(argv)
    try:
        print(plot_confusion(args.run_dir, args.out, args.split))
    except (FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
