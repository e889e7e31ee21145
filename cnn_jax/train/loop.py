"""The training loop: `train_and_evaluate(config, workdir)`, plus checkpoint evaluation.

The loop owns all I/O (data, checkpoints, metrics); the steps it calls are pure functions.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import statistics
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import files, workdir_lock
from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import metrics as metrics_lib
from cnn_jax.train import finetune, optim, parallel, steps
from cnn_jax.train.state import TrainState, add_ema_batch_stats, create_train_state, \
    init_variables, state_to_tree, tree_to_state
from cnn_jax.validate import check_choice, check_number

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
EVAL_FILE = "eval_metrics.json"
# float16 is not offered: without loss scaling small gradients flush to zero (and large
# activations overflow), so it would train silently worse; see validate_config.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BEST_METRICS = ("top1", "top5", "loss")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped before saving bad state."""


# ----------------------------------------------------------------------------------------------
# Setup shared by training, evaluation and prediction.


def configure_jax(config: ml_collections.ConfigDict) -> None:
    """Process-wide JAX settings a run asks for: compilation cache and the PRNG mode."""
    enable_compilation_cache(bool(config.get("compilation_cache", True)))
    # Non-partitionable threefry compiles random-number code several times faster on the CPU;
    # random arrays are only ever replicated here (data parallelism), so nothing is lost.
    jax.config.update("jax_threefry_partitionable",
                      bool(config.get("threefry_partitionable", False)))


def enable_compilation_cache(enabled: bool) -> str | None:
    """Turns on JAX's persistent compilation cache ($CNN_JAX_CACHE or ~/.cache/cnn_jax/jax_cache).

    A re-launched run then loads its compiled steps from disk instead of compiling them again.
    """
    if not enabled:
        return None
    return files.enable_compilation_cache(
        os.environ.get("CNN_JAX_CACHE") or "~/.cache/cnn_jax/jax_cache")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Clear errors, naming the field, for values that would otherwise fail deep inside JAX."""
    check_number("batch_size", config.batch_size, low=1, integer=True)
    check_number("eval_batch_size", config.get("eval_batch_size", -1), integer=True)
    for field in ("log_every_steps", "steps_per_dispatch", "keep_checkpoints"):
        check_number(field, config[field], low=1, integer=True)
    for field in ("total_steps", "eval_every_steps", "checkpoint_every_steps"):
        check_number(field, config[field], integer=True)
    check_number("seed", config.seed, low=0, high=2**32 - 1, integer=True)  # data order: 32 bits
    if config.total_steps <= 0:
        check_number("num_epochs", config.num_epochs, low=0, low_open=True)
    check_number("ema_decay", config.ema_decay, low=0, high=1, high_open=True)
    check_number("label_smoothing", config.label_smoothing, low=0, high=1, high_open=True)
    check_number("grad_clip_norm", config.grad_clip_norm)
    check_number("aux_loss_weight", config.get("aux_loss_weight", 0.3), low=0)
    if config.dtype == "float16":
        raise ValueError(
            "config.dtype='float16' is refused: this engine has no loss scaling, without which "
            "float16 gradients below 6e-8 flush to zero and the run trains silently worse. Use "
            "--config.dtype=bfloat16 (float32's exponent range, the same memory and speed on "
            "GPUs/TPUs with bfloat16) or float32.")
    check_choice("dtype", config.dtype, DTYPES)
    check_choice("parallel", config.parallel, parallel.PARALLEL_MODES)
    if config.keep_best_metric:
        check_choice("keep_best_metric", config.keep_best_metric, BEST_METRICS)
    for field in ("async_checkpoints", "compilation_cache", "eval_flip_tta"):
        if not isinstance(config.get(field, True), bool):
            raise ValueError(f"config.{field} must be True or False, got {config[field]!r}.")
    optim.validate(config)
    if config.data.get("on_device", False) and config.parallel != "jit":
        raise ValueError("config.data.on_device=True needs config.parallel='jit' "
                         f"(got {config.parallel!r}).")


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON types (tuples become lists)."""
    import json
    return json.loads(config.to_json_best_effort())


def split_size(info: Any, split: str) -> int:
    """Examples in a split spec such as 'train' or 'train[:90%]'."""
    sizes = dict(info.num_examples)
    if split in sizes:
        return int(sizes[split])
    from cnn_jax.data import splits
    return int(splits.num_examples(split, sizes, f"data set {info.name!r}"))


