"""ops.batch_norm_train / layers.BatchNorm: the same values, gradients and running statistics as
Flax's nn.BatchNorm, and Flax's own code wherever the custom VJP does not apply."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers, models, ops


def _bn_loss(cls, x, params, stats, weights, **kw):
    """A non-trivial function of the normalised output, with the new running statistics."""
    module = cls(use_running_average=False, momentum=0.9, **kw)

    def loss(params, x):
        y, new = module.apply({"params": params, "batch_stats": stats}, x,
                              mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * weights), new
    return jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x)


@pytest.mark.parametrize("shape,offset,spread", [
    ((8, 5, 5, 6), 1.0, 3.0),
    ((16, 3, 4, 3), 20.0, 0.5),   # a large mean next to a small spread: E[x^2] - E[x]^2
    ((32, 10), 0.0, 1.0),         # BatchNorm after a dense layer
])
def test_values_gradients_and_running_stats_equal_flax(shape, offset, spread):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape) * spread + offset
    channels = shape[-1]
    params = {"scale": jnp.linspace(0.5, 2.0, channels), "bias": jnp.linspace(-1.0, 1.0, channels)}
    stats = {"mean": jnp.full((channels,), 0.3), "var": jnp.full((channels,), 2.0)}
    weights = jax.random.normal(kw, shape)
    (want_loss, want_stats), want_grads = _bn_loss(nn.BatchNorm, x, params, stats, weights)
    (got_loss, got_stats), got_grads = _bn_loss(layers.BatchNorm, x, params, stats, weights)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((got_stats, got_grads)), jax.tree.leaves((want_stats,
                                                                               want_grads))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(b))))


def test_custom_vjp_is_taken_in_training_only():
    x = jnp.ones((4, 3, 3, 2))
    variables = layers.BatchNorm(use_running_average=True).init(jax.random.PRNGKey(0), x)

    def jaxpr(train, dtype=jnp.float32):
        module = layers.BatchNorm(use_running_average=not train)
        fn = lambda v, x: module.apply(v, x, mutable=["batch_stats"])  # noqa: E731
        return str(jax.make_jaxpr(fn)(variables, x.astype(dtype)))
    assert "custom_vjp_call" in jaxpr(train=True)
    assert "custom_vjp_call" not in jaxpr(train=False)
    assert "custom_vjp_call" not in jaxpr(train=True, dtype=jnp.bfloat16)


def test_switch_off_gives_flax_bit_for_bit(monkeypatch):
    monkeypatch.setattr(ops, "CPU_BATCHNORM_VJP", False)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 4, 4, 5))
    params = {"scale": jnp.ones(5), "bias": jnp.zeros(5)}
    stats = {"mean": jnp.zeros(5), "var": jnp.ones(5)}
    weights = jnp.ones(x.shape)
    want = _bn_loss(nn.BatchNorm, x, params, stats, weights)
    got = _bn_loss(layers.BatchNorm, x, params, stats, weights)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_same_variables_as_flax():
    """Checkpoints of either module load into the other: same names, shapes and initial values."""
    x = jnp.ones((2, 4, 4, 3))
    for train in (False, True):
        want = nn.BatchNorm(use_running_average=not train).init(jax.random.PRNGKey(0), x)
        got = layers.BatchNorm(use_running_average=not train).init(jax.random.PRNGKey(0), x)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)


def test_initialisation_takes_the_custom_vjp_and_gives_flax_output():
    """Training-mode init runs ops.batch_norm_train (a cheaper trace than Flax's formula): the
    same output as Flax's init, running averages left at their initial values."""
    x = jax.random.normal(jax.random.PRNGKey(6), (4, 3, 3, 5)) * 2 + 1
    init = lambda cls: cls(use_running_average=False).init_with_output(  # noqa: E731
        jax.random.PRNGKey(0), x)
    (got_y, got_vars), (want_y, want_vars) = init(layers.BatchNorm), init(nn.BatchNorm)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_vars), jax.tree.leaves(want_vars)):
        np.testing.assert_array_equal(a, b)
    module = layers.BatchNorm(use_running_average=False)
    assert "custom_vjp_call" in str(jax.make_jaxpr(
        lambda x: module.init(jax.random.PRNGKey(0), x))(x))


def test_cotangents_of_mean_and_variance_are_honoured():
    x = jax.random.normal(jax.random.PRNGKey(3), (6, 2, 2, 4)) + 0.5
    scale, bias = jnp.linspace(1, 2, 4), jnp.zeros(4)

    def reference(x, scale, bias):
        mean = jnp.mean(x, (0, 1, 2))
        var = jnp.maximum(jnp.mean(x * x, (0, 1, 2)) - mean * mean, 0.0)
        y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias
        return y, mean, var

    def loss(fn):
        def f(x, scale, bias):
            y, mean, var = fn(x, scale, bias)
            return jnp.sum(y * y * x) + jnp.sum(jnp.cos(mean)) + 3.0 * jnp.sum(var ** 2)
        return jax.grad(f, (0, 1, 2))
    got = loss(lambda *a: ops.batch_norm_train(*a, 1e-5))(x, scale, bias)
    want = loss(reference)(x, scale, bias)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_statistics_over_a_named_axis_equal_flax():
    """The cross-replica sums (`axis_name`), as pmap runs them, here over a vmapped axis of 4;
    tests/test_train_multidevice.py runs them across 8 devices."""
    xs = jax.random.normal(jax.random.PRNGKey(4), (4, 6, 3, 3, 5)) * 2 + 1
    weights = jax.random.normal(jax.random.PRNGKey(5), xs.shape)
    params = {"scale": jnp.linspace(0.5, 1.5, 5), "bias": jnp.linspace(-1, 1, 5)}
    stats = {"mean": jnp.zeros(5), "var": jnp.ones(5)}

    def run(cls):
        f = lambda x, w: _bn_loss(cls, x, params, stats, w, axis_name="replicas")  # noqa: E731
        return jax.vmap(f, axis_name="replicas")(xs, weights)
    got, want = run(layers.BatchNorm), run(nn.BatchNorm)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(b))))


def test_resnet_training_losses_equal_with_and_without_the_custom_vjp(monkeypatch):
    """Twenty SGD steps of a narrow ResNet-20 (BatchNorm after every convolution, batch
    statistics and running averages) reach the same losses either way, to float rounding."""
    model = models.build("resnet20", num_classes=10, widths=(4, 8, 8))
    kx, ky = jax.random.split(jax.random.PRNGKey(6))
    x = jax.random.normal(kx, (16, 12, 12, 3))
    labels = jax.random.randint(ky, (16,), 0, 10)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)

    def train():
        def loss(params, stats):
            logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            one_hot = jax.nn.one_hot(labels, 10)
            return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1)), new

        @jax.jit
        def step(params, stats):
            (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params, stats)
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
            return params, new["batch_stats"], value
        params, stats, losses = variables["params"], variables["batch_stats"], []
        for _ in range(20):
            params, stats, value = step(params, stats)
            losses.append(float(value))
        return np.array(losses), stats
    with_vjp, stats_vjp = train()
    monkeypatch.setattr(ops, "CPU_BATCHNORM_VJP", False)
    without, stats_flax = train()
    assert with_vjp[-1] < with_vjp[0] - 0.3, with_vjp  # it trains
    np.testing.assert_allclose(with_vjp, without, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats_vjp), jax.tree.leaves(stats_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
