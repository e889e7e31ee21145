"""cnn_jax.onednn: oneDNN's convolutions equal XLA's, in values and both gradients, for every
shape the models use (strides, padding, 1x1, 5x5, odd sizes), inside jit and under grad; the
routing in cnn_jax.ops takes them only where they apply; the switch and a failed build fall back
to XLA with one clear message."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import models, onednn, ops

NHWC = ("NHWC", "HWIO", "NHWC")
needs_onednn = pytest.mark.skipif(
    not onednn.available(), reason="oneDNN convolutions not built here (make venv builds them)")


def _xla(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC,
                                    precision=lax.Precision.HIGHEST)


@needs_onednn
@pytest.mark.parametrize("shape,kernel,strides,pads", [
    ((8, 32, 32, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1))),  # CIFAR ResNet stage 1
    ((8, 32, 32, 16), (3, 3, 16, 32), (2, 2), ((1, 1), (1, 1))),  # stage change, stride 2
    ((8, 32, 32, 16), (1, 1, 16, 32), (2, 2), ((0, 0), (0, 0))),  # 1x1 projection shortcut
    ((4, 8, 8, 64), (1, 1, 64, 256), (1, 1), ((0, 0), (0, 0))),   # bottleneck 1x1 expansion
    ((3, 9, 7, 3), (3, 3, 3, 8), (1, 1), ((1, 1), (1, 1))),       # RGB, odd sizes
    ((2, 14, 14, 6), (5, 5, 6, 16), (1, 1), ((0, 0), (0, 0))),    # LeNet conv2
    ((2, 11, 10, 4), (3, 2, 4, 5), (2, 1), ((0, 2), (1, 0))),     # asymmetric everything
])
def test_values_and_gradients_equal_xla(shape, kernel, strides, pads):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, kernel) * 0.3
    want = _xla(x, w, strides, pads)
    got = jax.jit(onednn.conv, static_argnums=(2, 3))(x, w, strides, pads)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, want.shape)

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w) * g)

    got_grads = jax.jit(jax.grad(loss(lambda x, w: onednn.conv(x, w, strides, pads)),
                                 argnums=(0, 1)))(x, w)
    want_grads = jax.grad(loss(lambda x, w: _xla(x, w, strides, pads)), argnums=(0, 1))(x, w)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


@needs_onednn
def test_ops_routes_float32_nhwc_convolutions_to_onednn(monkeypatch):
    x = jnp.ones((2, 8, 8, 16))
    w = jnp.ones((3, 3, 16, 16))

    def hlo(x, w, **kw):
        fn = lambda x, w: ops.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                                   **kw)
        return jax.jit(fn).lower(x, w).as_text()

    assert "cnn_jax_onednn_conv_Forward" in hlo(x, w)
    # what oneDNN does not take here stays XLA's
    assert "cnn_jax_onednn" not in hlo(x, w, rhs_dilation=(2, 2))
    assert "cnn_jax_onednn" not in hlo(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    monkeypatch.setattr(ops, "CPU_ONEDNN_CONVS", False)
    assert "cnn_jax_onednn" not in hlo(x, w)


@needs_onednn
def test_resnet_train_step_gradients_equal_with_and_without_onednn(monkeypatch):
    model = models.build("resnet20", num_classes=10, widths=(4, 8, 8))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)

    def grads():
        def loss(params):
            out, _ = model.apply({**variables, "params": params}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.sum(out ** 2)
        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    text = jax.jit(lambda v: model.apply(v, x, train=False)).lower(variables).compile().as_text()
    # every convolution, the RGB stem included (in inference with BatchNorm folded in)
    assert text.count('custom_call_target="cnn_jax_onednn_conv_ForwardBias"') == 19, text
    with_onednn = grads()
    monkeypatch.setattr(ops, "CPU_ONEDNN_CONVS", False)
    without = grads()
    np.testing.assert_allclose(with_onednn[0], without[0], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(with_onednn[1]), jax.tree.leaves(without[1])):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(b))))


@needs_onednn
@pytest.mark.parametrize("relu,residual", [(True, False), (False, False), (True, True),
                                           (False, True)])
@pytest.mark.parametrize("shape,kernel,strides,pads", [
    ((4, 16, 16, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1))),
    ((4, 16, 16, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),
    ((3, 9, 7, 4), (1, 1, 4, 6), (1, 1), ((0, 0), (0, 0))),
])
def test_conv_bias_relu_residual_equal_the_separate_steps(shape, kernel, strides, pads, relu,
                                                          residual):
    kx, kw, kb, kr, kg = jax.random.split(jax.random.PRNGKey(7), 5)
    x, w = jax.random.normal(kx, shape), jax.random.normal(kw, kernel)
    b = jax.random.normal(kb, kernel[-1:])
    out_shape = onednn.output_shape(shape, kernel, strides, pads)
    r = jax.random.normal(kr, out_shape) if residual else None
    g = jax.random.normal(kg, out_shape)

    def reference(x, w, b, r):
        y = _xla(x, w, strides, pads) + b + (0.0 if r is None else r)
        return jnp.maximum(y, 0.0) if relu else y

    def fused(x, w, b, r):
        return onednn.conv_bias(x, w, b, r, strides, pads, relu)

    for f in (fused, jax.jit(fused)):
        np.testing.assert_allclose(f(x, w, b, r), reference(x, w, b, r), rtol=1e-5, atol=1e-5)
    argnums = (0, 1, 2, 3) if residual else (0, 1, 2)
    grads = [jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums)(x, w, b, r)
             for f in (fused, reference)]
    for a, want in zip(*grads):
        np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


@needs_onednn
@pytest.mark.parametrize("name,shape,fused_calls", [
    ("resnet20", (4, 16, 16, 3), 19),   # basic blocks, option-A shortcuts
    ("resnet18", (2, 32, 32, 3), 20),   # option-B projections
    ("resnet50", (2, 32, 32, 3), 53),   # bottlenecks
    ("plain20", (4, 16, 16, 3), 19),    # no shortcut
])
def test_inference_folds_batchnorm_relu_and_shortcut_into_onednn(monkeypatch, name, shape,
                                                                 fused_calls):
    """Inference with BatchNorm's running averages: every conv-BatchNorm[-add]-ReLU is one
    oneDNN primitive, with the outputs and the input gradient of the separate steps."""
    kw = {"widths": (4, 8, 8)} if name in ("resnet20", "plain20") else {}
    model = models.build(name, num_classes=10, **kw)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    noise = lambda tree, seed: jax.tree.map(  # noqa: E731
        lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(seed), a.shape), tree)
    variables = {"params": noise(variables["params"], 2),
                 "batch_stats": jax.tree.map(jnp.abs, noise(variables["batch_stats"], 3))}

    def run():
        apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
        grad = jax.jit(jax.grad(lambda x: jnp.sum(model.apply(variables, x, train=False) ** 2)))
        return apply.lower(variables, x).as_text(), apply(variables, x), grad(x)
    text, out, dx = run()
    assert text.count("cnn_jax_onednn_conv_ForwardBias") == fused_calls
    monkeypatch.setattr(ops, "CPU_FUSED_INFERENCE_CONV_BN", False)
    text_off, want, want_dx = run()
    assert "ForwardBias" not in text_off
    scale = float(jnp.max(jnp.abs(want)))
    assert scale > 0
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(want_dx))))


def test_switch_off_and_failed_build_fall_back_to_xla(tmp_path):
    probe = (
        "import warnings, jax.numpy as jnp\n"
        "from cnn_jax import onednn, ops\n"
        "x = jnp.ones((1, 6, 6, 8)); w = jnp.ones((3, 3, 8, 8))\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    y = ops.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=("
        "'NHWC', 'HWIO', 'NHWC'))\n"
        "print(onednn.available(), float(y[0, 2, 2, 0]), [str(m.message) for m in seen])\n")
    off = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, env={**_env(), "CNN_JAX_ONEDNN": "0"})
    assert off.returncode == 0, off.stderr
    assert off.stdout.startswith("False 72.0 []"), off.stdout  # 3*3*8 ones, no warning
    missing = tmp_path / "missing"  # a directory that does not exist
    broken = ("import cnn_jax.onednn as o, pathlib\n"
              f"o.library_path = lambda: pathlib.Path({str(missing / 'lib.so')!r})\n"
              f"o._dnnl_lib = lambda: pathlib.Path({str(missing / 'libdnnl.so.3')!r})\n")
    bad = subprocess.run([sys.executable, "-c", broken + probe], capture_output=True, text=True,
                         timeout=120, env=_env())
    assert bad.returncode == 0, bad.stderr
    assert bad.stdout.startswith("False 72.0 "), bad.stdout
    assert "oneDNN convolutions unavailable, using XLA's" in bad.stdout
    assert "onednn-cpu-gomp" in bad.stdout  # names the fix


def _env():
    return {k: v for k, v in os.environ.items() if k != "CNN_JAX_ONEDNN"}


@pytest.mark.skipif(not os.environ.get("CNN_JAX_EXPECT_ONEDNN"),
                    reason="only where the environment promises a build (.ci/run sets it)")
def test_onednn_is_built_where_expected():
    assert onednn.available(), "python -m cnn_jax.onednn build says why"
    assert onednn.library_path().exists()