def input_shape(config: ml_collections.ConfigDict, info: Any) -> tuple[int, ...]:
    """(H, W, C) of the images the model sees."""
    shape = tuple(int(d) for d in info.image_shape)
    size = int(config.data.get("image_size", -1))
    if size > 0 and len(shape) == 3:
        shape = (size, size, shape[2])
    return shape


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The model named by config.model.name with its fields (the registry validates them)."""
    from cnn_jax import models
    fields = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "bn_sync")}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if config.parallel == "pmap" and config.model.get("bn_sync", True):
        fields["bn_axis_name"] = parallel.PMAP_AXIS
    return models.build(config.model.name, num_classes=num_classes,
                        dtype=DTYPES[config.dtype], **fields)


class Setup:
    """Everything derived from the config before any step runs."""

    def __init__(self, config: ml_collections.ConfigDict, for_training: bool = True):
        from cnn_jax import data as data_lib
        self.data_lib = data_lib
        validate_config(config)
        self.config = config
        self.info = data_lib.get_info(config.data)
        self.num_classes = int(self.info.num_classes)
        parallel.check_divisible(config.batch_size, "batch_size")
        self.eval_batch_size = int(config.get("eval_batch_size", -1))
        if self.eval_batch_size <= 0:
            self.eval_batch_size = config.batch_size
        parallel.check_divisible(self.eval_batch_size, "eval_batch_size")
        self.num_train = split_size(self.info, config.data.train_split)
        if for_training and self.num_train < config.batch_size:
            raise ValueError(
                f"The training split {config.data.train_split!r} has {self.num_train} examples, "
                f"fewer than one batch (batch_size={config.batch_size}).")
        self.steps_per_epoch = max(1, self.num_train // config.batch_size)
        self.total_steps = (int(config.total_steps) if config.total_steps > 0
                            else max(1, int(math.ceil(config.num_epochs * self.steps_per_epoch))))
        self.model = build_model(config, self.num_classes)
        self.input_shape = input_shape(config, self.info)
        self.schedule = optim.create_schedule(config, self.steps_per_epoch, self.total_steps)
        param_shapes = jax.eval_shape(
            lambda: init_variables(self.model, jax.random.PRNGKey(0), self.input_shape))[0]
        self.tx = optim.create_optimizer(config, self.schedule, param_shapes)
        self.step_cfg = steps.StepConfig(
            apply_fn=self.model.apply, tx=self.tx, schedule=self.schedule,
            num_classes=self.num_classes, label_smoothing=float(config.label_smoothing),
            aux_loss_weight=float(config.get("aux_loss_weight", 0.3)),
            ema_decay=float(config.ema_decay),
            eval_flip_tta=bool(config.get("eval_flip_tta", False)),
            axis_name=parallel.PMAP_AXIS if config.parallel == "pmap" else None)
        self.strategy = parallel.create_strategy(config.parallel, self.step_cfg,
                                                 bn_sync=bool(config.model.get("bn_sync", True)))
        self.init_fn = functools.partial(create_train_state, self.model, self.tx, int(config.seed),
                                         self.input_shape, config.ema_decay > 0)
        self.template = jax.eval_shape(self.init_fn)

    def state_from_tree(self, tree: dict) -> TrainState:
        """Checks a restored tree against this model's state, then places it on the devices."""
        if self.template.ema_params is not None and add_ema_batch_stats(tree):
            print("WARNING: the checkpoint predates the EMA of the BatchNorm statistics; it starts "
                  "from the running statistics (as its EMA weights were evaluated so far).",
                  flush=True)
        expected = state_to_tree(self.template)
        want = {ckpt._path_str(p): (tuple(x.shape), np.dtype(x.dtype))
                for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
        got = {ckpt._path_str(p): (tuple(np.shape(x)), np.asarray(x).dtype)
               for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
        if want != got:
            diff = sorted(set(want.items()) ^ set(got.items()))[:6]
            raise ValueError(
                "The checkpoint does not fit the configured model/optimizer (differing arrays: "
                f"{diff}). It was written by another config; evaluate it with that config, or "
                "train this one in a new --workdir.")
        return self.strategy.place_state(tree_to_state(self.template, tree))

    def eval_split_label(self, split: str) -> str:
        if split == self.config.data.get("val_split", ""):
            return "val"
        return "val" if split.startswith("val") else "test"


def evaluate(setup: Setup, state: TrainState, split: str) -> dict:
    """Loss, top-1 and top-5 over every example of `split` (padding masked out)."""
    start = time.time()
    it = setup.data_lib.create_eval_iterator(
        setup.config.data, split, global_batch_size=setup.eval_batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())
    total, undecodable = None, 0.0
    for batch in it:
        undecodable += float(np.sum(batch.get("undecodable", 0.0)))
        batch = {k: batch[k] for k in ("image", "label", "mask") if k in batch}
        sums = setup.strategy.eval_sums(state, setup.strategy.place_batch(batch))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        raise ValueError(f"The evaluation split {split!r} yielded no batches.")
    total = setup.strategy.fetch(total)
    count = float(total["count"])
    if jax.process_count() > 1:  # each process counted its own files
        from jax.experimental import multihost_utils
        undecodable = float(np.sum(multihost_utils.process_allgather(np.float32(undecodable))))
    return {**_weights_and_raw(total, count), "num_undecodable": int(round(undecodable)),
            "loss": float(total["loss"]) / count, "top1": float(total["top1"]) / count,
            "top5": float(total["top5"]) / count, "num_examples": int(round(count)),
            "seconds": time.time() - start, **metrics_lib.per_class(total["confusion"])}


def _weights_and_raw(total: dict, count: float) -> dict:
    """`weights`: which weights loss/top1/top5 score ("ema": the EMA weights with the EMA
    BatchNorm statistics; "raw": the live weights), and for an EMA run the live weights' figures
    as raw_loss, raw_top1, raw_top5."""
    raw = {f"raw_{k}": float(total[f"raw_{k}"]) / count for k in steps.RAW_KEYS
           if f"raw_{k}" in total}
    return {"weights": "ema" if raw else "raw", **raw}


# What an evaluation record carries besides the example count: the scores and their weights.
SCORE_KEYS = ("loss", "top1", "top5", "weights", *(f"raw_{k}" for k in steps.RAW_KEYS))


def _scores(m: dict) -> dict:
    return {k: m[k] for k in SCORE_KEYS if k in m}


# ----------------------------------------------------------------------------------------------
# Training.


class _StopFlag:
    """Set by SIGTERM/SIGINT: the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        # Multi-process runs leave SIGTERM to JAX's preemption sync manager, which agrees on a
        # step at which every process stops (see `stop_requested`).
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def stop_requested(self, dispatch: int) -> bool:
        """True when the loop should stop; `dispatch` counts calls, the same on every process."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(dispatch):
                self.signum = signal.SIGTERM
        return self.signum is not None


def _barrier(name: str) -> None:
    """Waits for every process (a no-op in single-process runs)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _params_crc(params: Any) -> str:
    """CRC32 over every parameter: equal on all processes when the replicas agree."""
    crc = 0
    for x in jax.tree.leaves(params):
        crc = zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1), crc)
    return f"{crc:08x}"


def _next_boundary(step: int, every: int, total: int) -> int:
    return min(total, (step // every + 1) * every)


def _train_batches(setup: Setup, start_step: int) -> Iterator[dict]:
    it = setup.data_lib.create_train_iterator(
        setup.config.data, global_batch_size=setup.config.batch_size, seed=int(setup.config.seed),
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())
    for batch in it:
        yield {k: batch[k] for k in ("image", "label", "targets", "weight") if k in batch}


class _OnDeviceTrainer:
    """Training steps that draw their batch on the device from `OnDeviceData` (jit only)."""

    def __init__(self, setup: Setup):
        from cnn_jax.data.on_device import OnDeviceData
        strategy = setup.strategy
        self.source = OnDeviceData(setup.config.data, setup.config.batch_size,
                                   int(setup.config.seed))
        repl = strategy.replicated
        self.arrays = jax.tree.map(
            lambda x: jax.make_array_from_callback(np.shape(x), repl,
                                                   lambda idx, x=x: np.asarray(x)[idx]),
            self.source.arrays)
        batch_fn, data_sharding = self.source.batch_fn, strategy.data

        def one(state, arrays):
            batch = batch_fn(arrays, state.step)
            batch = jax.lax.with_sharding_constraint(batch, data_sharding)
            return steps.train_step(state, batch, setup.step_cfg)

        def many(state, arrays, n):
            return jax.lax.scan(lambda s, _: one(s, arrays), state, None, length=n)

        self._one = jax.jit(one, donate_argnums=0, out_shardings=(repl, repl))
        self._many = jax.jit(many, static_argnums=2, donate_argnums=0,
                             out_shardings=(repl, repl))

    def run(self, state: TrainState, n: int) -> tuple[TrainState, dict]:
        return self._one(state, self.arrays) if n == 1 else self._many(state, self.arrays, n)


def _mean_train_metrics(window: list[tuple[int, dict]], strategy) -> tuple[dict, np.ndarray]:
    """Averages of the metrics of the steps since the last log; also every step's loss."""
    fetched = [(n, strategy.fetch(m)) for n, m in window]
    vals = {key: np.concatenate([np.reshape(m[key], (-1,)) for _, m in fetched])
            for key in ("loss", "top1", "top5", "grad_norm")}
    out = {key: float(np.mean(v)) for key, v in vals.items()}
    out["lr"] = float(np.reshape(fetched[-1][1]["lr"], (-1,))[-1])
    # A step whose gradient norm is not finite has diverged even when its loss still is.
    losses = np.where(np.isfinite(vals["grad_norm"]), vals["loss"], np.nan)
    return out, losses


def _final_summary(workdir: str, split_records: dict[str, dict]) -> dict:
    records = metrics_lib.read_jsonl(os.path.join(workdir, metrics_lib.METRICS_FILE))
    val = [r for r in records if r.get("split") == "val" and isinstance(r.get("top1"), float)]
    best = max(val, key=lambda r: r["top1"]) if val else None
    train = [r for r in records if r.get("split") == "train"]
    speeds = [r["img_per_s"] for r in train[1:] if isinstance(r.get("img_per_s"), float)]
    if not speeds:
        speeds = [r["img_per_s"] for r in train if isinstance(r.get("img_per_s"), float)]
    final_train = {k: train[-1][k] for k in ("loss", "top1", "top5")} if train else {}
    final = {"train": final_train}
    final.update({split: {k: m[k] for k in ("loss", "top1", "top5", "num_examples",
                                            *metrics_lib.PER_CLASS_KEYS)}
                  for split, m in split_records.items()})
    for split, m in split_records.items():  # the weights scored, and the live weights' figures
        final[split].update(_scores(m))
    return {"final": final, "best_val_top1": best["top1"] if best else None,
            "best_val_step": best["step"] if best else None,
            "img_per_s": statistics.median(speeds) if speeds else None}


def _model_size(setup: Setup, params: Any) -> tuple[int, int | None]:
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    macs = None
    try:
        from cnn_jax import summary
        macs = summary.summarize(setup.model, setup.input_shape).get("macs")
        macs = int(macs) if macs is not None else None
    except Exception as e:  # noqa: BLE001 - the summary is optional for results.json
        logging.info("No MAC count for results.json: %s", e)
    return n_params, macs


def data_facts(setup: Setup) -> dict:
    """What a checkpoint stores about its training data (see checkpoint.DATA_FACTS)."""
    return {"fingerprint": setup.info.fingerprint, "num_train_examples": setup.num_train}


def check_resume(setup: Setup, meta: dict, cfg_dict: dict, start_step: int, workdir: str, *,
                 force: bool = False, extend: bool = False) -> None:
    """Refuses to resume a checkpoint whose run differs from this config (see checkpoint.py).

    Lists every differing field (and a changed training-data fingerprint) in one message.
    `extend` accepts a longer total_steps/num_epochs; `force` accepts any difference whose
    arrays still fit. A run length below the checkpoint's step is refused even with `force`.
    """
    allowed = ckpt.EXTEND_FIELDS if extend else ()
    diffs = (ckpt.config_differences(meta["config"], cfg_dict, allowed)
             + ckpt.data_differences(meta.get("data"), data_facts(setup)))
    if start_step > setup.total_steps:
        raise ckpt.CheckpointError(
            f"The checkpoint in {workdir} is at step {start_step}, past this config's run "
            f"length of {setup.total_steps} steps (total_steps={setup.config.total_steps}, "
            f"num_epochs={setup.config.num_epochs}): it cannot be shortened. Evaluate it with "
            f"--mode=eval, set --config.total_steps={start_step} or more, or use another "
            f"--workdir.")
    if extend:
        extended = [(k, a, b) for k, a, b in ckpt.config_differences(meta["config"], cfg_dict)
                    if k in ckpt.EXTEND_FIELDS]
        if extended:
            print(f"--extend: continuing from step {start_step} to {setup.total_steps} steps ("
                  + ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in extended)
                  + "); the learning-rate schedule is rebuilt for the new length.", flush=True)
    if not diffs:
        return
    listing = "\n".join(f"  {k}: stored {a!r} -> new {b!r}" for k, a, b in diffs)
    if not force:
        longer = ("" if extend or any(k not in ckpt.EXTEND_FIELDS for k, _, _ in diffs) else
                  " To make the run longer, pass --extend.")
        raise ckpt.CheckpointError(
            f"{workdir} holds a run with a different config or data; refusing to mix runs. "
            f"Differing fields:\n{listing}\nUse another --workdir, or pass --force to resume the "
            f"checkpoint at step {start_step} with the new config anyway.{longer}")
    print(f"WARNING: --force: resuming step {start_step} despite config changes:\n"
          f"{listing}", flush=True)


@workdir_lock.locked("training run", index=lambda: jax.process_index())  # one writer per DIR
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       force: bool = False, extend: bool = False) -> dict:
    """Trains `config` in `workdir`, resuming from its newest good checkpoint; returns results.

    Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ and, at the end,
    results.json. Resuming a checkpoint whose stored config or training data differs (outside
    checkpoint.RESUME_SAFE_FIELDS) is refused; `force` resumes anyway, `extend` lets
    total_steps/num_epochs grow (a finished run's results.json is kept as
    results_step<N>.json).
    """
    configure_jax(config)
    workdir = files.user_path(workdir)
    is_writer = jax.process_index() == 0
    run_start = time.time()
    setup = Setup(config)
    cfg_dict = config_to_dict(config)
    os.makedirs(workdir, exist_ok=True)

    store = ckpt.CheckpointStore(workdir, keep=config.keep_checkpoints,
                                 best_metric=config.keep_best_metric,
                                 async_save=bool(config.async_checkpoints))
    tree, meta, start_step, problems = ckpt.newest_readable(store, None)
    elapsed_before = 0.0
    if tree is not None:
        try:
            check_resume(setup, meta, cfg_dict, start_step, workdir, force=force, extend=extend)
        except Exception:
            store.close()
            raise
        state = setup.state_from_tree(tree)
        del tree
        elapsed_before = float(meta.get("wall_time", 0.0))
        bad_steps = [bad for bad, _ in problems if bad > start_step]
        if bad_steps:  # out of the way, or the run would stop when it reaches those steps
            for bad_step in bad_steps:
                if is_writer:
                    moved = store.quarantine(bad_step)
                    print(f"WARNING: moved unreadable checkpoint {bad_step} to {moved}",
                          flush=True)
            _barrier("quarantine")
            store.manager.reload()
        print(f"Resuming from checkpoint step {start_step} in {store.directory}", flush=True)
    else:
        state = setup.strategy.create_state(setup.init_fn)
        if config.get("init_from", ""):  # fine-tuning: another run's weights, step 0
            try:
                state = finetune.init_from_checkpoint(setup, state)
            except Exception:
                store.close()
                raise
        start_step = 0
    if is_writer:
        ckpt.write_json(os.path.join(workdir, CONFIG_FILE), cfg_dict)
        metrics_lib.truncate_jsonl(os.path.join(workdir, metrics_lib.METRICS_FILE), start_step)

    results_path = os.path.join(workdir, RESULTS_FILE)
    previous = ckpt.read_json(results_path)
    if start_step >= setup.total_steps and previous and previous.get("status") == "finished":
        store.close()
        print(f"Run already finished at step {previous.get('step')}: {results_path}", flush=True)
        _print_final(previous)
        return previous
    if is_writer and os.path.exists(results_path):
        if previous and previous.get("status") == "finished":  # extended or forced: kept
            kept = os.path.join(workdir, f"results_step{previous.get('step')}.json")
            os.replace(results_path, kept)
            print(f"The finished run's results moved to {kept}", flush=True)
        else:
            os.remove(results_path)  # the run continues: results.json returns when it finishes
    if is_writer and start_step >= setup.total_steps:  # finished but results.json is gone: the
        metrics_lib.truncate_jsonl(  # final evaluations run again, so their records go first
            os.path.join(workdir, metrics_lib.METRICS_FILE), start_step, evals_at_last=False)

    logger = metrics_lib.MetricsLogger(workdir, enabled=is_writer, hparams=cfg_dict)
    stop = _StopFlag()
    stop.install()
    try:
        return _train_loop(setup, state, start_step, workdir, store, logger, stop,
                           cfg_dict, run_start, elapsed_before)
    finally:
        stop.restore()
        logger.close()
        store.close()


