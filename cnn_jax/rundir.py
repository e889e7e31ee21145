"""What a run directory and a sweep directory hold: file names, point names, status reading.

Shared by the engine's writers, the sweep runner and the report (which import this module, never
each other). A sweep directory holds `sweep.json` (the plan) and one run directory per point,
named by `point_name`; a run directory holds `config.json`, `metrics.jsonl`, `results.json` and,
under a sweep, `sweep_status.json` and `sweep_log.txt`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cnn_jax import files

SWEEP_FILE = "sweep.json"
STATUS_FILE = "sweep_status.json"
LOG_FILE = "sweep_log.txt"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CONFIG_PREFIX = "config."  # a sweep axis that is a config field, not an experiment arg


read_json = files.read_json_object  # the object at `path`, None when missing, torn or not one


def write_json(path: Path, obj: dict) -> None:
    """Writes `obj` atomically (a reader never sees half a file), keys in their order."""
    files.write_json(path, obj, sort_keys=False)


def is_finished(run_dir: Path) -> bool:
    """True when the run's results.json says status finished."""
    results = read_json(Path(run_dir) / RESULTS_FILE)
    return bool(results) and results.get("status") == "finished"


def read_status(run_dir: Path) -> dict | None:
    """The sweep's record of a point (running / finished / failed with its error line)."""
    return read_json(Path(run_dir) / STATUS_FILE)


def format_value(value: Any, exact: bool = True) -> str:
    """A value as an experiment arg (exact: floats round-trip) or, inexact, as part of a name."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value) if exact else f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "+".join(format_value(v, exact) for v in value)
    return str(value)


def split_arg(arg: str | None) -> list[tuple[str, str | None]]:
    """Splits 'runlocal,depth=20' into [('runlocal', None), ('depth', '20')], keeping order."""
    items = []
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        items.append((key.strip(), value.strip() if eq else None))
    return items


def point_name(overrides: dict[str, Any]) -> str:
    """Names a point from its axes: {'depth': 20, 'residual': True} -> 'depth20_residual'.

    Numbers join their key (depth20), True gives the key and False 'no' + key, strings give
    key-value (norm-batch); a `config.a.b` key contributes only its last part.
    """
    parts = []
    for key, value in overrides.items():
        short = key.rsplit(".", 1)[-1]
        if isinstance(value, bool):
            parts.append(short if value else f"no{short}")
        elif isinstance(value, (int, float)):
            parts.append(f"{short}{format_value(value, exact=False)}")
        else:
            parts.append(f"{short}-{format_value(value, exact=False)}")
    name = "_".join(parts) or "default"
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", name)
