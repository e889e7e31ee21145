"""The report's plots: error curves per group (train thin, validation bold) and error vs depth.

Points that differ only in seed are drawn as one mean curve with a min-max band (and as a mean
with ±std error bars against depth). A failed point is drawn too: its curve up to where it
stopped, an x at its last value, and "failed" in its legend entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from cnn_jax import rundir
from cnn_jax.report.runs import (SEED_AXIS, Run, axis_keys, err, run_status, seed_group,
                                 split_rows)
from cnn_jax.report.tables import mean_std


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def choose_group_axis(runs: Sequence[Run]) -> str | None:
    """The axis that splits the curves into figures: a bool (residual) or the smallest categorical."""
    varying = {}
    for key in axis_keys(runs):
        if key == SEED_AXIS:
            continue  # seeds are averaged, never split into figures
        values = {repr(r.axes.get(key)) for r in runs}
        if len(values) > 1:
            varying[key] = [r.axes.get(key) for r in runs]
    if len(varying) < 2:
        return None
    bools = [k for k, vs in varying.items() if all(isinstance(v, bool) for v in vs)]
    if bools:
        return bools[0]
    categorical = [k for k, vs in varying.items()
                   if not all(isinstance(v, (int, float)) for v in vs)]
    if categorical:
        return min(categorical, key=lambda k: len({repr(v) for v in varying[k]}))
    return list(varying)[-1]


def _figures(runs: Sequence[Run], axis: str | None) -> list[tuple[str, list[Run]]]:
    if axis is None:
        return [("", list(runs))]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(rundir.point_name({axis: r.axes.get(axis)}), []).append(r)
    return list(groups.items())


def _lines(members: Sequence[Run], skip: str | None) -> list[tuple[str, list[Run]]]:
    """The curves of one figure: one per seed group (one per point without seeds)."""
    seeded = any(SEED_AXIS in r.axes for r in members)
    groups: dict[str, list[Run]] = {}
    for r in members:
        if seeded:
            key = seed_group(r, skip=(skip,) if skip else ())
        else:
            axes = {k: v for k, v in r.axes.items() if k != skip}
            key = rundir.point_name(axes) if axes else r.name
        groups.setdefault(key, []).append(r)
    return list(groups.items())


def curve(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        x = r.get("epoch", r.get("step"))
        e = err(r.get("top1"))
        if x is not None and e is not None:
            xs.append(float(x))
            ys.append(e)
    return xs, ys


def _mean_curve(curves: list[tuple[list[float], list[float]]]):
    """(x, mean, min, max) over the x values every curve has (seeds of one recipe log alike; a
    seed that is further along than the others is cut to their length)."""
    curves = [c for c in curves if c[0]]
    if not curves:
        return [], [], [], []
    common = sorted(set.intersection(*(set(x) for x, _ in curves)))
    maps = [dict(zip(x, y)) for x, y in curves]
    ys = [[m[x] for m in maps] for x in common]
    return common, [sum(v) / len(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def _draw_failed(ax, run: Run, color: str, eval_split: str, label: str) -> None:
    """A failed point: its curves (dotted), an x at the last value, the error in the legend."""
    status, error = run_status(run)
    last = None
    for split, lw in (("train", 0.8), (eval_split, 2.0)):
        xs, ys = curve(split_rows(run, split))
        if xs:
            ax.plot(xs, ys, color=color, lw=lw, ls=":", alpha=0.8)
            ax.plot(xs[-1:], ys[-1:], "x", color=color, ms=9, mew=2)
            last = (xs[-1], ys[-1])
    where = "" if last else ", before its first log"
    ax.plot([], [], "x", color=color, ms=9, mew=2, ls=":",
            label=f"{label} ({status}{where}: {_short(error) or 'no error line'})")


def plot_curves(runs: Sequence[Run], out_dir: Path, group_axis: str | None) -> list[str]:
    """Train (thin) and validation (bold) top-1 error against epoch, one figure per group."""
    plt = pyplot()
    written = []
    for group, members in _figures(runs, group_axis):
        eval_split = "val" if any(split_rows(r, "val") for r in members) else "test"
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for i, (label, line_runs) in enumerate(_lines(members, group_axis)):
            color = f"C{i % 10}"
            failed = [r for r in line_runs if run_status(r)[0] == "failed"]
            rest = [r for r in line_runs if r not in failed]
            ok = [r for r in rest if r.metrics]  # a pending seed has no curve to average
            # The mean is over the finished seeds, as in the summary's mean ± std table; a seed
            # still running or preempted is drawn on its own (dotted), not cut into the mean.
            finished = [r for r in ok if run_status(r)[0] == "finished"]
            if finished:
                failed += [r for r in ok if r not in finished]
                ok = finished
            for r in failed:
                _draw_failed(ax, r, color, eval_split,
                             label if len(line_runs) == 1 else r.name)
                drawn = True
            train = _mean_curve([curve(split_rows(r, "train")) for r in ok])
            val = _mean_curve([curve(split_rows(r, eval_split)) for r in ok])
            if not (train[0] or val[0]):
                continue
            drawn = True
            if train[0]:
                ax.plot(train[0], train[1], color=color, lw=0.8, alpha=0.7)
            if val[0]:
                ax.plot(val[0], val[1], color=color, lw=2.4,
                        marker="o" if len(val[0]) < 3 else None)
            if len(ok) > 1:
                for x, _, lo, hi in (train, val):
                    if x:
                        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
            statuses = {run_status(r)[0] for r in ok}
            note = f" (mean of {len(ok)} seeds, band min-max)" if len(ok) > 1 else ""
            if statuses != {"finished"}:
                note += f" ({', '.join(sorted(statuses))})"
            ax.plot([], [], color=color, lw=2.4, label=label + note)
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 error (%)")
        title = f"thin: train, bold: {eval_split}"
        ax.set_title(f"{group}  ({title})" if group else title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        name = f"curves_{group}.png" if group else "curves.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def plot_depth(runs: Sequence[Run], rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Final train (dashed) and eval (solid) top-1 error against the `depth` axis, per group:
    the mean over finished seeds with ±std error bars; failed points as an x at their last value.
    """
    if "depth" not in axis_keys(runs):
        return []
    depths = {r.axes.get("depth") for r in runs}
    if len(depths) < 2 or not all(isinstance(d, (int, float)) for d in depths):
        return []
    plt = pyplot()
    by_name = {row["point"]: row for row in rows}
    others = [k for k in axis_keys(runs) if k not in ("depth", SEED_AXIS)]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        key = rundir.point_name({k: r.axes.get(k) for k in others}) if others else ""
        groups.setdefault(key, []).append(r)
    has_val = any(row.get("val_top1_err") is not None for row in rows)
    eval_col, eval_name = ("val_top1_err", "val") if has_val else ("test_top1_err", "test")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    drawn = failed_drawn = False
    for i, (key, members) in enumerate(groups.items()):
        color = f"C{i % 10}"
        for col, style, what in (("train_top1_err", "--", "train"), (eval_col, "-", eval_name)):
            pts = []
            for depth in sorted({r.axes["depth"] for r in members}):
                values = [by_name[r.name][col] for r in members if r.axes["depth"] == depth
                          and by_name[r.name]["status"] == "finished"
                          and by_name[r.name].get(col) is not None]
                if values:
                    mean, std = mean_std(values)
                    pts.append((depth, mean, std or 0.0))
            if pts:
                drawn = True
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e if any(e) else None, fmt=style, color=color,
                            marker="o", capsize=3, label=f"{key or 'all'} {what}")
            for r in members:
                row = by_name[r.name]
                if row["status"] == "failed" and row.get(col) is not None:
                    ax.plot([r.axes["depth"]], [row[col]], "x", color=color, ms=9, mew=2,
                            label=None if failed_drawn else "x: failed point, last value")
                    failed_drawn = drawn = True
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("final top-1 error (%)")
    bars = ", bars: ±std over seeds" if any(SEED_AXIS in r.axes for r in runs) else ""
    ax.set_title(f"final error vs depth (dashed: train, solid: {eval_name}{bars})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "error_vs_depth.png", dpi=110)
    plt.close(fig)
    return ["error_vs_depth.png"]
