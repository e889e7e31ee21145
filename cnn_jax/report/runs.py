"""Reading run directories for the report: what each run recorded, its status, its seed group.

A sweep directory lists its points in `sweep.json` (cnn_jax/rundir.py); a directory without one
is a single run, or a folder of runs whose axes are the config fields that differ between them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cnn_jax import files, rundir

SPLITS = ("train", "val", "test")
SEED_AXIS = "seed"
RUN_MARKERS = (rundir.RESULTS_FILE, rundir.METRICS_FILE, rundir.CONFIG_FILE, rundir.STATUS_FILE)
# Config fields that make two runs' numbers comparable; the report warns when they differ.
PROTOCOL_FIELDS = ("data.name", "data.path", "data.train_split", "data.val_split",
                   "data.eval_split", "data.image_size", "batch_size", "num_epochs",
                   "total_steps")


@dataclass
class Run:
    """One run directory (or a planned sweep point that has none yet) and what it recorded."""
    name: str
    path: Path
    axes: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None
    sweep_status: dict[str, Any] | None = None


def read_json(path: Path) -> dict | None:
    """A run's JSON file, None when missing; a corrupt one is an error naming the file."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete or repair it") from None
    return obj if isinstance(obj, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a torn last line (run killed mid-write) is skipped, and a step
    logged twice (before a kill and again after resuming) keeps its newest row."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}, line {i + 1}: not valid JSON: {line[:80]!r}") from None
        if isinstance(row, dict):
            rows.append(row)
    newest = {(r.get("split"), r.get("step")): i for i, r in enumerate(rows)}
    return [r for i, r in enumerate(rows) if newest[(r.get("split"), r.get("step"))] == i]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def load_run(path: Path, name: str | None = None, axes: dict | None = None) -> Run:
    config = read_json(path / rundir.CONFIG_FILE) or {}
    return Run(name=name or path.name, path=path, axes=dict(axes or {}), config=flatten(config),
               metrics=read_metrics(path / rundir.METRICS_FILE),
               results=read_json(path / rundir.RESULTS_FILE),
               sweep_status=read_json(path / rundir.STATUS_FILE))


def axis_name(key: str) -> str:
    return key[len(rundir.CONFIG_PREFIX):] if key.startswith(rundir.CONFIG_PREFIX) else key


