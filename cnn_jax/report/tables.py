"""The report's numbers: one summary row per point, mean and std over seeds, CSV and Markdown.

Errors are top-1 / top-5 ERROR in percent (100 * (1 - accuracy)).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from cnn_jax.report.runs import (SPLITS, Run, axis_keys, err, has_seeds, run_status, seed_group,
                                 seed_groups, split_rows)

METRIC_COLUMNS = (
    "status", "epochs",
    "train_top1_err", "val_top1_err", "test_top1_err",
    "best_train_top1_err", "best_val_top1_err", "best_test_top1_err",
    "train_top5_err", "val_top5_err", "test_top5_err",
    "params", "macs", "wall_time_s", "img_per_s", "error",
)
# Final metrics averaged over the seeds of a group (finished points only).
SEED_METRICS = ("train_top1_err", "val_top1_err", "test_top1_err", "best_val_top1_err")
SEED_COLUMNS = ("group", "n_seeds",
                *(f"{m}_{stat}" for m in SEED_METRICS for stat in ("mean", "std")))


def summarize(run: Run) -> dict[str, Any]:
    """One summary row: final and best top-1 error per split, final top-5 error, cost, status."""
    status, error = run_status(run)
    res = run.results or {}
    final = res.get("final") or {}
    row: dict[str, Any] = {"point": run.name, "status": status, "error": error}
    for split in SPLITS:
        rows = split_rows(run, split)
        last = final.get(split) or (rows[-1] if rows else {})
        row[f"{split}_top1_err"] = err(last.get("top1"))
        row[f"{split}_top5_err"] = err(last.get("top5"))
        errs = [e for e in (err(r.get("top1")) for r in rows) if e is not None]
        if row[f"{split}_top1_err"] is not None:
            errs.append(row[f"{split}_top1_err"])
        row[f"best_{split}_top1_err"] = min(errs) if errs else None
    if res.get("best_val_top1") is not None:
        row["best_val_top1_err"] = err(res["best_val_top1"])
    epochs = res.get("epochs")
    if epochs is None and run.metrics:
        epochs = max((r.get("epoch") or 0.0) for r in run.metrics)
    row["epochs"] = epochs
    row["params"] = res.get("params")
    row["macs"] = res.get("macs")
    row["wall_time_s"] = res.get("wall_time_s")
    img_per_s = res.get("img_per_s")
    if img_per_s is None:
        speeds = sorted(r["img_per_s"] for r in split_rows(run, "train") if r.get("img_per_s"))
        img_per_s = speeds[len(speeds) // 2] if speeds else None
    row["img_per_s"] = img_per_s
    return row


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None below two values."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_summary(runs: Sequence[Run], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per seed group: its axes, n_seeds (finished points averaged), the points in it,
    and mean/std of SEED_METRICS over its finished points."""
    by_name = {row["point"]: row for row in rows}
    out = []
    for group, members in seed_groups(runs):
        done = [by_name[r.name] for r in members if by_name[r.name]["status"] == "finished"]
        entry: dict[str, Any] = {"group": group, "n_seeds": len(done), "points": len(members),
                                 "members": [r.name for r in members],
                                 "not_finished": [f"{r.name} ({by_name[r.name]['status']})"
                                                  for r in members
                                                  if by_name[r.name]["status"] != "finished"]}
        entry.update({k: v for k, v in members[0].axes.items() if k != "seed"})
        for metric in SEED_METRICS:
            values = [row[metric] for row in done if row.get(metric) is not None]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_std(values)
        out.append(entry)
    return out


def table(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of summary.csv: one row per point; with a seed axis, each row also
    carries its group's n_seeds and mean/std columns."""
    axes = axis_keys(runs)
    rows = []
    for r in runs:
        row = summarize(r)
        row.update({k: r.axes.get(k) for k in axes})
        rows.append(row)
    columns = ["point", *axes, *METRIC_COLUMNS]
    if has_seeds(runs):
        groups = {g["group"]: g for g in seed_summary(runs, rows)}
        for r, row in zip(runs, rows):
            g = groups[seed_group(r)]
            row.update({c: g.get(c) for c in SEED_COLUMNS})
        columns += list(SEED_COLUMNS)
    return columns, rows


def cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if column.endswith(("_err", "_mean", "_std")):
            return f"{value:.2f}"
        if column in ("params", "macs"):
            return f"{value:.4g}"
        if column in ("epochs",):
            return f"{value:.3g}"
        return f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool) and column in ("params", "macs"):
        return _human(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else
                                 round(row[c], 4) if isinstance(row[c], float) else
                                 cell(row[c], "") if isinstance(row[c], (list, tuple)) else row[c])
                             for c in columns})


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]],
                    render=cell) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [render(row.get(c), c).replace("|", "\\|")[:120] for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_markdown(groups: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[str]:
    """The '## Mean ± std over seeds' section: one row per group."""
    metrics = [m for m in SEED_METRICS if any(g.get(f"{m}_mean") is not None for g in groups)]
    columns = ["group", *[a for a in axes if a != "seed"], "n_seeds", *metrics, "not finished"]
    rows = []
    for g in groups:
        row = {**g, "n_seeds": f"{g['n_seeds']} of {g['points']}",
               "not finished": ", ".join(g["not_finished"])}
        row.update({m: _pm(g.get(f"{m}_mean"), g.get(f"{m}_std")) for m in metrics})
        rows.append(row)
    return (["", "## Mean ± std over seeds", "",
             "Final top-1 error in % over the finished seeds of each group (std: sample standard "
             "deviation, n - 1; none with one seed).", ""]
            + _markdown_table(columns, rows))


def write_markdown(path: Path, title: str, columns: list[str], rows: list[dict[str, Any]],
                   notes: Sequence[str] = (), images: Sequence[str] = (),
                   warnings: Sequence[str] = (),
                   seed_groups_rows: Sequence[dict[str, Any]] = ()) -> None:
    hidden = set(SEED_COLUMNS) - {"group"}  # the seed table shows them once per group
    keep = [c for c in columns if c not in hidden and (
        c in ("point", "status") or any(r.get(c) not in (None, "") for r in rows))]
    lines = [f"# {title}", ""]
    lines += [f"{n}  " for n in notes]
    if warnings:
        lines += ["", "**Mixed protocols: these points were not trained the same way, so their "
                  "numbers are not directly comparable.**", ""]
        lines += [f"- {w}" for w in warnings]
    lines += ["", "Errors are top-1 / top-5 error in % (100 - accuracy); `best_*` is the lowest "
              "over the run's evaluations.", ""]
    lines += _markdown_table(keep, rows)
    if seed_groups_rows:
        axes = [c for c in keep if c not in ("point", *METRIC_COLUMNS, "group")]
        lines += seed_markdown(seed_groups_rows, axes)
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed points", ""]
        lines += [f"- `{r['point']}`: {r.get('error') or '(no error line)'}" for r in failed]
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(i).stem}]({i})" for i in images]
    path.write_text("\n".join(lines) + "\n")
