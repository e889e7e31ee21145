"""`python -m cnn_jax.report DIR [--filters] [--feature_maps IMG] [--group_by AXIS]`.

`python -m cnn_jax.report DIR1 DIR2 ... --out=OUT`: one report over the runs of several sweep
directories (for example the plain and the residual half of a depth ablation, run on different
days), written into OUT; a mix of protocols among them is flagged as for one sweep.

Besides the tables and curves, every run that has a confusion matrix (its `eval_metrics.json`,
else the final evaluation in `results.json`) gets `confusion_matrix.png` in its directory
(cnn_jax/report_confusion.py; `--noconfusion` skips them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from cnn_jax import report_confusion
from cnn_jax.report import find_runs, find_runs_in, plot_feature_maps, plot_filters, write_report


def cli() -> None:
    """`python -m cnn_jax.report DIR [...]`; flags are defined here so importing stays side-free."""
    from absl import app, flags, logging

    flags.DEFINE_bool("filters", False, "Also draw the first conv layer's kernels of each run's "
                      "newest checkpoint (filters.png in the run directory).")
    flags.DEFINE_string("feature_maps", None, "Image file: also draw the first layers' "
                        "activations for it (feature_maps.png in each run directory).")
    flags.DEFINE_string("group_by", None, "Axis that splits the curves into one figure per "
                        "value (default: a bool axis such as residual, else the smallest "
                        "categorical one).")
    flags.DEFINE_bool("confusion", True, "Draw each run's confusion matrix "
                      "(confusion_matrix.png in the run directory) when it has one.")
    flags.DEFINE_string("out", None, "With several DIRs: the directory the joint report is "
                        "written to (created if missing).")
    flags.DEFINE_integer("num_layers", 4, "--feature_maps: how many of the first layers to draw.")
    flags.DEFINE_integer("max_maps", 16, "--feature_maps: channels drawn per layer.")
    FLAGS = flags.FLAGS  # noqa: N806 (absl's convention)

    def main(argv: Sequence[str]) -> None:
        if not FLAGS["verbosity"].present:  # JAX and Orbax are chatty at INFO (as launch.py)
            logging.set_verbosity(logging.WARNING)
        if len(argv) < 2:
            raise app.UsageError("usage: python -m cnn_jax.report DIR [--filters] "
                                 "[--feature_maps IMAGE] [--group_by AXIS], or "
                                 "python -m cnn_jax.report DIR1 DIR2 ... --out=OUT")
        if len(argv) > 2 and not FLAGS.out:
            sys.exit(f"ERROR: {len(argv) - 1} directories given ({', '.join(argv[1:])}) but no "
                     "--out: name the directory the joint report goes to, e.g. --out=runs/joint")
        try:
            written = _cli_report(argv[1:], FLAGS)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"ERROR: {e}")
        for path in written:
            print(path)

    app.run(main)


def _cli_report(directories: Sequence[str], FLAGS) -> list[Path]:  # noqa: N803
    if FLAGS.out:  # read once, for the report and the per-run pictures below
        runs = find_runs_in(directories)
        written = write_report(FLAGS.out, group_by=FLAGS.group_by, sources=directories, runs=runs)
    else:
        runs = find_runs(directories[0])
        written = write_report(directories[0], group_by=FLAGS.group_by, runs=runs)
    if FLAGS.confusion:
        for run in runs:
            try:
                written.append(Path(report_confusion.plot_confusion(str(run.path))))
            except FileNotFoundError:
                pass  # unfinished or failed, or written before confusion matrices existed
    if FLAGS.filters or FLAGS.feature_maps:
        for run in runs:
            try:
                if FLAGS.filters:
                    written.append(plot_filters(run.path))
                if FLAGS.feature_maps:
                    written.append(plot_feature_maps(run.path, FLAGS.feature_maps,
                                                     FLAGS.num_layers, FLAGS.max_maps))
            except (FileNotFoundError, ValueError) as e:
                if len(runs) == 1:
                    raise
                print(f"{run.name}: no filters/feature maps: {e}")  # e.g. an MLP point
    return written



if __name__ == "__main__":
    cli()
