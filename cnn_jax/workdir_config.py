"""A run's resolved config (`DIR/config.json`, written by training) as an ml_collections config
file, so that `--mode=eval|predict` needs only the workdir.

`launch.py --workdir=DIR --mode=eval` without `--config` loads `--config=<this file>:DIR/config.json`
(`config_arg`); `--config.a.b=V` overrides then apply on top exactly as on an experiment file.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from cnn_jax import files

CONFIG_FILE = "config.json"


def _tuples(x: Any) -> Any:
    """JSON lists back to the tuples the config held (ml_collections overrides parse tuples)."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def _read(path: str) -> dict:
    stored = files.read_json(path)
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is not a readable JSON config (damaged or cut short); give "
                         f"the training command's --config=experiments/NAME.py[:ARGS] instead.")
    return stored


def get_config(path: str) -> ml_collections.ConfigDict:
    """The config stored in `path` (a run's config.json)."""
    return ml_collections.ConfigDict(_tuples(_read(path)))


def config_arg(workdir: str, mode: str) -> str:
    """`--config=<this file>:DIR/config.json` for `--mode` from DIR alone; a ValueError naming
    what is missing and the fix when DIR holds no config.json."""
    path = os.path.join(files.user_path(workdir), CONFIG_FILE)
    if not os.path.isfile(path):
        where = ("does not exist" if not os.path.isdir(os.path.dirname(path))
                 else f"holds no {CONFIG_FILE} (no training run has started there)")
        raise ValueError(
            f"--mode={mode} without --config reads the run's config from --workdir, but "
            f"{os.path.dirname(path)} {where}. Give the --workdir of a training run, or the "
            f"training command's --config=experiments/NAME.py[:ARGS] (and its overrides).")
    _read(path)  # a damaged file: one line now, not a flag-parsing error later
    return f"--config={os.path.abspath(__file__)}:{path}"
