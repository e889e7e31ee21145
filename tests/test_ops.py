"""cnn_jax.ops: the XLA CPU formulations equal XLA's convolution and max pooling, values and
gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import layers, ops

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _xla_formulations(monkeypatch):
    """These tests cover the XLA formulations; oneDNN's convolutions are tests/test_onednn.py's."""
    monkeypatch.setattr(ops, "CPU_ONEDNN_CONVS", False)


def _ref_conv(x, w, pads):
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC,
                                    precision=lax.Precision.HIGHEST)


def _assert_conv_matches_xla(shape, kernel, pads, seed):
    """ops.conv_general_dilated equals XLA's convolution in values and in both gradients."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, kernel)
    dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    got = ops.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dims)
    want = _ref_conv(x, w, pads)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, want.shape)

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w) * g)

    got_grads = jax.grad(loss(lambda x, w: ops.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=dims)), argnums=(0, 1))(x, w)
    want_grads = jax.grad(loss(lambda x, w: _ref_conv(x, w, pads)), argnums=(0, 1))(x, w)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    return x, w, dims, g


@pytest.mark.parametrize("shape,kernel,pads", [
    ((4, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2))),   # LeNet conv1
    ((3, 9, 7, 3), (3, 3, 3, 16), ((1, 1), (1, 1))),    # an RGB stem
    ((2, 8, 8, 2), (3, 2, 2, 5), ((0, 2), (1, 0))),      # asymmetric padding and kernel
])
def test_shifted_conv_matches_xla_values_and_gradients(shape, kernel, pads):
    dims = lax.conv_dimension_numbers(shape, kernel, NHWC)
    assert ops.use_shifted_conv(shape, kernel, (1, 1), pads, None, None, dims, 1)
    _assert_conv_matches_xla(shape, kernel, pads, seed=0)


def test_shifted_conv_only_where_it_pays():
    dims = lax.conv_dimension_numbers((1, 8, 8, 1), (3, 3, 1, 4), NHWC)
    pads = ((1, 1), (1, 1))
    assert not ops.use_shifted_conv((1, 8, 8, 1), (3, 3, 1, 4), (2, 2), pads, None, None, dims, 1)
    assert not ops.use_shifted_conv((1, 8, 8, 16), (3, 3, 16, 4), (1, 1), pads, None, None, dims, 1)
    assert not ops.use_shifted_conv((1, 8, 8, 1), (3, 3, 1, 4), (1, 1), "SAME", None, None, dims, 1)
    assert not ops.use_shifted_conv((1, 8, 8, 1), (3, 3, 1, 4), (1, 1), pads, None, (2, 2), dims, 1)


def test_bfloat16_conv_accumulates_in_float32():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 12, 1)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.PRNGKey(2), (5, 5, 1, 3)).astype(jnp.bfloat16)
    pads = ((2, 2), (2, 2))
    dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    got = ops.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dims)
    assert got.dtype == jnp.bfloat16
    want = _ref_conv(x.astype(jnp.float32), w.astype(jnp.float32), pads)
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2e-2, atol=2e-2)


def test_conv_layer_uses_it_and_keeps_its_parameters():
    conv = layers.Conv(6, (5, 5), padding=2)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 28, 28, 1))
    variables = conv.init(jax.random.PRNGKey(0), x)
    assert variables["params"]["kernel"].shape == (5, 5, 1, 6)
    plain = nn.Conv(6, (5, 5), padding=2)
    np.testing.assert_allclose(conv.apply(variables, x), plain.apply(variables, x),
                               rtol=1e-5, atol=1e-5)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(conv.apply)(variables, x))


@pytest.mark.parametrize("shape,window,strides,pads", [
    ((2, 28, 28, 6), (2, 2), (2, 2), ((0, 0), (0, 0))),    # the reshape form
    ((2, 9, 9, 3), (3, 3), (2, 2), ((0, 0), (0, 0))),      # overlapping: reduce_window
    ((2, 7, 7, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),      # not dividing: reduce_window
    ((2, 8, 8, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),      # padded: reduce_window
])
def test_max_pool_matches_flax_values_and_gradients(shape, window, strides, pads):
    x = jax.random.normal(jax.random.PRNGKey(4), shape)  # no ties: one subgradient
    got = ops.max_pool(x, window, strides, pads)
    want = nn.max_pool(x, window, strides, padding=pads)
    np.testing.assert_array_equal(got, want)
    g = jax.random.normal(jax.random.PRNGKey(5), want.shape)
    gx = jax.grad(lambda x: jnp.sum(ops.max_pool(x, window, strides, pads) * g))(x)
    wx = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, strides, padding=pads) * g))(x)
    np.testing.assert_allclose(gx, wx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("x", [
    jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0),              # three windows of equal zeros
    jnp.ones((2, 6, 6, 3)),                                       # every window a tie
    jnp.round(jax.random.normal(jax.random.PRNGKey(7), (2, 8, 6, 4))),  # ties among integers
])
def test_max_pool_gradient_with_ties_goes_to_the_first_maximum_as_xla(x):
    """Ties are common on real images (a constant background); the gradient must go where XLA's
    reduce_window gradient sends it, to the first maximum of each window in row-major order."""
    g = jax.random.normal(jax.random.PRNGKey(8), (x.shape[0], x.shape[1] // 2, x.shape[2] // 2,
                                                 x.shape[3]))
    pads = ((0, 0), (0, 0))
    got = jax.grad(lambda x: jnp.sum(ops.max_pool(x, (2, 2), (2, 2), pads) * g))(x)
    want = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2), padding=pads) * g))(x)
    np.testing.assert_array_equal(got, want)