def find_runs(directory: str | Path) -> list[Run]:
    """The runs under a sweep directory (in sweep order), or the directory itself if it is one."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"report directory {str(root)!r} does not exist")
    if is_run_dir(root):
        return [load_run(root)]
    plan = read_json(root / rundir.SWEEP_FILE)
    runs: list[Run] = []
    planned = set()
    if plan:
        for point in plan.get("points", []):
            name = point["name"]
            planned.add(name)
            axes = {axis_name(k): v for k, v in point.get("axes", {}).items()}
            runs.append(load_run(root / name, name, axes))
    for sub in sorted(p for p in root.iterdir() if p.name not in planned and is_run_dir(p)):
        runs.append(load_run(sub))
    if not any(is_run_dir(r.path) for r in runs):
        if plan:
            raise FileNotFoundError(
                f"no runs yet in {root}: its sweep.json plans {len(runs)} points but none has "
                "started; run them (the sweep command, or the commands of --sweep_dry_run) "
                "and report again")
        raise FileNotFoundError(
            f"no runs in {root}: a run directory holds results.json, metrics.jsonl or config.json "
            "(give a run directory, or a sweep directory with one run per subdirectory)")
    if not plan and len(runs) > 1:
        _derive_axes(runs)
    return runs


def find_runs_in(directories: Sequence[str | Path]) -> list[Run]:
    """The runs of several sweep (or run) directories, in the order given, for one report.

    Sweeps run separately (the two halves of an ablation, on different days) are reported
    together this way. Each directory keeps its own plan's axes; when any of them has no plan,
    the axes are the config fields that differ over all the runs. A point name found in two
    directories is an error naming both.
    """
    runs: list[Run] = []
    seen: dict[str, Path] = {}
    planned = True
    for directory in directories:
        root = Path(directory)
        found = find_runs(root)
        planned = planned and read_json(root / rundir.SWEEP_FILE) is not None
        for r in found:
            if r.name in seen:
                raise ValueError(
                    f"point {r.name!r} is in both {str(seen[r.name])!r} and {str(root)!r}; "
                    "report those directories separately, or rename one point directory")
            seen[r.name] = root
        runs += found
    if not planned and len(runs) > 1:
        for r in runs:
            r.axes = {}
        _derive_axes(runs)
    return runs


def _derive_axes(runs: list[Run]) -> None:
    """Without a sweep plan, the axes are the config fields whose values differ between runs."""
    keys = sorted({k for r in runs for k in r.config})
    for key in keys:
        values = {repr(r.config.get(key)) for r in runs}
        if len(values) > 1 and key not in ("workdir",):
            for r in runs:
                r.axes[key] = r.config.get(key)


def err(acc: Any) -> float | None:
    """Accuracy in [0, 1] -> error in %, None for a missing or non-finite (NaN, inf) value."""
    if acc is None or not isinstance(acc, (int, float)) or not math.isfinite(acc):
        return None
    return 100.0 * (1.0 - float(acc))


def split_rows(run: Run, split: str) -> list[dict[str, Any]]:
    return [r for r in run.metrics if r.get("split") == split and r.get("top1") is not None]


def run_status(run: Run) -> tuple[str, str]:
    """(status, error line): finished, failed, preempted, still running (left running by a
    killed sweep), incomplete (started, not finished), submitted (a queued SLURM job) or
    pending."""
    if run.results and run.results.get("status") == "finished":
        return "finished", ""
    st = run.sweep_status or {}
    if st.get("status") == "failed":
        return "failed", str(st.get("error", ""))
    if st.get("status") in ("preempted", "still running") and not run.results:
        return str(st["status"]), str(st.get("error", ""))  # stopped before it could checkpoint
    if run.results and run.results.get("status"):
        return str(run.results["status"]), str(run.results.get("error") or st.get("error", ""))
    if st.get("status") == "submitted" and not run.metrics:
        return "submitted", f"job {st.get('job_id', '?')}"
    if run.metrics or st or run.config:
        return "incomplete", ""
    return "pending", ""


def axis_keys(runs: Sequence[Run]) -> list[str]:
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.axes if k not in keys]
    return keys


def has_seeds(runs: Sequence[Run]) -> bool:
    """True when the runs have a seed axis (then the report averages over it)."""
    return SEED_AXIS in axis_keys(runs)


def seed_group(run: Run, skip: Sequence[str] = ()) -> str:
    """The name shared by the points that differ only in seed (and in the axes `skip`)."""
    axes = {k: v for k, v in run.axes.items() if k != SEED_AXIS and k not in skip}
    if not axes:
        return "all" if SEED_AXIS in run.axes else run.name
    return rundir.point_name(axes)


def seed_groups(runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
    """Runs grouped by seed_group, in first-seen order (one run per group without seeds)."""
    seeded = has_seeds(runs)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(seed_group(r) if seeded else r.name, []).append(r)
    return list(groups.items())


def protocol_mix(runs: Sequence[Run]) -> list[str]:
    """One line per protocol field (train split, epochs, ...) whose value differs between runs
    that are not told apart by a sweep axis of that name; [] when the runs are comparable."""
    axes = set(axis_keys(runs))
    lines = []
    for key in PROTOCOL_FIELDS:
        if key in axes or key.rsplit(".", 1)[-1] in axes:
            continue
        by_value: dict[str, list[str]] = {}
        for r in runs:
            if r.config and key in r.config:
                by_value.setdefault(repr(files.config_value(key, r.config[key])),
                                    []).append(r.name)
        if len(by_value) > 1:
            parts = [f"{v} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                     for v, names in by_value.items()]
            lines.append(f"{key} differs between points: " + "; ".join(parts))
    return lines
