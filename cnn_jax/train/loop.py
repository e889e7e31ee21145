"""The training loop: `train_and_evaluate(config, workdir)`.

The loop owns all I/O (data, checkpoints, metrics); the steps it calls are pure functions. It
builds on `setup` (JAX settings, config checks, model, `Setup`), `preemption` (stop flag and
barriers) and `inference` (`evaluate`), and writes config.json, metrics.jsonl, checkpoints and
results.json.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import files, workdir_lock
from cnn_jax.data import sources
from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import metrics as metrics_lib
from cnn_jax.train import divergence, finetune, steps
from cnn_jax.train.inference import evaluate, scores
from cnn_jax.train.preemption import StopFlag, barrier
from cnn_jax.train.setup import Setup, config_to_dict, configure_jax, model_description
from cnn_jax.train.state import TrainState, state_to_tree

# Re-exported for callers that import them from here (tests, benchmarks). Each is looked up in
# its own module, so patch it there (inference.evaluate for evaluate_checkpoint, for example).
from cnn_jax.train.inference import EVAL_FILE, evaluate_checkpoint, load_image, predict  # noqa
from cnn_jax.train.setup import DTYPES, build_model, input_shape, validate_config  # noqa
from cnn_jax.train.divergence import NonFiniteLossError  # noqa

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


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
        final[split].update(scores(m))
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       force: bool = False, extend: bool = False) -> dict:
    """Trains `config` in `workdir`, resuming from its newest good checkpoint; returns results.

    Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ and, at the end,
    results.json. Resuming a checkpoint whose stored config or training data differs (outside
    checkpoint.RESUME_SAFE_FIELDS) is refused; `force` resumes anyway, `extend` lets
    total_steps/num_epochs grow (a finished run's results.json is kept as
    results_step<N>.json). A run already finished with this config is reported as such even
    where `workdir` cannot be written (read-only); otherwise that is a WorkdirNotWritableError.
    """
    try:
        with sources.reuse_sources():  # the data set is listed and read once per run
            return _train_and_evaluate(config, workdir, force=force, extend=extend)
    except workdir_lock.WorkdirNotWritableError:
        path = os.path.join(files.user_path(workdir), RESULTS_FILE)
        previous = ckpt.read_json(path)
        if (extend or not previous or previous.get("status") != "finished"
                or ckpt.config_differences(previous.get("config", {}), config_to_dict(config))):
            raise
        print(f"Run already finished at step {previous.get('step')}: {path} (the workdir is "
              f"not writable; nothing was written)", flush=True)
        _print_final(previous)
        return previous


@workdir_lock.locked("training run", index=lambda: jax.process_index())  # one writer per DIR
def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                        force: bool = False, extend: bool = False) -> dict:
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
        guard = divergence.Guard(config, setup.num_classes, meta.get("divergence"), fresh=False)
        if guard.ref_param_norm is None:  # a checkpoint from before the check: its norm
            guard.check_params(tree["params"])
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
            barrier("quarantine")
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
        guard = divergence.Guard(config, setup.num_classes)
        guard.check_params(setup.strategy.fetch(state.params))  # the starting norm
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
    stop = StopFlag()
    stop.install()
    try:
        return _train_loop(setup, state, start_step, workdir, store, logger, stop,
                           cfg_dict, run_start, elapsed_before, guard)
    finally:
        stop.restore()
        logger.close()
        store.close()


def _train_loop(setup: Setup, state: TrainState, start_step: int, workdir: str,
                store: ckpt.CheckpointStore, logger: metrics_lib.MetricsLogger,
                stop: StopFlag, cfg_dict: dict, run_start: float, elapsed_before: float,
                guard: divergence.Guard) -> dict:
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
    print(f"Training {model_description(config)} on {config.data.name} for {total} steps "
          f"({spe} steps/epoch, batch {config.batch_size}, {jax.device_count()} device(s), "
          f"{jax.process_count()} process(es), parallel={config.parallel}); workdir {workdir}",
          flush=True)

    def wall() -> float:
        return elapsed_before + time.time() - run_start

    def meta(step: int) -> dict:
        return {"config": cfg_dict, "epoch": step / spe, "wall_time": wall(),
                "data": data_facts(setup), "divergence": guard.reference()}

    def save(step: int, state: TrainState, eval_metrics: dict | None) -> TrainState:
        state = strategy.sync_state(state)
        host = state_to_tree(strategy.host_state(state))
        why = guard.check_params(host["params"])  # never checkpoint diverged parameters
        if why:
            raise divergence.stop(store, step, why, spe, params_bad=True, is_writer=is_writer,
                                  config=config)
        metrics = None
        if eval_metrics is not None and best_key:
            metrics = {best_key: float(eval_metrics[best_key])}
        with stop.saving():  # a second Ctrl-C waits for the save
            store.save(step, host, meta(step), metrics)
        return state

    step = start_step
    eval_metrics = None
    window: list[tuple[int, dict]] = []
    window_start, window_images, checked_until = time.time(), 0, step

    def check_finite(losses: np.ndarray, upto: int) -> None:
        """Stops a diverged run (non-finite, or above the bound: see divergence.py)."""
        bad = guard.first_bad(losses, upto)
        if bad is not None:
            raise divergence.stop(store, bad[0], bad[1], spe, params_bad=False,
                                  is_writer=is_writer, config=config)

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
                          **scores(eval_metrics),
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
        with stop.saving():
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
                          **scores(m),
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