def _train_loop(setup: Setup, state: TrainState, start_step: int, workdir: str,
                store: ckpt.CheckpointStore, logger: metrics_lib.MetricsLogger,
                stop: _StopFlag, cfg_dict: dict, run_start: float, elapsed_before: float) -> dict:
    config, strategy = setup.config, setup.strategy
    is_writer = jax.process_index() == 0
    total, spe = setup.total_steps, setup.steps_per_epoch
    log_every = config.log_every_steps
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else spe
    ckpt_every = config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else spe
    per_dispatch = config.steps_per_dispatch
    periodic_split = config.data.val_split or config.data.eval_split
    periodic_label = setup.eval_split_label(periodic_split)
    best_key = config.keep_best_metric

    on_device = _OnDeviceTrainer(setup) if config.data.get("on_device", False) else None
    batches = None if on_device else _train_batches(setup, start_step)
    progress = metrics_lib.Progress(total, start_step, enabled=is_writer)
    print(f"Training {config.model.name} on {config.data.name} for {total} steps "
          f"({spe} steps/epoch, batch {config.batch_size}, {jax.device_count()} device(s), "
          f"{jax.process_count()} process(es), parallel={config.parallel}); workdir {workdir}",
          flush=True)

    def wall() -> float:
        return elapsed_before + time.time() - run_start

    def meta(step: int) -> dict:
        return {"config": cfg_dict, "epoch": step / spe, "wall_time": wall(),
                "data": data_facts(setup)}

    def save(step: int, state: TrainState, eval_metrics: dict | None) -> TrainState:
        state = strategy.sync_state(state)
        host = state_to_tree(strategy.host_state(state))
        metrics = None
        if eval_metrics is not None and best_key:
            metrics = {best_key: float(eval_metrics[best_key])}
        store.save(step, host, meta(step), metrics)
        return state

    step = start_step
    eval_metrics = None
    window: list[tuple[int, dict]] = []
    window_start, window_images, checked_until = time.time(), 0, step

    def check_finite(losses: np.ndarray, upto: int) -> None:
        if not np.all(np.isfinite(losses)):
            bad = upto - len(losses) + int(np.argmin(np.isfinite(losses))) + 1
            store.wait()
            good = store.steps()
            raise NonFiniteLossError(
                f"Non-finite training loss or gradient norm at step {bad} "
                f"(epoch {bad / spe:.2f}): training stopped, no checkpoint of this state was "
                f"saved. Last good checkpoint: "
                f"{f'step {good[-1]} in {store.directory}' if good else 'none'}. Lower "
                f"optim.lr, set grad_clip_norm, or check the data.")

    dispatch, first_step_s = 0, None
    while step < total:
        if stop.stop_requested(dispatch):
            break
        dispatch += 1
        boundary = min(_next_boundary(step, b, total) for b in (log_every, eval_every, ckpt_every))
        n = per_dispatch if per_dispatch > 1 and boundary - step >= per_dispatch else 1
        if on_device is not None:
            state, m = on_device.run(state, n)
        elif n == 1:
            state, m = strategy.train(state, strategy.place_batch(next(batches)))
        else:
            group = [next(batches) for _ in range(n)]
            stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
            state, m = strategy.train_many(state, strategy.place_batch(stacked, stacked=True))
        window.append((n, m))
        step += n
        window_images += n * config.batch_size
        if first_step_s is None:
            jax.block_until_ready(m)
            first_step_s = time.time() - run_start
            print(f"First step done {first_step_s:.1f}s after start (setup, compilation and "
                  f"restore included)", flush=True)

        if step % log_every == 0 or step == total:
            means, losses = _mean_train_metrics(window, strategy)
            check_finite(losses, step)
            checked_until = step
            now = time.time()
            means["img_per_s"] = window_images / max(now - window_start, 1e-9)
            record = {"step": step, "epoch": step / spe, "split": "train", **means,
                      "wall_time": wall()}
            logger.write(record)
            progress.train_line(step, step / spe, record)
            window, window_images = [], 0
            window_start = time.time()

        eval_metrics = None
        if step % eval_every == 0 or step == total:
            pause = time.time()
            state = strategy.sync_state(state)
            eval_metrics = evaluate(setup, state, periodic_split)
            logger.write({"step": step, "epoch": step / spe, "split": periodic_label,
                          **_scores(eval_metrics),
                          "num_examples": eval_metrics["num_examples"], "wall_time": wall()})
            progress.eval_line(step, periodic_label, eval_metrics)
            window_start += time.time() - pause

        if step % ckpt_every == 0 or step == total:
            pause = time.time()
            if checked_until < step and window:
                check_finite(_mean_train_metrics(window, strategy)[1], step)
            state = save(step, state, eval_metrics)
            window_start += time.time() - pause

    if step < total:  # stopped by a signal
        if checked_until < step and window:
            check_finite(_mean_train_metrics(window, strategy)[1], step)
        save(step, state, None)
        store.wait()
        name = signal.Signals(stop.signum).name if stop.signum else "signal"
        print(f"Stopped by {name} at step {step}: checkpoint saved in {store.directory}. "
              f"Re-run the same command to resume.", flush=True)
        preempted = {"status": "preempted", "step": step, "signal": name}
        if is_writer:  # tells a sweep this point stopped cleanly; removed when the run resumes
            ckpt.write_json(os.path.join(workdir, RESULTS_FILE), preempted)
        return preempted

    # Final evaluation on the validation split (when there is one) and the evaluation split.
    state = strategy.sync_state(state)
    split_records = {}
    for split in dict.fromkeys(s for s in (config.data.val_split, config.data.eval_split) if s):
        label = setup.eval_split_label(split)
        if split == periodic_split and eval_metrics is not None:
            m = eval_metrics
        else:
            m = evaluate(setup, state, split)
            logger.write({"step": step, "epoch": step / spe, "split": label,
                          **_scores(m),
                          "num_examples": m["num_examples"], "wall_time": wall()})
            progress.eval_line(step, label, m)
        split_records[label] = m
    store.wait()
    logger.flush()
    host_params = strategy.fetch(state.params)
    n_params, macs = _model_size(setup, host_params)
    crc = _params_crc(host_params)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        print(f"[process {jax.process_index()}] final params crc32 {crc}", flush=True)
        crcs = multihost_utils.process_allgather(np.array([int(crc, 16)], np.int64))
        if len(set(np.asarray(crcs).reshape(-1).tolist())) != 1:
            raise RuntimeError(f"The processes ended with different parameters (crc32 per "
                               f"process: {np.asarray(crcs).reshape(-1).tolist()}).")
    results = {
        "status": "finished", "step": step, "epochs": step / spe, "total_steps": total,
        "steps_per_epoch": spe, "model": config.model.name, "data": config.data.name,
        "params": n_params, "macs": macs, "params_crc32": crc, "wall_time_s": wall(),
        "first_step_s": first_step_s,
        "num_devices": jax.device_count(), "num_processes": jax.process_count(),
        "parallel": config.parallel, "batch_size": config.batch_size, "seed": config.seed,
        "config": cfg_dict, **_final_summary(workdir, split_records),
    }
    if is_writer:
        ckpt.write_json(os.path.join(workdir, RESULTS_FILE), results)
    _print_final(results)
    return results


