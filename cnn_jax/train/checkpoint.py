"""Orbax checkpoints of the train state, with the resolved config, integrity checks and fallback.

Layout: `DIR/checkpoints/<step>/{state,meta}`; `state` is the train state as nested dicts of
arrays (Orbax/tensorstore, never pickle), `meta` a JSON item with the config, the step, the
epoch, the elapsed wall time and a CRC32 of every array so that a damaged checkpoint is noticed.
"""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cnn_jax import files
from cnn_jax.train import save_failures

CHECKPOINT_SUBDIR = "checkpoints"
QUARANTINE_SUBDIR = "checkpoints_corrupt"
FORMAT_VERSION = 1

# The one list of what may change when a run resumes. Everything else that shapes the
# optimisation trajectory (model, data and augmentation, batch size, seed, optimizer and schedule,
# run length, parallel mode, dtype, ...) must match the checkpoint's stored config, and so must the
# training data's fingerprint (DATA_FACTS); `--force` overrides, `--extend` (EXTEND_FIELDS) makes a
# finished or stopped run longer.
# Fields that only drive how the run is logged, evaluated, saved, compiled or where caches live:
RESUME_SAFE_FIELDS = (
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "keep_best_metric", "async_checkpoints", "compilation_cache", "steps_per_dispatch",
    "eval_batch_size", "eval_flip_tta", "data.eval_split", "data.val_split",
    "data.max_bad_fraction", "data.cache_dir", "data.download", "data.tfds_data_dir",
    "divergence_factor", "divergence_param_factor",
)
# Fields `--extend` lets grow (the run gets longer; its schedule is rebuilt for the new length).
EXTEND_FIELDS = ("total_steps", "num_epochs")
# Facts about the training data stored in every checkpoint's meta and compared on resume.
DATA_FACTS = ("fingerprint", "num_train_examples")


class CheckpointError(RuntimeError):
    """No usable checkpoint although the workdir has some, or a stored config conflicts."""


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def checksums(tree: Any) -> dict[str, str]:
    """CRC32, dtype and shape of every array of a host tree, keyed by its path."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        x = np.ascontiguousarray(x)
        out[_path_str(path)] = f"{zlib.crc32(x.view(np.uint8).reshape(-1)):08x}:{x.dtype}:{x.shape}"
    return out


def _verify(tree: Any, expected: dict[str, str]) -> None:
    got = checksums(tree)
    bad = sorted(k for k in expected if got.get(k) != expected[k])
    missing = sorted(set(expected) - set(got))
    if bad or missing:
        raise CheckpointError(
            f"checksum mismatch in {len(bad)} array(s) (e.g. {', '.join(bad[:3])}): the files "
            f"were damaged after the save")


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and tuples compare as lists."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def config_differences(stored: dict, current: dict, allowed: tuple[str, ...] = ()
                       ) -> list[tuple[str, Any, Any]]:
    """(field, stored value, new value) for every field outside RESUME_SAFE_FIELDS (and
    `allowed`) that differs.

    A field present on one side only is a difference under `model.` (experiments set model
    fields explicitly) but not elsewhere: there it is a default added to (or removed from)
    experiments/default.py since the run started, whose default keeps the old behaviour. A
    model field on one side only that holds its model's default (as the launcher fills them,
    see cnn_jax/model_config.py) equals its absence.
    """
    a, b = ({k: files.config_value(k, v) for k, v in flatten_config(c).items()}
            for c in (stored, current))
    absent = "<absent>"
    keys = sorted((set(a) & set(b)) | {k for k in set(a) ^ set(b) if k.startswith("model.")})
    skip = set(RESUME_SAFE_FIELDS) | set(allowed)
    return [(k, a.get(k, absent), b.get(k, absent)) for k in keys
            if k not in skip and a.get(k, absent) != b.get(k, absent)
            and ((k in a and k in b) or _differs_from_default(k, a if k in a else b))]


def _differs_from_default(key: str, flat: dict) -> bool:
    """Whether `flat[key]` (a model field) differs from its model's default."""
    from cnn_jax.model_config import model_field_default
    known, default = model_field_default(str(flat.get("model.name", "")), key[len("model."):],
                                         str(flat.get("model.module", "") or ""))
    return not known or _as_json(default) != _as_json(flat[key])


