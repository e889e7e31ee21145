"""Evaluation and prediction: `evaluate` (one split; also the training loop's periodic and final
evaluations), `evaluate_checkpoint` (--mode=eval), `predict` (--mode=predict, whose images are
preprocessed by `data.eval_image` exactly as evaluation's) and `load_image`, a plain decode of
an image file resized to the model's input shape.

`evaluate_checkpoint` and `predict` restore a workdir's newest checkpoint (read-only, beside a
live training run if there is one).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import files, workdir_lock
from cnn_jax.data import sources
from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import metrics as metrics_lib
from cnn_jax.train import quiet, steps
from cnn_jax.train.setup import Setup, config_to_dict, configure_jax, split_size
from cnn_jax.train.state import TrainState

EVAL_FILE = "eval_metrics.json"


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


def scores(m: dict) -> dict:
    """The SCORE_KEYS of an evaluation's metrics `m` (those it has)."""
    return {k: m[k] for k in SCORE_KEYS if k in m}


# ----------------------------------------------------------------------------------------------
# Evaluation and prediction from a workdir's newest checkpoint.


@quiet.orbax_read_only()
def _restore_for_inference(config: ml_collections.ConfigDict, workdir: str
                           ) -> tuple[Setup, TrainState, int, dict]:
    configure_jax(config)
    if not ckpt.checkpoint_steps(workdir):
        raise FileNotFoundError(
            f"No checkpoint in {os.path.join(workdir, ckpt.CHECKPOINT_SUBDIR)}: nothing to "
            f"evaluate yet. Train first (the training command, without --mode), or give the "
            f"--workdir of a run that has checkpoints.")
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


@sources.reuse_sources()  # the data set is listed and read once
def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the newest checkpoint on config.data.eval_split; writes DIR/eval_metrics.json."""
    workdir = files.user_path(workdir)
    setup, state, step, _ = _restore_for_inference(config, workdir)
    split = config.data.eval_split
    m = evaluate(setup, state, split)
    expected = split_size(setup.info, split)
    out = {**scores(m), "top1": m["top1"], "top5": m["top5"], "loss": m["loss"],
           "num_examples": m["num_examples"], "split": split, "step": step,
           "model": config.model.name, "data": config.data.name,
           **{k: m[k] for k in metrics_lib.PER_CLASS_KEYS}}
    if m["num_undecodable"]:
        out["num_undecodable"] = m["num_undecodable"]
    if m["num_examples"] + m["num_undecodable"] != expected:
        raise RuntimeError(f"Evaluation counted {m['num_examples']} examples but split {split!r} "
                           f"has {expected}: the evaluation input pipeline dropped or repeated "
                           f"examples.")
    target = os.path.join(workdir, EVAL_FILE)
    if jax.process_index() == 0:
        try:
            ckpt.write_json(target, out)
        except OSError as e:  # a read-only or full workdir: the result is still printed
            print(f"WARNING: could not write {target} ({e.strerror or e}); the result is "
                  f"only printed below.", flush=True)
            target = "not saved"
    print(f"Eval of step {step} on {split}: top-1 {100 * m['top1']:.2f}% top-5 "
          f"{100 * m['top5']:.2f}% loss {m['loss']:.4f} ({m['num_examples']} examples)"
          f"{metrics_lib.weights_note(m)} -> {target}", flush=True)
    return out


def load_image(path: str, shape: tuple[int, ...], mean: Any, std: Any) -> np.ndarray:
    """An image file resized (stretched) to (H, W), channels matched, normalised; not what
    evaluation does with `data.image_size > 0` (see `data.eval_image.load`)."""
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


@sources.reuse_sources()
def predict(config: ml_collections.ConfigDict, workdir: str, image_paths: list[str],
            top_k: int = 5) -> list[dict]:
    """Top-k classes with probabilities for each image file, from the newest checkpoint.

    The images are preprocessed as evaluation preprocesses the data set's (`data.eval_image`),
    and scored as evaluation scores them (`steps.eval_logits`: flip TTA with `eval_flip_tta`).
    """
    if not image_paths:
        raise ValueError("--mode=predict needs image files: --images=a.jpg,b.png")
    workdir = files.user_path(workdir)
    setup, state, step, _ = _restore_for_inference(config, workdir)
    info = setup.info
    from cnn_jax.data import eval_image
    images = eval_image.load(setup.config.data, image_paths)  # as evaluation preprocesses
    host = setup.strategy.host_state(state)
    ema = host.ema_params is not None  # the EMA weights go with the EMA statistics
    params, stats = (host.ema_params, host.ema_batch_stats) if ema else (host.params,
                                                                         host.batch_stats)
    probs = np.asarray(jax.jit(functools.partial(steps.predict_probs, cfg=setup.step_cfg))(
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
