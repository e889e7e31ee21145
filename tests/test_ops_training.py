"""Issue 15's "equal results" check: 300 training steps of LeNet-5 on real Fashion-MNIST with
cnn_jax.ops' CPU formulations (both convolutions on oneDNN where cnn_jax.onednn is built, else
a shifted-sum conv1 and conv2 with the col2im input gradient; reshape max pooling with its
first-maximum gradient) against the same steps on XLA's reference ops, from the same start on
the same batches.

While the two trajectories coincide (the first steps) their losses agree to float32 rounding.
Later, as in any network with max pooling and ReLU, a rounding difference eventually flips a
near-tie and the trajectories part, so the end is compared as results: the last 50 training
losses and the accuracy on 5,000 test images.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models, ops
from cnn_jax.data import sources
from cnn_jax.train.state import create_train_state
from cnn_jax.train.steps import StepConfig, train_step
from tests.helpers import data_config
from tests.test_data_fashion_mnist import needs_fmnist

STEPS, BATCH, LR = 300, 128, 0.02
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training split


def _arrays(split, n):
    x = np.asarray(split.images[:n], np.float32) / 255.0
    return (jnp.asarray((x - MEAN) / STD).reshape(-1, 28, 28, 1),
            jnp.asarray(split.labels[:n], jnp.int32))


def _train(images, labels, test_images, test_labels):
    model = models.build("lenet5", num_classes=10)
    tx = optax.sgd(LR, momentum=0.9)
    cfg = StepConfig(apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(LR),
                     num_classes=10)
    state = create_train_state(model, tx, 0, (28, 28, 1), False)
    step = jax.jit(lambda s, b: train_step(s, b, cfg))
    jaxpr = str(jax.make_jaxpr(step)(state, {"image": images[:BATCH], "label": labels[:BATCH]}))
    losses = []
    for i in range(STEPS):
        batch = {"image": images[i * BATCH:(i + 1) * BATCH],
                 "label": labels[i * BATCH:(i + 1) * BATCH]}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
        state.params, test_images)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_labels))
    return np.array(losses), accuracy, jaxpr


@needs_fmnist
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the formulations are CPU-only")
def test_lenet5_training_equals_the_reference_ops(tmp_path, monkeypatch):
    source = sources.resolve_source(data_config(tmp_path))
    data = (*_arrays(source.load("train"), STEPS * BATCH), *_arrays(source.load("test"), 5000))

    fast_losses, fast_accuracy, fast_jaxpr = _train(*data)
    monkeypatch.setattr(ops, "MAX_SHIFTED_TERMS", 0)
    monkeypatch.setattr(ops, "CPU_COL2IM_INPUT_GRAD", False)
    monkeypatch.setattr(ops, "CPU_ONEDNN_CONVS", False)
    monkeypatch.setattr(ops, "CPU_CONV_INPUT_BOUNDARY", False)
    monkeypatch.setattr(ops, "max_pool", lambda x, window, strides, pads: nn.max_pool(
        x, window, strides, padding=pads))
    ref_losses, ref_accuracy, ref_jaxpr = _train(*data)

    # the two runs took different paths: custom VJPs and reshape pooling against XLA's ops only
    assert "custom_vjp_call" in fast_jaxpr and "custom_vjp_call" not in ref_jaxpr
    assert "reduce_window_max" not in fast_jaxpr and "reduce_window_max" in ref_jaxpr
    # step by step to float32 rounding while the trajectories coincide
    np.testing.assert_allclose(fast_losses[:20], ref_losses[:20], rtol=1e-4, atol=1e-4)
    # both learned (from ~2.3 and 10%), to the same results
    assert ref_losses[-50:].mean() < 0.6 and ref_accuracy > 0.75, (ref_losses[-50:].mean(),
                                                                   ref_accuracy)
    assert abs(fast_losses[-50:].mean() - ref_losses[-50:].mean()) < 0.03
    assert abs(fast_accuracy - ref_accuracy) < 0.03, (fast_accuracy, ref_accuracy)