def _as_json(value: Any) -> Any:
    """Tuples, nested too, as lists (the form a stored JSON config has)."""
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def data_differences(stored: dict | None, current: dict) -> list[tuple[str, Any, Any]]:
    """("training data <fact>", stored, new) for each of DATA_FACTS that differs.

    Checkpoints written before the facts were stored have none: nothing to compare.
    """
    stored = stored or {}
    return [(f"training data {k}", stored[k], current.get(k)) for k in DATA_FACTS
            if k in stored and stored[k] != current.get(k)]


class CheckpointStore:
    """An Orbax CheckpointManager that keeps the last `keep` checkpoints plus the best one."""

    def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = "",
                 async_save: bool = True, read_only: bool = False):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}.")
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(keep)]
        if best_metric:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], reverse=best_metric == "loss", n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"),
                                             options=options)
        self._started: int | None = None  # the step of the last save started
        if not read_only:  # a failed save: one ERROR line, not Orbax's threads' tracebacks
            save_failures.condense_orbax_errors()
            save_failures.reset()

    def steps(self) -> list[int]:
        """Complete checkpoints (Orbax renames a save into place only once it is written)."""
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
        if not isinstance(meta, dict) or "config" not in meta or "checksums" not in meta:
            raise CheckpointError("its meta item lacks the config or checksums")
        return meta

    def read_state(self, step: int, meta: dict, target: Any | None) -> Any:
        """The state tree of `step` as numpy arrays, verified against the stored checksums."""
        args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
        tree = self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        tree = jax.tree.map(np.asarray, tree)
        _verify(tree, meta["checksums"])
        return tree

    def save(self, step: int, host_tree: Any, meta: dict, metrics: dict | None = None) -> None:
        """Starts an (asynchronous) save; metrics, when given, rank it for `keep_best_metric`."""
        if step in self.manager.all_steps():
            return
        meta = dict(meta, step=int(step), format=FORMAT_VERSION, checksums=checksums(host_tree))
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_tree), meta=ocp.args.JsonSave(meta)),
                metrics=metrics, force=True)
        except Exception as e:  # noqa: BLE001 - also an earlier asynchronous save's failure
            earlier = self._started is not None and self._started not in self.manager.all_steps()
            raise self._save_error(e, self._started if earlier else step) from e
        self._started = int(step)

    def wait(self) -> None:
        """Blocks until the asynchronous saves are on disk; a failed one raises CheckpointError."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(e, self._started) from e

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception as e:  # noqa: BLE001 - a failed save was (or will be) reported by wait()
            logging.warning("Closing the checkpoint manager: %s", e)

    def _save_error(self, e: Exception, step: int | None) -> CheckpointError:
        step = save_failures.failed_step(e, self.directory, step)
        save_failures.mark_failed()
        what = f"step {step}" if step is not None else "a checkpoint"
        cause = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        return CheckpointError(
            f"Saving {what} in {self.directory} failed ({cause}). The complete checkpoints "
            f"before it are intact; fix the cause (disk space, permissions) and re-run the same "
            f"command to resume.")

    def quarantine(self, step: int) -> str:
        """Moves a damaged checkpoint out of the way (kept for inspection, never deleted)."""
        src = os.path.join(self.directory, str(step))
        dst_root = os.path.join(os.path.dirname(self.directory), QUARANTINE_SUBDIR)
        os.makedirs(dst_root, exist_ok=True)
        dst = os.path.join(dst_root, str(step))
        n = 1
        while os.path.exists(dst):
            dst, n = os.path.join(dst_root, f"{step}.{n}"), n + 1
        shutil.move(src, dst)
        self.manager.reload()
        return dst


def newest_readable(store: CheckpointStore, target: Any | None) -> tuple[Any, dict, int, list]:
    """(state tree, meta, step, [(bad step, reason), ...]) of the newest checkpoint that loads.

    Damaged checkpoints are skipped with a warning naming what was wrong. Raises CheckpointError
    when checkpoints exist but none loads: a run must never silently start from scratch.
    """
    problems: list[tuple[int, str]] = []
    steps = store.steps()
    for step in reversed(steps):
        try:
            meta = store.read_meta(step)
            tree = store.read_state(step, meta, target)
            return tree, meta, step, problems
        except Exception as e:  # noqa: BLE001 - any failure to read means "damaged", try older
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
            logging.warning("Checkpoint %s/%d is unreadable (%s); falling back to the previous "
                            "complete checkpoint.", store.directory, step, reason)
            print(f"WARNING: checkpoint step {step} in {store.directory} is unreadable "
                  f"({reason}); trying the previous one.", flush=True)
            problems.append((step, reason))
    if steps:
        details = "; ".join(f"step {s}: {r}" for s, r in problems)
        raise CheckpointError(
            f"{store.directory} holds checkpoints (steps {steps}) but none could be read "
            f"({details}). Refusing to start from scratch over them: move that directory away "
            f"or use another --workdir.")
    return None, {}, -1, problems


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the complete checkpoints in `workdir` ([] when there are none)."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_SUBDIR)):
        return []
    return CheckpointStore(workdir, read_only=True).steps()


def load_latest(workdir: str, use_ema: bool = True) -> tuple[dict, dict, int]:
    """(variables {'params', 'batch_stats'}, config dict, step) of the newest good checkpoint.

    For tools (evaluation, prediction, filter plots). Uses the EMA of the parameters, with the
    EMA of the BatchNorm statistics, when the run kept one and `use_ema`. Raises
    FileNotFoundError when `workdir` has no checkpoint.
    """
    if not checkpoint_steps(workdir):
        raise FileNotFoundError(
            f"No checkpoint in {os.path.join(workdir, CHECKPOINT_SUBDIR)}: train first with "
            f"`python launch.py --config=... --workdir={workdir}`.")
    store = CheckpointStore(workdir, read_only=True)
    tree, meta, step, _ = newest_readable(store, None)
    ema = use_ema and "ema_params" in tree
    params = tree["ema_params"] if ema else tree["params"]
    stats = tree.get("ema_batch_stats" if ema and "ema_batch_stats" in tree else "batch_stats", {})
    variables = {"params": params, "batch_stats": stats}
    return variables, meta["config"], step


def read_json(path: str) -> dict | None:
    """A JSON file's object, or None when it is missing or unreadable."""
    return files.read_json_object(path)


