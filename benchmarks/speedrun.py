"""Times the CIFAR-10 speed-run recipe: several seeds in one process, compile excluded.

    python benchmarks/speedrun.py --config=experiments/cifar10_speedrun.py:dev --seeds=5
    python benchmarks/speedrun.py --config=experiments/cifar10_speedrun.py --seeds=5 \
        --config.data.path=/path/to/cifar10-jpeg     # final: all 50,000, evaluates on `test`

For each seed it builds the engine's state and its on-device training step (the same code
`launch.py` runs: `cnn_jax.train.setup.Setup` and `loop._OnDeviceTrainer`), compiles the step
ahead of time (reported as `compile_s`), then times the training alone: from the first step's
dispatch to the last step's result on the host (`train_s`, the recipe's own timer). The seed
travels as data, so seeds after the first reuse the compiled step. Evaluation is the engine's
eval step over every example of the evaluation split (`data.eval_split`, else `data.val_split`),
held on the device, with and without test-time horizontal-flip averaging (`eval_flip_tta`).

No checkpoints or metric files are written: this is a timer, not a training run; use launch.py
for those. Needs JAX, Flax, optax, ml_collections and absl (TensorFlow optional: image trees are
decoded with PIL when it is missing).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cnn_jax.data import pipeline  # noqa: E402
from cnn_jax.train import loop, steps  # noqa: E402
from cnn_jax.train.setup import Setup, configure_jax  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Recipe config, e.g. experiments/cifar10_speedrun.py:dev")
flags.DEFINE_integer("seeds", 5, "Runs, with seeds config.seed, config.seed + 1, ...")
flags.DEFINE_integer("eval_batch", 1000, "Batch size of the on-device evaluation.")
flags.DEFINE_bool("json", False, "Print one JSON line at the end.")


def _eval_arrays(config) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(split, uint8 images, labels, scale, bias) of the evaluation split, for on-device eval."""
    split = config.data.get("eval_split", "") or config.data.get("val_split", "")
    if not split:
        raise ValueError("The recipe names no evaluation split: set --config.data.eval_split=test "
                         "or --config.data.val_split='train[90%:]'.")
    plan = pipeline._plan(config.data)
    arrays = pipeline._load_array(plan.source, split, plan.image_size)
    return split, arrays.images, arrays.labels, np.asarray(plan.scale), np.asarray(plan.bias)


def _eval_batches(images, labels, scale, bias, batch: int) -> list[dict]:
    """The split as padded, masked, normalised batches on the device (built once, reused)."""
    n = len(labels)
    pad = (-n) % batch
    x = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    y = np.concatenate([labels, np.zeros(pad, labels.dtype)]).astype(np.int32)
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    x = jnp.asarray(x).astype(jnp.float32) * jnp.asarray(scale, jnp.float32) + jnp.asarray(
        bias, jnp.float32)
    return [{"image": x[i:i + batch], "label": jnp.asarray(y[i:i + batch]),
             "mask": jnp.asarray(mask[i:i + batch])} for i in range(0, len(y), batch)]


def _top1(eval_fn, state, batches) -> float:
    """Top-1 accuracy through the engine's eval step (mask-weighted sums)."""
    sums = [eval_fn(state, b) for b in batches]
    return float(sum(s["top1"] for s in sums) / sum(s["count"] for s in sums))


def main(argv):
    del argv
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=experiments/cifar10_speedrun.py:dev")
    if not config.data.get("on_device", False):
        raise app.UsageError("This timer runs the on-device recipe: set --config.data.on_device=True.")
    if FLAGS.seeds < 1:
        raise app.UsageError(f"--seeds={FLAGS.seeds} must be >= 1.")
    try:
        configure_jax(config)  # the engine's settings: compilation cache, PRNG mode
    except (AttributeError, ValueError) as e:  # an option this JAX version no longer has
        print(f"warning: engine JAX settings not applied: {e}", flush=True)
    t0 = time.time()
    split, images, labels, scale, bias = _eval_arrays(config)
    batches = _eval_batches(images, labels, scale, bias, FLAGS.eval_batch)
    load_s = time.time() - t0
    runs = []
    compiled = eval_plain = eval_flips = None
    base_seed = int(config.seed)
    for r in range(FLAGS.seeds):
        config.seed = base_seed + r
        t = time.time()
        setup = Setup(config)
        trainer = loop._OnDeviceTrainer(setup)
        state = setup.strategy.create_state(setup.init_fn)
        jax.block_until_ready(state)
        setup_s = time.time() - t
        total, per = setup.total_steps, int(config.steps_per_dispatch)
        if total % per:
            per = 1
        t = time.time()
        if compiled is None:  # the seed is data: one compilation serves every run
            compiled = trainer._many.lower(state, trainer.arrays, per).compile()
            eval_plain, eval_flips = (
                jax.jit(functools.partial(steps.eval_step, cfg=dataclasses.replace(
                    setup.step_cfg, eval_flip_tta=flip))) for flip in (False, True))
        compile_s = time.time() - t
        t = time.time()
        for _ in range(total // per):
            state, metrics = compiled(state, trainer.arrays)
        last_loss = float(np.asarray(metrics["loss"])[-1])  # waits for the last step
        train_s = time.time() - t
        t = time.time()
        top1, top1_tta = _top1(eval_plain, state, batches), _top1(eval_flips, state, batches)
        eval_s = time.time() - t
        run = dict(seed=config.seed, steps=total, train_s=train_s, compile_s=compile_s,
                   setup_s=setup_s, eval_s=eval_s, last_loss=last_loss, top1=top1,
                   top1_tta=top1_tta, train_img_per_s=total * config.batch_size / train_s)
        runs.append(run)
        print(f"seed {run['seed']}: {total} steps in {train_s:.2f} s (compile {compile_s:.1f} s, "
              f"setup {setup_s:.1f} s), {split} top-1 {top1:.2%}, with flips {top1_tta:.2%}, "
              f"final train loss {last_loss:.3f}", flush=True)
    dev = jax.devices()[0]
    summary = dict(
        device=dev.platform, device_name=getattr(dev, "device_kind", "?"), jax=jax.__version__,
        eval_split=split, eval_examples=int(len(labels)), data_load_s=load_s, runs=runs,
        mean_top1=statistics.mean(r["top1"] for r in runs),
        mean_top1_tta=statistics.mean(r["top1_tta"] for r in runs),
        mean_train_s=statistics.mean(r["train_s"] for r in runs))
    print(f"{len(runs)} runs on {summary['device_name']}: mean {split} top-1 "
          f"{summary['mean_top1']:.2%} ({summary['mean_top1_tta']:.2%} with flips), mean training "
          f"time {summary['mean_train_s']:.2f} s (compile excluded: {runs[0]['compile_s']:.1f} s, "
          f"once); data load {load_s:.1f} s")
    if FLAGS.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
