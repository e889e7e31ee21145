"""Fine-tuning: start from another run's checkpoint (`config.init_from`), freeze some parameters
(`config.freeze`).

`init_from=DIR[:STEP]` takes the parameters and batch statistics of DIR's newest checkpoint (or
of STEP): every array whose path and shape match this model's is restored, the rest (a new head,
a changed layer) keeps its fresh initialisation, and the log lists which is which. The optimizer
state, the step and the PRNG key start fresh; the source's raw parameters are used, not its EMA.
`freeze` holds regular expressions searched in parameter paths such as `conv1/kernel`; matching
parameters get no update (`optax.set_to_zero` under `optax.multi_transform`). Batch statistics
of frozen layers still follow the data in train mode.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
import optax

from cnn_jax import files
from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import quiet

FROZEN, TRAINABLE = "frozen", "trainable"
VARIABLES = ("params", "batch_stats")


def _paths(tree: Any) -> dict[str, Any]:
    return {ckpt._path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def parse_init_from(value: str) -> tuple[str, int | None]:
    """'DIR' or 'DIR:STEP' -> (absolute DIR, STEP or None)."""
    path, sep, tail = value.rpartition(":")
    if sep and tail.isdigit():
        value, step = path, int(tail)
    else:
        step = None
    return files.user_path(value), step


@quiet.orbax_read_only()
def read_source(init_from: str) -> tuple[dict, dict, int, str]:
    """(state tree, meta, step, run directory) of the checkpoint `init_from` names.

    Errors name the value and what is wrong: no such directory, no checkpoint (at STEP), or a
    checkpoint that does not load or fails its checksums.
    """
    directory, step = parse_init_from(init_from)
    field = f"config.init_from={init_from!r}"
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{field}: directory {directory} does not exist; give the "
                                f"--workdir of the run to start from, as DIR or DIR:STEP.")
    none = FileNotFoundError(f"{field}: no checkpoint in "
                             f"{os.path.join(directory, ckpt.CHECKPOINT_SUBDIR)}; train that run "
                             f"first, or point init_from at another run directory.")
    if not os.path.isdir(os.path.join(directory, ckpt.CHECKPOINT_SUBDIR)):
        raise none
    store = ckpt.CheckpointStore(directory, read_only=True)
    try:
        steps = store.steps()
        if not steps:
            raise none
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"{field}: {directory} has no checkpoint at step {step}; it "
                                    f"has steps {steps}.")
        meta = store.read_meta(step)
        tree = store.read_state(step, meta, None)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read means a damaged checkpoint
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise ckpt.CheckpointError(
            f"{field}: checkpoint step {step} in {store.directory} is damaged ({reason}); "
            f"choose another step with init_from=DIR:STEP (steps {steps}).") from None
    finally:
        store.close()
    return tree, meta, step, directory


def merge(fresh: dict, source: dict) -> tuple[dict, list[str], list[str], list[str]]:
    """Overlays `source` on `fresh` where path and shape match.

    Returns (merged tree, restored paths, fresh paths with the reason, source paths that this
    model does not have).
    """
    src = _paths(source)
    restored, kept = [], []

    def pick(path, x):
        key = ckpt._path_str(path)
        y = src.get(key)
        if y is not None and tuple(np.shape(y)) == tuple(np.shape(x)):
            restored.append(key)
            return np.asarray(y, dtype=np.asarray(x).dtype)
        kept.append(f"{key} {tuple(np.shape(x))}" + (
            f" (source: {tuple(np.shape(y))})" if y is not None else " (not in source)"))
        return x

    merged = jax.tree_util.tree_map_with_path(pick, fresh)
    unused = sorted(set(src) - set(_paths(fresh)))
    return merged, restored, kept, unused


def _modules(paths: list[str]) -> str:
    """'params/conv1/kernel', 'params/conv1/bias' -> 'conv1' (the layers, in order)."""
    paths = sorted(paths, key=lambda p: not p.startswith("params/"))  # stable: params first
    names = dict.fromkeys(p.split("/", 1)[1].rsplit("/", 1)[0] for p in paths if "/" in p)
    return ", ".join(names) or "-"


def init_from_checkpoint(setup: Any, state: Any) -> Any:
    """`state` (a fresh run's) with the parameters and BN statistics of `config.init_from`."""
    config = setup.config
    init_from = str(config.init_from)
    tree, meta, step, directory = read_source(init_from)
    host = setup.strategy.host_state(state)
    fresh = {"params": host.params, "batch_stats": host.batch_stats}
    source = {k: tree.get(k, {}) for k in VARIABLES}
    merged, restored, kept, unused = merge(fresh, source)
    src_model = (meta.get("config") or {}).get("model", {}).get("name", "?")
    weights = _paths(merged["params"])
    if not any(p.startswith("params/") and np.ndim(weights[p[len("params/"):]]) > 1
               for p in restored):  # a coincidental bias or BN scale alone is no match
        mine = {k: v for k, v in _paths(fresh["params"]).items() if np.ndim(v) > 1}
        theirs = {k: v for k, v in _paths(source["params"]).items() if np.ndim(v) > 1}
        want, have = (", ".join(f"{k} {tuple(np.shape(v))}" for k, v in list(d.items())[:3])
                      for d in (mine, theirs))
        raise ValueError(
            f"config.init_from={init_from!r}: no weight of its checkpoint (step {step}, model "
            f"{src_model}) has the path and shape of one of this {config.model.name}'s: here "
            f"{want} ...; there {have} .... Start from a run of the same architecture.")
    if jax.process_index() == 0:
        print(f"init_from: step {step} of {directory} (model {src_model}): restored "
              f"{len(restored)} arrays (params and batch statistics) of {_modules(restored)}; "
              f"optimizer state and step start fresh.", flush=True)
        if kept:
            print(f"init_from: initialised fresh {len(kept)} arrays: {', '.join(kept)}",
                  flush=True)
        if unused:
            print(f"init_from: not used from the source: {', '.join(unused)}", flush=True)
    ema, ema_stats = host.ema_params, host.ema_batch_stats
    if ema is not None:  # the EMA starts from the restored weights and their statistics
        ema = jax.tree.map(np.copy, merged["params"])
        ema_stats = jax.tree.map(np.copy, merged["batch_stats"])
    host = host.replace(params=merged["params"], batch_stats=merged["batch_stats"],
                        ema_params=ema, ema_batch_stats=ema_stats)
    return setup.strategy.place_state(host)


def freeze_labels(params: Any, patterns: Any) -> Any:
    """FROZEN/TRAINABLE per parameter; a pattern that matches no parameter path is an error."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(str(p)))
        except re.error as e:
            raise ValueError(f"config.freeze pattern {p!r} is not a regular expression "
                             f"({e}).") from None
    paths = list(_paths(params))
    unmatched = [p for p, c in zip(patterns, compiled) if not any(c.search(x) for x in paths)]
    if unmatched:
        raise ValueError(
            f"config.freeze pattern(s) {', '.join(map(repr, unmatched))} match no parameter of "
            f"this model; its parameter paths are: {', '.join(paths[:12])}"
            f"{' ...' if len(paths) > 12 else ''} (e.g. --config.freeze='(\"^conv1/\",)').")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: FROZEN if any(c.search(ckpt._path_str(path)) for c in compiled)
        else TRAINABLE, params)


def with_frozen(tx: optax.GradientTransformation, params: Any,
                patterns: Any) -> optax.GradientTransformation:
    """`tx` for the trainable parameters, no update at all for the frozen ones."""
    labels = freeze_labels(params, patterns)
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)