def _print_final(results: dict) -> None:
    final = results.get("final", {})
    label = "test" if "test" in final else "val"
    m = final.get(label)
    if m:
        print(f"Final {label} top-1 {100 * m['top1']:.2f}% top-5 {100 * m['top5']:.2f}% "
              f"(loss {m['loss']:.4f}, {m['num_examples']} examples) after "
              f"{results.get('epochs', 0):.2f} epochs, {results.get('wall_time_s', 0):.0f}s"
              f"{metrics_lib.weights_note(m)}", flush=True)


# ----------------------------------------------------------------------------------------------
# Evaluation and prediction from a workdir's newest checkpoint.


def _restore_for_inference(config: ml_collections.ConfigDict, workdir: str
                           ) -> tuple[Setup, TrainState, int, dict]:
    configure_jax(config)
    if not ckpt.checkpoint_steps(workdir):
        raise FileNotFoundError(
            f"No checkpoint in {os.path.join(workdir, ckpt.CHECKPOINT_SUBDIR)}: train first "
            f"(same command without --mode).")
    setup = Setup(config, for_training=False)
    live = workdir_lock.live_holder(workdir)
    if live is not None:
        print(f"Note: a training run is live in {workdir} ({workdir_lock.describe(live, False)}): "
              f"reading its newest checkpoint.", flush=True)
    store = ckpt.CheckpointStore(workdir, read_only=True)
    try:
        tree, meta, step, _ = ckpt.newest_readable(store, None)
    except ckpt.CheckpointError as e:
        live = live or workdir_lock.live_holder(workdir)
        if live is None:
            raise
        raise ckpt.CheckpointError(  # never advise moving a live run's checkpoints away
            f"No checkpoint of {workdir} could be read while a training run is live there "
            f"({workdir_lock.describe(live)}); it was probably replacing them meanwhile. Nothing "
            f"was moved or changed: re-run --mode=eval, or wait until the run has finished.") from e
    finally:
        store.close()
    diffs = ckpt.config_differences(meta["config"], config_to_dict(config))
    if diffs:
        print("WARNING: the checkpoint was trained with a different config: "
              + ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:10]), flush=True)
    return setup, setup.state_from_tree(tree), step, meta


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the newest checkpoint on config.data.eval_split; writes DIR/eval_metrics.json."""
    workdir = files.user_path(workdir)
    setup, state, step, _ = _restore_for_inference(config, workdir)
    split = config.data.eval_split
    m = evaluate(setup, state, split)
    expected = split_size(setup.info, split)
    out = {**_scores(m), "top1": m["top1"], "top5": m["top5"], "loss": m["loss"],
           "num_examples": m["num_examples"], "split": split, "step": step,
           "model": config.model.name, "data": config.data.name,
           **{k: m[k] for k in metrics_lib.PER_CLASS_KEYS}}
    if m["num_undecodable"]:
        out["num_undecodable"] = m["num_undecodable"]
    if m["num_examples"] + m["num_undecodable"] != expected:
        raise RuntimeError(f"Evaluation counted {m['num_examples']} examples but split {split!r} "
                           f"has {expected}: the evaluation input pipeline dropped or repeated "
                           f"examples.")
    if jax.process_index() == 0:
        ckpt.write_json(os.path.join(workdir, EVAL_FILE), out)
    print(f"Eval of step {step} on {split}: top-1 {100 * m['top1']:.2f}% top-5 "
          f"{100 * m['top5']:.2f}% loss {m['loss']:.4f} ({m['num_examples']} examples)"
          f"{metrics_lib.weights_note(m)} -> {os.path.join(workdir, EVAL_FILE)}", flush=True)
    return out


def load_image(path: str, shape: tuple[int, ...], mean: Any, std: Any) -> np.ndarray:
    """An image file as the model's input: resized to (H, W), channels matched, normalised."""
    from PIL import Image

    from cnn_jax.data import image_tree
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    h, w, c = shape
    try:
        with Image.open(path) as img:  # 16-bit PNGs scaled as in training, not clipped
            img = image_tree.to_8bit(img).convert("L" if c == 1 else "RGB")
            img = img.resize((w, h), Image.BILINEAR)
            x = np.asarray(img, np.float32) / 255.0
    except image_tree.unreadable_errors() as e:  # a decompression bomb included
        raise ValueError(f"Cannot read image {path}: {e}") from None
    x = x.reshape(h, w, c)
    mean = np.zeros(c, np.float32) if mean is None else np.asarray(mean, np.float32)
    std = np.ones(c, np.float32) if std is None else np.asarray(std, np.float32)
    return (x - mean) / std


