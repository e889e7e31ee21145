"""Pure train and eval steps: softmax cross-entropy, top-1/top-5, gradient, optimizer update.

Steps never touch files or the host; `axis_name` is set when the step runs under `pmap`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cnn_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What a step needs besides the state and the batch (static under jit)."""

    apply_fn: Callable[..., Any]
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    num_classes: int
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3
    ema_decay: float = 0.0
    axis_name: str | None = None
    eval_flip_tta: bool = False


def _split_outputs(outputs: Any) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """(main logits, auxiliary logits): GoogLeNet returns (logits, aux1, aux2) in train mode."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], tuple(outputs[1:])
    return outputs, ()


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example softmax cross-entropy against one-hot or soft (mixup) targets, in float32."""
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def topk_correct(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example 0/1 for top-1 and top-5 correctness (top-k with k = min(5, classes))."""
    k = min(5, logits.shape[-1])
    top = jax.lax.top_k(logits.astype(jnp.float32), k)[1]
    hits = top == labels[:, None]
    return hits[:, 0].astype(jnp.float32), jnp.any(hits, axis=-1).astype(jnp.float32)


def confusion_counts(logits: jax.Array, labels: jax.Array, real: jax.Array,
                     num_classes: int) -> jax.Array:
    """int32 counts [true class, top-1 class] over the real examples (`real` is a bool mask)."""
    pred = jax.lax.top_k(logits.astype(jnp.float32), 1)[1][:, 0]  # the class top-1 counts
    counts = jnp.zeros((num_classes, num_classes), jnp.int32)
    return counts.at[labels, pred].add(real.astype(jnp.int32), mode="drop")


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves of `tree` together, as `optax.tree.norm` gives it for real leaves.

    Written out because `optax.tree.norm` squares the real and the imaginary part of every leaf
    (it supports complex trees): six traced equations per leaf where this takes three (square,
    sum, add), and the train step's trace and lowering pay for each equation on every launch.
    """
    sums = [jax.lax.reduce_sum(jax.lax.square(x), tuple(range(x.ndim))).astype(jnp.float32)
            for x in jax.tree.leaves(tree)]
    return jnp.sqrt(functools.reduce(jax.lax.add, sums)) if sums else jnp.zeros((), jnp.float32)


def _targets(batch: dict, num_classes: int) -> jax.Array:
    if "targets" in batch:
        return batch["targets"].astype(jnp.float32)
    return jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)


def _batch_mean(batch: dict) -> Callable[[jax.Array], jax.Array]:
    """Mean over the batch; weighted by batch["weight"] when there is one (0: an image that did
    not decode, kept in place as a zero image: it counts in neither loss nor metrics)."""
    if "weight" not in batch:
        return jnp.mean
    w = batch["weight"].astype(jnp.float32)
    return lambda x: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def train_step(state: TrainState, batch: dict, cfg: StepConfig) -> tuple[TrainState, dict]:
    """One SGD step on one batch; returns the new state and the batch's mean metrics."""
    rng = jax.random.fold_in(state.rng, state.step)
    if cfg.axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(cfg.axis_name))
    targets = _targets(batch, cfg.num_classes)
    mean = _batch_mean(batch)

    def loss_fn(params):
        outputs, updates = cfg.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            rngs={"dropout": rng}, mutable=["batch_stats"])
        logits, aux = _split_outputs(outputs)
        loss = mean(cross_entropy(logits, targets, cfg.label_smoothing))
        for a in aux:
            loss += cfg.aux_loss_weight * mean(cross_entropy(a, targets, cfg.label_smoothing))
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    top1, top5 = topk_correct(logits, batch["label"])
    metrics = {"loss": loss, "top1": mean(top1), "top5": mean(top5)}
    if cfg.axis_name is not None:
        grads = jax.lax.pmean(grads, cfg.axis_name)
        metrics = jax.lax.pmean(metrics, cfg.axis_name)
    updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema, ema_stats = state.ema_params, state.ema_batch_stats
    if ema is not None:  # the BN statistics are averaged with the same decay as the weights
        ema = optax.incremental_update(params, ema, 1.0 - cfg.ema_decay)
        ema_stats = optax.incremental_update(batch_stats, ema_stats, 1.0 - cfg.ema_decay)
    metrics["lr"] = jnp.asarray(cfg.schedule(state.step), jnp.float32)
    metrics["grad_norm"] = global_norm(grads)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema_params=ema, ema_batch_stats=ema_stats)
    return new_state, metrics