def _block_loss(x, w1, w2, scale):
    """Two 3x3 convs with a BatchNorm-like centring, ReLU and a residual add between them: the
    elementwise chain XLA:CPU would re-fuse into the weight-gradient transposes."""
    dn = ("NHWC", "HWIO", "NHWC")
    y = ops.conv_general_dilated(x, w1, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    y = (y - y.mean(axis=(0, 1, 2))) * scale
    y = jax.nn.relu(y) + x
    z = ops.conv_general_dilated(y, w2, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    return jnp.sum(z * z)


def _with_boundary(on, fn, *args):
    old = ops.CPU_CONV_INPUT_BOUNDARY
    ops.CPU_CONV_INPUT_BOUNDARY = on
    try:
        compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile()  # a fresh trace
        return compiled.as_text(), compiled(*args)
    finally:
        ops.CPU_CONV_INPUT_BOUNDARY = old


def test_conv_input_boundary_is_bit_identical_and_kept_by_xla():
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(ks[0], (4, 8, 8, 16))
    w1 = jax.random.normal(ks[1], (3, 3, 16, 16)) * 0.1
    w2 = jax.random.normal(ks[2], (3, 3, 16, 16)) * 0.1
    grad = jax.value_and_grad(_block_loss, argnums=(0, 1, 2, 3))
    hlo_on, (v_on, g_on) = _with_boundary(True, grad, x, w1, w2, 1.5)
    hlo_off, (v_off, g_off) = _with_boundary(False, grad, x, w1, w2, 1.5)
    # 16 input channels (>= BOUNDARY_MIN_CHANNELS) x 9 taps > MAX_SHIFTED_TERMS: both convs are
    # XLA's, so both inputs get one
    assert hlo_on.count(" conditional(") >= 2 and hlo_off.count(" conditional(") == 0
    assert np.array_equal(v_on, v_off)
    for a, b in zip(g_on, g_off):
        assert np.array_equal(a, b)


def test_no_conv_input_boundary_below_the_channel_floor():
    x = jnp.ones((2, 8, 8, 6))  # LeNet-5's second convolution: 6 input channels, 150 taps
    w = jnp.ones((5, 5, 6, 16))
    hlo, _ = _with_boundary(True, lambda x, w: ops.conv_general_dilated(
        x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
    assert " conditional(" not in hlo


def test_conv_input_boundary_keeps_nan_and_empty_inputs():
    x = jnp.array([[jnp.nan, 1.0], [2.0, 3.0]])  # first element NaN: the x + 0 branch
    y = jax.jit(ops.conv_input_boundary)(x)
    assert np.array_equal(np.asarray(y), np.asarray(x), equal_nan=True)
    z = jax.jit(ops.conv_input_boundary)(jnp.array([1.0, -0.0]))  # predicate true: x as it is
    assert np.signbit(z[1])
    assert ops.conv_input_boundary(jnp.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("shape,kernel,pads", [
    ((4, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0))),  # LeNet conv2
    ((3, 9, 7, 4), (3, 3, 4, 5), ((1, 1), (1, 1))),     # padded, non-square input
    ((2, 8, 8, 5), (4, 3, 5, 3), ((0, 2), (1, 0))),      # asymmetric padding and kernel
])
def test_col2im_input_gradient_matches_xla(shape, kernel, pads):
    dims = lax.conv_dimension_numbers(shape, kernel, NHWC)
    assert ops.use_col2im_input_grad(shape, kernel, (1, 1), pads, None, None, dims, 1)
    assert not ops.use_shifted_conv(shape, kernel, (1, 1), pads, None, None, dims, 1)
    x, w, dims, g = _assert_conv_matches_xla(shape, kernel, pads, seed=6)
    # and the custom VJP is really in the graph: its backward holds the column contraction
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(ops.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=dims) * g)))(x))
    assert "custom_vjp_call" in jaxpr


def test_col2im_input_gradient_only_where_it_pays():
    dims = lax.conv_dimension_numbers((1, 8, 8, 6), (3, 3, 6, 4), NHWC)
    pads = ((1, 1), (1, 1))
    use = ops.use_col2im_input_grad
    assert use((128, 14, 14, 6), (5, 5, 6, 16), (1, 1), ((0, 0), (0, 0)), None, None, dims, 1)
    assert not use((1, 8, 8, 16), (3, 3, 16, 4), (1, 1), pads, None, None, dims, 1)  # channels
    assert not use((1, 8, 8, 1), (5, 5, 1, 4), (1, 1), pads, None, None, dims, 1)  # shifted form
    assert not use((1, 8, 8, 6), (3, 3, 6, 4), (2, 2), pads, None, None, dims, 1)  # stride
    assert not use((1, 8, 8, 6), (3, 3, 6, 4), (1, 1), "SAME", None, None, dims, 1)
    # 128 x 32 x 32 x 8 at 3x3: a 37 MB column tensor, where XLA's transposed conv is faster
    assert not use((128, 32, 32, 8), (3, 3, 8, 8), (1, 1), pads, None, None, dims, 1)