def write_json(path: str, obj: Any) -> None:
    """Writes strict JSON atomically (temporary file, then rename).

    NaN and infinities are not JSON: they are written as null, with a warning naming each.
    """
    replaced: list[str] = []
    obj = strict_json_value(obj, replaced)
    if replaced:
        print(f"WARNING: {os.path.basename(path)}: not a finite number, written as null: "
              + ", ".join(replaced[:10]) + (" ..." if len(replaced) > 10 else ""), flush=True)
    files.write_json(path, obj, allow_nan=False)


def strict_json_value(x: Any, replaced: list[str] | None = None, where: str = "") -> Any:
    """`x` as plain JSON types (NumPy values and tuples converted), non-finite floats as None.

    The dotted path of each replaced value (with the value) is appended to `replaced`.
    """
    if isinstance(x, dict):
        return {k: strict_json_value(v, replaced, f"{where}.{k}" if where else str(k))
                for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json_value(v, replaced, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, (np.generic, np.ndarray)):
        return strict_json_value(x.tolist(), replaced, where)
    if isinstance(x, float) and not np.isfinite(x):
        if replaced is not None:
            replaced.append(f"{where or 'value'}={x}")
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise TypeError(f"not JSON serialisable: {type(x).__name__} at {where or 'top level'}")