def train_steps(state: TrainState, batches: dict, cfg: StepConfig) -> tuple[TrainState, dict]:
    """Several train steps in one call (`lax.scan` over the leading axis of `batches`)."""
    return jax.lax.scan(lambda s, b: train_step(s, b, cfg), state, batches)


# Keys of eval_step's sums that are also given for the live weights (as raw_KEY) in EMA runs.
RAW_KEYS = ("loss", "top1", "top5")


def eval_step(state: TrainState, batch: dict, cfg: StepConfig) -> dict:
    """Sums over one batch (see `eval_sums`) for the weights a run is scored with.

    Those are the EMA weights with the EMA BatchNorm statistics when the run keeps an EMA; the
    live weights with their running statistics then add their loss, top-1 and top-5 sums as
    raw_loss, raw_top1 and raw_top5, so that both figures are reported.
    """
    if state.ema_params is None:
        return eval_sums(state.params, state.batch_stats, batch, cfg)
    sums = eval_sums(state.ema_params, state.ema_batch_stats, batch, cfg)
    raw = eval_sums(state.params, state.batch_stats, batch, cfg)
    return {**sums, **{f"raw_{k}": raw[k] for k in RAW_KEYS}}


def eval_sums(params: Any, batch_stats: Any, batch: dict, cfg: StepConfig) -> dict:
    """Mask-weighted sums of loss, top-1 and top-5 hits, the example count and the confusion
    matrix (int32 counts, rows the true class, columns the top-1 class) for one batch.

    Sums (not means) so that padded examples are dropped and every real example counts once.
    With `eval_flip_tta`, the logits are the mean of the image's and its horizontal mirror's.
    """
    logits = eval_logits({"params": params, "batch_stats": batch_stats}, batch["image"], cfg)
    labels = batch["label"]
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, cfg.num_classes, dtype=jnp.float32)
    loss = cross_entropy(logits, onehot, 0.0)
    top1, top5 = topk_correct(logits, labels)
    real = mask > 0  # padding may hold anything; `where` keeps a NaN there out of the sums
    sums = {"loss": jnp.where(real, loss, 0.0).sum(), "top1": jnp.where(real, top1, 0.0).sum(),
            "top5": jnp.where(real, top5, 0.0).sum(), "count": mask.sum(),
            "confusion": confusion_counts(logits, labels, real, cfg.num_classes)}
    if cfg.axis_name is not None:
        sums = jax.lax.psum(sums, cfg.axis_name)
    return sums


def eval_logits(variables: dict, images: jax.Array, cfg: StepConfig) -> jax.Array:
    """Inference-mode logits, as evaluation scores them (and prediction ranks them): with
    `eval_flip_tta`, the mean (float32) of the image's and its horizontal mirror's."""
    logits, _ = _split_outputs(cfg.apply_fn(variables, images, train=False))
    if cfg.eval_flip_tta:  # test-time augmentation: average with the mirror image's logits
        mirrored, _ = _split_outputs(cfg.apply_fn(variables, images[:, :, ::-1], train=False))
        logits = (logits.astype(jnp.float32) + mirrored.astype(jnp.float32)) / 2
    return logits


def predict_probs(variables: dict, images: jax.Array, cfg: StepConfig) -> jax.Array:
    """Class probabilities for a batch of preprocessed images, from `eval_logits`."""
    return jax.nn.softmax(eval_logits(variables, images, cfg).astype(jnp.float32), axis=-1)