def predict(config: ml_collections.ConfigDict, workdir: str, image_paths: list[str],
            top_k: int = 5) -> list[dict]:
    """Top-k classes with probabilities for each image file, from the newest checkpoint."""
    if not image_paths:
        raise ValueError("--mode=predict needs image files: --images=a.jpg,b.png")
    workdir = files.user_path(workdir)
    setup, state, step, _ = _restore_for_inference(config, workdir)
    info = setup.info
    if setup.config.data.get("normalize", "train_stats") == "none":
        mean, std = None, None
    else:
        mean, std = getattr(info, "mean", None), getattr(info, "std", None)
    images = np.stack([load_image(p, setup.input_shape, mean, std) for p in image_paths])
    host = setup.strategy.host_state(state)
    ema = host.ema_params is not None  # the EMA weights go with the EMA statistics
    params, stats = (host.ema_params, host.ema_batch_stats) if ema else (host.params,
                                                                         host.batch_stats)
    probs = np.asarray(jax.jit(functools.partial(steps.predict_probs, apply_fn=setup.model.apply))(
        {"params": params, "batch_stats": stats}, images))
    names = list(getattr(info, "class_names", None) or [str(i) for i in range(probs.shape[1])])
    out = []
    for path, p in zip(image_paths, probs):
        order = np.argsort(-p)[:min(top_k, len(p))]
        top = [{"class": names[i] if i < len(names) else str(i), "index": int(i),
                "prob": float(p[i])} for i in order]
        out.append({"image": path, "top": top})
        print(f"{path}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in top),
              flush=True)
    return out
