"""Sweeps: run every named config point of an experiment file into `DIR/<point>/`, then report.

An experiment file becomes a sweep by defining `get_sweep(arg) -> [(point_name, overrides), ...]`
(usually `return common.product(depth=(20, 32), residual=(True, False))`, experiments/common.py).
`plan` turns the points into commands, `execute` runs them (child processes here, or SLURM jobs
through `slurm`) and writes the report. The names of the files a sweep writes are in
cnn_jax/rundir.py.
"""

from cnn_jax.rundir import LOG_FILE, STATUS_FILE, SWEEP_FILE, is_finished, point_name
from cnn_jax.sweep.execute import EXECUTORS, main
from cnn_jax.sweep.point import error_line
from cnn_jax.sweep.plan import (check_points, get_points, load_experiment, point_command,
                                point_flags, preflight)

__all__ = ["EXECUTORS", "LOG_FILE", "STATUS_FILE", "SWEEP_FILE", "check_points", "error_line",
           "get_points", "is_finished", "load_experiment", "main", "point_command", "point_flags",
           "point_name", "preflight"]
