"""Tables and plots from run directories.

`python -m cnn_jax.report DIR [--filters] [--feature_maps IMG]`: DIR is a sweep directory (one run
per subdirectory, `sweep.json` naming the axes) or one run directory;
`python -m cnn_jax.report DIR1 DIR2 ... --out=OUT` reports the runs of several sweeps together in
OUT (two halves of an ablation run separately, say). Writes `summary.csv`, `summary.md`,
`curves*.png` (train error thin, validation error bold, against epoch; one figure per group) and
`error_vs_depth.png` when a depth axis exists.
Points that differ only in their `seed` axis form a group: mean and std columns, mean curves
with a band, error bars. Failed points are listed with their error line and drawn with an x;
points trained under different protocols (train split, epochs, ...) are flagged.

Modules: `runs` (reading run directories), `tables` (summary rows, seeds, CSV/Markdown), `plots`
(curves, error vs depth), `pictures` (filters and feature maps of a checkpoint).
"""

from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import Sequence

from cnn_jax import rundir
from cnn_jax.report.pictures import (filter_grid, first_conv_kernel, first_layer_activations,
                                     plot_feature_maps, plot_filters)
from cnn_jax.report.plots import choose_group_axis, plot_curves, plot_depth
from cnn_jax.report.runs import (Run, axis_keys, find_runs, find_runs_in, has_seeds, protocol_mix,
                                 read_json, read_metrics, run_status)
from cnn_jax.report.tables import seed_summary, table, write_csv, write_markdown

__all__ = ["Run", "choose_group_axis", "filter_grid", "find_runs", "find_runs_in",
           "first_conv_kernel", "first_layer_activations", "plot_feature_maps", "plot_filters",
           "read_metrics", "run_status", "write_report"]


def write_report(directory: str | Path, group_by: str | None = None,
                 sources: Sequence[str | Path] | None = None,
                 runs: Sequence[Run] | None = None) -> list[Path]:
    """Writes summary.csv, summary.md and the plots into `directory`; returns the files written.

    `sources`: report the runs of these sweep directories together (e.g. two halves of an
    ablation run separately), written into `directory`; None: the runs of `directory` itself.
    `runs`: those runs, already read by `find_runs`/`find_runs_in` (the CLI reuses them for
    its per-run pictures); None: read here.
    A mix of protocols among the runs is said in summary.md and printed as a WARNING line.
    """
    root = Path(directory)
    source_dirs = [root] if sources is None else [Path(s) for s in sources]
    if runs is None:
        runs = find_runs(root) if sources is None else find_runs_in(source_dirs)
    if sources is not None:
        root.mkdir(parents=True, exist_ok=True)
    columns, rows = table(runs)
    if group_by is not None and group_by not in axis_keys(runs):
        raise ValueError(f"--group_by={group_by!r} is not an axis; axes: {axis_keys(runs)}")
    group_axis = group_by if group_by is not None else choose_group_axis(runs)
    images = plot_curves(runs, root, group_axis) + plot_depth(runs, rows, root)
    write_csv(root / "summary.csv", columns, rows)
    notes = []
    for source in source_dirs:
        lines = _plan_notes(read_json(source / rundir.SWEEP_FILE) or {}, source)
        if sources is not None:
            count = sum(1 for r in runs if source in (r.path, r.path.parent))
            lines.insert(0, f"Source: `{source}` ({count} point(s))")
        notes += lines
    generated = [f"Directory: `{root}`",
                 f"Generated: {datetime.datetime.now().isoformat(timespec='seconds')}"]
    at = 1 if sources is None and notes and notes[0].startswith("Sweep:") else len(notes)
    notes[at:at] = generated  # one sweep: its command, then these lines, then its last run
    walls = [row["wall_time_s"] for row in rows if isinstance(row.get("wall_time_s"), (int, float))]
    if walls:
        notes.append(f"Training wall time, summed over points: {sum(walls):.0f} s")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    notes.append("Points: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    warnings = protocol_mix(runs)
    for line in warnings:
        print(f"WARNING: {root}: mixed protocols: {line}", flush=True)
    groups = seed_summary(runs, rows) if has_seeds(runs) else []
    title = f"Summary of {root.resolve().name}"
    write_markdown(root / "summary.md", title, columns, rows, notes, images, warnings, groups)
    return [root / "summary.csv", root / "summary.md", *(root / i for i in images)]


def _plan_notes(plan: dict, source: Path) -> list[str]:
    """The sweep command and its last run, from a sweep.json (none for a plain directory)."""
    notes = []
    if plan.get("config"):
        executor = plan.get("executor", "local")
        cmd = shlex.join(["python", "-m", "cnn_jax", f"--config={plan['config']}",
                          f"--workdir={source}", "--sweep", *plan.get("overrides", []),
                          *([f"--sweep_executor={executor}"] if executor != "local" else [])])
        notes.append(f"Sweep: `{cmd}`")
    last = plan.get("last_run") or {}
    if last:
        notes.append(f"Last sweep run: {last.get('started')} on {last.get('machine')}, "
                     f"{last.get('points_run')} point(s), {last.get('parallel')} at a time, "
                     f"{last.get('elapsed_s')} s wall time")
    return notes
