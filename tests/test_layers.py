"""Layers: the lecture's worked examples, shape arithmetic, normalisation, residual blocks."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers as L

KEY = jax.random.key(0)
# Unoptimised XLA CPU code compiles ~10x faster (the fused PRNG of initialisers is slow to
# optimise); these tests run each program once, so compile time dominates.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _init(module: nn.Module, x):
    """module.init under a fast-compiling jit."""
    return jax.jit(module.init, compiler_options=FAST)(KEY, x)


def _apply(module: nn.Module, variables, x, **kw):
    """module.apply under a fast-compiling jit; results as numpy (no eager jnp ops in tests)."""
    out = jax.jit(functools.partial(module.apply, **kw), compiler_options=FAST)(variables, x)
    return jax.tree.map(np.asarray, out)


def _conv_apply(kernel: np.ndarray, x: np.ndarray, **kw) -> np.ndarray:
    """Run our Conv layer (no bias) with the given HWIO kernel on an NHWC input."""
    conv = L.Conv(kernel.shape[-1], kernel.shape[:2], use_bias=False, padding=kw.pop("padding", 0),
                  **kw)
    return _apply(conv, {"params": {"kernel": kernel}}, x)


# ------------------------------------------------------------------ lecture worked examples


def test_cross_correlation_worked_example():
    x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    k = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1)
    y = _conv_apply(k, x)
    np.testing.assert_allclose(y[0, :, :, 0], [[19, 25], [37, 43]])


def test_output_size_formula_matches_layer_over_grid():
    checked = rejected = 0
    for n, k, p, s in itertools.product([1, 2, 5, 7, 12], [1, 2, 3, 5], [0, 1, 2], [1, 2, 3]):
        expected = (n + 2 * p - k) // s + 1
        conv = L.Conv(2, (k, k), strides=s, padding=p)
        x = jax.ShapeDtypeStruct((1, n, n, 1), jnp.float32)
        if n + 2 * p < k:
            with pytest.raises(ValueError, match=f"input size {n} is too small"):
                jax.eval_shape(conv.init, KEY, x)
            rejected += 1
            continue
        out = jax.eval_shape(conv.init_with_output, KEY, x)[0]
        assert out.shape == (1, expected, expected, 2), (n, k, p, s)
        assert L.output_size(n, k, s, p) == expected
        checked += 1
    assert checked > 100 and rejected > 5


def test_output_size_helper_rejects_and_names_layer():
    with pytest.raises(ValueError) as err:
        L.output_size(2, 3, 2, 0, layer="features/pool2")
    msg = str(err.value)
    assert "features/pool2" in msg and "input size 2" in msg and "= 0 < 1" in msg


def test_pool_output_sizes_and_ceil_mode():
    def out_shape(pool, n):
        x = jax.ShapeDtypeStruct((1, n, n, 1), jnp.float32)
        return jax.eval_shape(pool.apply, {}, x).shape

    assert out_shape(L.MaxPool(3, 2), 112) == (1, 55, 55, 1)
    assert out_shape(L.MaxPool(3, 2, ceil_mode=True), 112) == (1, 56, 56, 1)  # PyTorch's rule
    assert out_shape(L.MaxPool(2, 2, ceil_mode=True), 7) == (1, 4, 4, 1)
    assert out_shape(L.MaxPool(3, 2, padding=1, ceil_mode=True), 6) == (1, 4, 4, 1)
    # ceil gives 4, but the 4th window would start in the right padding: PyTorch drops it.
    assert out_shape(L.MaxPool(2, 2, padding=1, ceil_mode=True), 5) == (1, 3, 3, 1)
    assert out_shape(L.AvgPool(2), 6) == (1, 3, 3, 1)
    with pytest.raises(ValueError, match="MaxPool"):
        out_shape(L.MaxPool(3, 2), 2)
    x = np.arange(49.0, dtype=np.float32).reshape(1, 7, 7, 1)
    y = _apply(L.MaxPool(2, 2, ceil_mode=True), {}, x)[0, :, :, 0]
    np.testing.assert_array_equal(y[-1], [43, 45, 47, 48])  # last window half outside the input


def test_multichannel_output_is_sum_over_input_channels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 5, 3)).astype(np.float32)
    k = rng.normal(size=(3, 3, 3, 1)).astype(np.float32)
    full = _conv_apply(k, x)
    parts = sum(_conv_apply(k[:, :, c:c + 1, :], x[..., c:c + 1]) for c in range(3))
    np.testing.assert_allclose(full, parts, rtol=1e-5, atol=1e-5)


def test_1x1_conv_is_per_pixel_dense():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    conv = _conv_apply(w.reshape(1, 1, 3, 5), x)
    dense = _apply(nn.Dense(5, use_bias=False), {"params": {"kernel": w}}, x)
    np.testing.assert_allclose(conv, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv[1, 2, 3], x[1, 2, 3] @ w, rtol=1e-5)


def test_max_pool_worked_example():
    x = np.array([[0.0, 1.0], [3.0, 4.0]], np.float32).reshape(1, 2, 2, 1)
    assert _apply(L.MaxPool(2), {}, x).item() == 4.0


def test_convolution_commutes_with_shifts_away_from_borders():
    rng = np.random.default_rng(2)
    x = np.zeros((1, 12, 12, 1), np.float32)
    x[:, 3:7, 2:6] = rng.normal(size=(1, 4, 4, 1))
    k = rng.normal(size=(3, 3, 1, 2)).astype(np.float32)
    shifted = np.roll(x, (2, 3), axis=(1, 2))
    y, y_shift = _conv_apply(k, x, padding=1), _conv_apply(k, shifted, padding=1)
    np.testing.assert_allclose(np.roll(y, (2, 3), axis=(1, 2)), y_shift, rtol=1e-5, atol=1e-6)
    assert np.abs(y).max() > 0.1


# ------------------------------------------------------------------ normalisation


def _bn(train: bool):
    return L.make_norm("batch", train=train)()


def test_batchnorm_train_normalises_each_channel_and_updates_running_stats():
    rng = np.random.default_rng(3)
    x = (rng.normal(3.0, 2.0, size=(8, 4, 4, 3)) * np.array([1, 5, 0.1])).astype(np.float32)
    variables = {"params": {"scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32)},
                 "batch_stats": {"mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}}
    y, updates = _apply(_bn(True), variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var(axis=(0, 1, 2)), rtol=1e-4)


def test_batchnorm_inference_uses_running_averages():
    x = np.arange(24.0, dtype=np.float32).reshape(2, 2, 2, 3)
    mean = np.array([1.0, -2.0, 0.5], np.float32)
    var = np.array([4.0, 0.25, 9.0], np.float32)
    variables = {"params": {"scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32)},
                 "batch_stats": {"mean": mean, "var": var}}
    y = _apply(_bn(False), variables, x)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5)


def test_batchnorm_with_gamma_sqrt_var_and_beta_mean_returns_input():
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 3.0, size=(16, 3, 3, 2)).astype(np.float32)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    params = {"scale": np.sqrt(var + 1e-5), "bias": mean}
    y, _ = _apply(_bn(True), {"params": params, "batch_stats": {"mean": mean * 0, "var": var * 0}},
                  x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4)
    y = _apply(_bn(False), {"params": params, "batch_stats": {"mean": mean, "var": var}}, x)
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4)


def test_layer_norm_works_on_any_channel_count():
    x = (np.random.default_rng(5).normal(size=(2, 4, 4, 6)) * 3 + 1).astype(np.float32)
    norm = L.make_norm("layer", train=True)()
    y, variables = jax.jit(norm.init_with_output, compiler_options=FAST)(KEY, x)
    assert y.shape == x.shape and set(variables) == {"params"}
    assert variables["params"]["scale"].shape == (6,)
    np.testing.assert_allclose(np.asarray(y).mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).var(axis=(1, 2, 3)), 1.0, rtol=1e-3)


def _group_norm_reference(x: np.ndarray, groups: int, eps: float = 1e-5) -> np.ndarray:
    """Wu & He 2018, eq. (1)-(3): statistics over (H, W, C / groups) per example and group."""
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


def test_group_norm_uses_the_configured_groups_not_one_channel_each():
    # 16 channels (a CIFAR ResNet's first stage) in 8 groups: each group pools 2 channels, so a
    # channel's own mean is not removed (InstanceNorm would make every channel mean 0).
    rng = np.random.default_rng(6)
    offsets = np.arange(16, dtype=np.float32) * 2.0  # every channel a different mean
    x = (rng.normal(size=(2, 5, 5, 16)) + offsets).astype(np.float32)
    norm = L.make_norm("group", train=True, num_groups=8)()
    y, variables = jax.jit(norm.init_with_output, compiler_options=FAST)(KEY, x)
    y = np.asarray(y)
    assert variables["params"]["scale"].shape == (16,)
    np.testing.assert_allclose(y, _group_norm_reference(x, 8), rtol=1e-4, atol=1e-4)
    instance = _group_norm_reference(x, 16)
    assert np.abs(y - instance).max() > 0.5  # far from InstanceNorm
    channel_means = y.mean(axis=(1, 2))
    assert np.abs(channel_means).min() > 0.5  # each channel keeps its offset within its pair
    np.testing.assert_allclose(channel_means.reshape(2, 8, 2).mean(-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("groups", [32, 3, 0])
def test_group_norm_refuses_a_group_count_that_does_not_divide_the_channels(groups):
    norm = L.make_norm("group", train=True, num_groups=groups)()
    x = jax.ShapeDtypeStruct((1, 4, 4, 16), jnp.float32)
    with pytest.raises(ValueError) as err:
        jax.eval_shape(norm.init, KEY, x)
    msg = str(err.value)
    assert f"16 channels do not split into norm_groups={groups} groups" in msg, msg
    assert "--config.model.norm_groups" in msg and "1, 2, 4, 8, 16" in msg and "\n" not in msg


def test_make_norm_rejects_unknown_kind():
    with pytest.raises(ValueError, match="norm='bn'.*'batch'"):
        L.make_norm("bn", train=True)
    assert L.make_norm("none", train=True) is None


def test_conv_block_bfloat16_compute_float32_params():
    block = L.ConvBlock(4, conv=L.make_conv(jnp.bfloat16),
                        norm=L.make_norm("batch", train=False, dtype=jnp.bfloat16))
    x = jax.ShapeDtypeStruct((1, 5, 5, 3), jnp.bfloat16)
    y, variables = jax.eval_shape(block.init_with_output, KEY, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert y.dtype == jnp.bfloat16


def test_adaptive_avg_pool_uses_torch_bins():
    x = np.arange(5.0, dtype=np.float32).reshape(1, 5, 1, 1)
    y = _apply(L.AdaptiveAvgPool((3, 1)), {}, x)
    # PyTorch bins for 5 -> 3: [0, 2), [1, 4), [3, 5)
    np.testing.assert_allclose(y[0, :, 0, 0], [0.5, 2.0, 3.5])
    x = np.random.default_rng(6).normal(size=(2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(_apply(L.AdaptiveAvgPool(1), {}, x)[:, 0, 0], x.mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_apply(L.AdaptiveAvgPool(3), {}, x)[:, 1, 2],
                               x[:, 2:4, 4:6].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    up = jax.eval_shape(L.AdaptiveAvgPool(7).apply, {},
                        jax.ShapeDtypeStruct((1, 1, 1, 2), jnp.float32))
    assert up.shape == (1, 7, 7, 2)


# ------------------------------------------------------------------ Inception and residual blocks


def _param_shapes(module, x, **kw):
    y, variables = jax.eval_shape(functools.partial(module.init_with_output, **kw), KEY, x)
    return jax.tree.map(lambda a: a.shape, variables["params"]), y


def test_inception_reduced_and_naive():
    x = jax.ShapeDtypeStruct((1, 8, 8, 192), jnp.float32)
    params, y = _param_shapes(L.InceptionBlock(64, 96, 128, 16, 32, 32), x)
    assert y.shape == (1, 8, 8, 64 + 128 + 32 + 32)
    assert params["b5x5"]["conv"]["kernel"] == (5, 5, 16, 32)
    assert params["b3x3_reduce"]["conv"]["kernel"] == (1, 1, 192, 96)
    assert params["pool_proj"]["conv"]["kernel"] == (1, 1, 192, 32)
    params, y = _param_shapes(L.InceptionBlock(64, features_3x3=128, features_5x5=32,
                                               reduced=False), x)
    assert y.shape == (1, 8, 8, 64 + 128 + 32 + 192)  # pool branch keeps all input channels
    assert set(params) == {"b1x1", "b3x3", "b5x5"}
    assert params["b5x5"]["conv"]["kernel"] == (5, 5, 192, 32)
    with pytest.raises(ValueError, match="reduce_3x3"):
        _param_shapes(L.InceptionBlock(64, 0, 128, 16, 32, 32), x)


def test_inception_torchvision_compat_kernel():
    x = jax.ShapeDtypeStruct((1, 8, 8, 192), jnp.float32)
    params, _ = _param_shapes(L.InceptionBlock(64, 96, 128, 16, 32, 32, kernel_5x5=3), x)
    assert params["b5x5"]["conv"]["kernel"] == (3, 3, 16, 32)


def test_shortcut_a_is_parameter_free_zero_padded_and_subsampled():
    x = np.random.default_rng(7).normal(size=(2, 8, 8, 4)).astype(np.float32)
    block = L.BasicBlock(8, 2, shortcut="A")
    variables = jax.tree.map(np.array, _init(block, x))  # writable copies
    assert "shortcut" not in variables["params"]
    # Zero the residual branch's last conv: output = relu(shortcut(x)).
    for leaf in variables["params"]["conv2"]["conv"].values():
        leaf[...] = 0
    y = _apply(block, variables, x)
    np.testing.assert_allclose(y[..., :4], np.maximum(x[:, ::2, ::2, :], 0), rtol=1e-6)
    np.testing.assert_allclose(y[..., 4:], 0.0)


@pytest.mark.parametrize("shortcut,same_shape_proj,changed_proj", [
    ("A", False, False), ("B", False, True), ("C", True, True)])
def test_shortcut_options_projection_placement(shortcut, same_shape_proj, changed_proj):
    x = jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32)
    norm = L.make_norm("batch", train=False)
    same, _ = _param_shapes(L.BasicBlock(16, 1, norm=norm, shortcut=shortcut), x)
    changed, y = _param_shapes(L.BasicBlock(32, 2, norm=norm, shortcut=shortcut), x)
    assert ("shortcut" in same) == same_shape_proj
    assert ("shortcut" in changed) == changed_proj
    if changed_proj:
        assert changed["shortcut"]["conv"]["kernel"] == (1, 1, 16, 32)
        assert changed["shortcut"]["norm"]["scale"] == (32,)
    assert y.shape == (1, 4, 4, 32)


def test_plain_twin_has_no_shortcut_and_differs():
    x = np.random.default_rng(8).normal(size=(1, 6, 6, 8)).astype(np.float32)
    res, plain = L.BasicBlock(8, shortcut="C"), L.BasicBlock(8, shortcut="C", residual=False)
    vr = _init(res, x)
    assert "shortcut" in vr["params"]
    assert "shortcut" not in _param_shapes(plain, x)[0]
    vr_no_short = {"params": {k: v for k, v in vr["params"].items() if k != "shortcut"}}
    assert not np.allclose(_apply(res, vr, x), _apply(plain, vr_no_short, x))


@pytest.mark.parametrize("on_1x1", [False, True])
def test_bottleneck_stride_placement_and_zero_init(on_1x1):
    x = jax.ShapeDtypeStruct((1, 8, 8, 64), jnp.float32)
    norm = L.make_norm("batch", train=False)
    block = L.BottleneckBlock(16, 2, norm=norm, stride_on_1x1=on_1x1, zero_init_last_bn=True)
    variables = jax.eval_shape(block.init, KEY, x)
    _, inter = jax.eval_shape(functools.partial(block.apply, capture_intermediates=True,
                                                mutable=["intermediates"]), variables, x)
    conv1_out = inter["intermediates"]["conv1"]["conv"]["__call__"][0].shape
    assert conv1_out == ((1, 4, 4, 16) if on_1x1 else (1, 8, 8, 16))
    assert variables["params"]["shortcut"]["conv"]["kernel"].shape == (1, 1, 64, 64)
    if on_1x1:  # values, once: the last BN of the branch starts at zero scale
        params = _init(block, np.zeros(x.shape, np.float32))["params"]
        assert np.all(np.asarray(params["conv3"]["norm"]["scale"]) == 0)
        assert np.all(np.asarray(params["conv2"]["norm"]["scale"]) == 1)


def test_shortcut_rejects_bad_option():
    with pytest.raises(ValueError, match="shortcut='D'"):
        jax.eval_shape(L.BasicBlock(8, shortcut="D").init, KEY,
                       jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.float32))
