"""Faster formulations of convolution and pooling for the XLA CPU backend, chosen from a profile
(issues 7 and 15).

Profile (LeNet-5 train step, batch 128, 2-core CPU, jax 0.10.2; benchmarks/RESULTS.md):
- A convolution with few input channels (LeNet's 1 -> 6, 5x5) runs at ~1 GMAC/s in XLA:CPU's
  conv kernels (Eigen or YNNPACK): 12 CPU-ms of a 34 CPU-ms step. Written as a sum of
  kh*kw*c_in shifted slices times weight rows, XLA fuses it into one loop: ~2.6 CPU-ms, same
  numbers to float32 rounding. Its gradient keeps XLA's convolution transposes (fast here).
- Max pooling's gradient (`select_and_scatter`) costs ~10 CPU-ms per 128x28x28x6 pooling; for
  non-overlapping windows (window == stride, no padding, sizes divisible) a reshape + max gives
  the same output. Its custom VJP keeps, from the forward pass, the window position of the first
  maximum (int8) and sends the gradient there, as `select_and_scatter` does: one elementwise pass.
  jnp.max's own rule splits the gradient between equal maxima instead, and on real images equal
  maxima are common (a constant background gives equal conv outputs): over 60 LeNet-5 steps on
  Fashion-MNIST its losses drifted up to 0.19 from those of XLA's reduce_window pooling, while
  the first-maximum rule matched them bit for bit (benchmarks/RESULTS.md, issue 15); it was also
  1.17x faster per LeNet-5 training step.
- A weight gradient on XLA:CPU is an Eigen convolution over the layer's input transposed to
  (C, H, W, N). XLA fuses the input's elementwise producers (BatchNorm, ReLU, residual adds) into
  that transpose and recomputes them there, at a transposed access pattern: on ResNet-20 the
  transposes took 61% of the labelled op time (issue 15). `optimization_barrier` does not stop it
  (XLA:CPU drops barriers before fusion); a `lax.cond` whose both branches return the input does,
  because fusion does not cross a conditional. `conv_input_boundary` puts one on the input of each
  XLA convolution with at least BOUNDARY_MIN_CHANNELS input channels on the CPU backend, so the
  input is computed once and the transpose reads it. Values and gradients are bit-identical
  (checked by the test suite). Interleaved A/B (benchmarks/ab_conv_boundary.py, AVX-512 AMD EPYC):
  ResNet-20 training 1.38x, ResNet-56 2.18x, ResNet-56 at widths 8/16/32 1.47x (1.11x with the
  8-channel stage left out), inference unchanged; on LeNet-5, whose one XLA convolution has 6
  input channels fed by a pooling, it cost 6%, hence the floor of 8 channels.
- The input gradient of a convolution with few input channels (LeNet's conv2, 6 -> 16, 5x5) is
  an Eigen transposed convolution with few output features: 3.1 ms of a ~10 ms LeNet-5 step.
  Written as one dot over the output channels (to kh*kw*c_in columns per pixel) and a col2im
  that XLA fuses into one loop, it takes 1.3 ms while the column tensor fits in the caches; past
  ~20-30 MB it is slower, hence COL2IM_MAX_BYTES (benchmarks/probe_col2im.py). LeNet-5 training
  1.07x in an interleaved A/B (issue 15). Equal to XLA's gradient to float32 rounding; the
  weight gradient stays XLA's.
- Before all of these: every float32 NHWC convolution without dilation or groups runs on
  oneDNN where `cnn_jax.onednn` is built (a 3x3 convolution's forward pass, input and weight
  gradient 1.1-4.8x faster per op than XLA's; see that module and benchmarks/RESULTS.md for
  whole steps), LeNet's conv1 and the RGB stems included. The formulations above serve the
  convolutions left to XLA (oneDNN off or not built, other dtypes).
- With the convolutions on oneDNN, BatchNorm is most of what is left: autodiff of Flax's formula
  leaves XLA a backward pass that materialises x - mean as a tensor of its own before reducing
  and scaling it (one more read and write of every activation). `batch_norm_train` writes the
  gradient out, as two per-channel sums and one elementwise pass: ResNet-20 training 1.12x and
  ResNet-56 1.18x in interleaved A/Bs (benchmarks/RESULTS.md), the same numbers to float
  rounding (checked by the test suite). `norms.BatchNorm` uses it in training on the CPU
  backend.
- In inference BatchNorm uses its running averages, an affine map per channel: folded into the
  convolution's kernel and a bias, it disappears into the oneDNN convolution, which also adds a
  residual block's shortcut and applies the ReLU as it writes each output tile
  (`conv_bn_inference`, used by `layers.ConvBlock`). Interleaved A/B: ResNet-20 inference
  1.52x, ResNet-56 1.38x (benchmarks/RESULTS.md); outputs and input gradients equal those of
  the separate steps to float32 rounding (checked by the test suite).
`conv_general_dilated` is the drop-in `lax.conv_general_dilated` that `layers.Conv` uses: on the
CPU backend it takes, in that order, oneDNN, the shifted-slice form, the col2im input gradient,
and `lax.conv_general_dilated` behind the boundary; on other backends always the last, without
the boundary. Nothing in jax, flax or XLA offers these formulations or the boundary as an
option, hence this module.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding
from jax import lax

from cnn_jax import onednn, threefry

# jax.random's hash as one call on the CPU backend (same bits; cnn_jax/threefry.py).
threefry.install()

# Shifted-slice convolution when kh * kw * c_in is at most this (LeNet conv1: 25; a 3x3 RGB
# stem: 27). Beyond it XLA's conv kernels win.
MAX_SHIFTED_TERMS = 32
_NHWC = ("NHWC", "HWIO", "NHWC")
# Whether XLA convolutions on the CPU backend get `conv_input_boundary` on their input (read at
# trace time; benchmarks/ab_conv_boundary.py compares both settings).
CPU_CONV_INPUT_BOUNDARY = True
BOUNDARY_MIN_CHANNELS = 8
# Input gradient as one dot plus a col2im for stride-1 convolutions with at most this many input
# channels and a column tensor of at most this many bytes (LeNet conv2 at batch 128: 6 channels,
# 7.7 MB), where XLA's transposed convolution is slow; read at trace time.
CPU_COL2IM_INPUT_GRAD = True
COL2IM_MAX_CHANNELS = 8
COL2IM_MAX_BYTES = 12 * 2**20
# Max pooling's gradient to the first maximum of a window, as XLA's reduce_window gradient
# (False: jnp.max's rule, split between equal maxima; kept for benchmarks/ab_conv_boundary.py).
FIRST_MAX_POOL_GRAD = True
# float32 NHWC convolutions on oneDNN (cnn_jax/onednn.py) on the CPU backend where it is built;
# read at trace time.
CPU_ONEDNN_CONVS = True
# BatchNorm's training-mode normalisation on the CPU backend as `batch_norm_train` (one custom
# VJP, two passes over the activation each way) instead of autodiff of Flax's formula; read at
# trace time by `norms.BatchNorm`.
CPU_BATCHNORM_VJP = True
# Inference: a convolution followed by BatchNorm (running averages), optionally a residual add
# and ReLU, on oneDNN as one primitive with the BatchNorm folded into the kernel and a bias
# (`conv_bn_inference`); read at trace time by `layers.ConvBlock`.
CPU_FUSED_INFERENCE_CONV_BN = True


def _is_nhwc(dimension_numbers: Any) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == _NHWC


def _shifted_sum(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    kh, kw, cin, _ = w.shape
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))).astype(acc_dtype)
    h = xp.shape[1] - kh + 1
    wd = xp.shape[2] - kw + 1
    w = w.astype(acc_dtype)
    out = None
    for i in range(kh):
        for j in range(kw):
            for c in range(cin):
                term = xp[:, i:i + h, j:j + wd, c:c + 1] * w[i, j, c]
                out = term if out is None else out + term
    return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifted_conv(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return _shifted_sum(x, w, pads)


def _shifted_conv_fwd(x, w, pads):
    return _shifted_sum(x, w, pads), (x, w)


def _shifted_conv_bwd(pads, saved, g):
    x, w = saved
    _, vjp = jax.vjp(
        lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC), x, w)
    return vjp(g)


_shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)


def _plain_stride1_nhwc(rhs_shape: Sequence[int], window_strides: Any, padding: Any,
                        lhs_dilation: Any, rhs_dilation: Any, dimension_numbers: Any,
                        feature_group_count: int) -> bool:
    """A CPU-backend NHWC convolution with stride 1, no dilation, no groups, explicit padding."""
    if jax.default_backend() != "cpu" or not _is_nhwc(dimension_numbers):
        return False
    if len(rhs_shape) != 4 or feature_group_count != 1:
        return False
    if any(s != 1 for s in window_strides):
        return False
    for dilation in (lhs_dilation, rhs_dilation):
        if dilation is not None and any(v != 1 for v in dilation):
            return False
    return not isinstance(padding, str) and len(padding) == 2


def use_shifted_conv(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Any,
                     padding: Any, lhs_dilation: Any, rhs_dilation: Any, dimension_numbers: Any,
                     feature_group_count: int) -> bool:
    """Whether `conv_general_dilated` takes the shifted-slice form for these arguments."""
    if not _plain_stride1_nhwc(rhs_shape, window_strides, padding, lhs_dilation, rhs_dilation,
                               dimension_numbers, feature_group_count):
        return False
    kh, kw, cin, _ = rhs_shape
    return kh * kw * cin <= MAX_SHIFTED_TERMS


def _col2im_input_grad(g: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], ...],
                       in_hw: tuple[int, int]) -> jax.Array:
    """The input gradient of a stride-1 NHWC convolution as one contraction and a col2im.

    cols[n, h, w, i, j, c] = sum_o g[n, h, w, o] * w[i, j, c, o] is one dot over the output
    channels; input pixel (h + i, w + j) of the padded input then receives cols[n, h, w, i, j]: a
    sum of kh * kw padded slices, which XLA fuses into one loop. The padding is cropped at the end.
    """
    kh, kw, _, _ = w.shape
    (pt, pb), (pl, pr) = pads
    hp, wp = in_hw[0] + pt + pb, in_hw[1] + pl + pr
    ho, wo = g.shape[1], g.shape[2]
    acc_dtype = jnp.promote_types(g.dtype, jnp.float32)
    cols = jnp.einsum("nhwo,ijco->nhwijc", g.astype(acc_dtype), w.astype(acc_dtype))
    out = None
    for i in range(kh):
        for j in range(kw):
            term = jnp.pad(cols[:, :, :, i, j, :],
                           ((0, 0), (i, hp - ho - i), (j, wp - wo - j), (0, 0)))
            out = term if out is None else out + term
    return out[:, pt:pt + in_hw[0], pl:pl + in_hw[1], :].astype(g.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _col2im_conv(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


def _col2im_conv_fwd(x, w, pads):
    return _col2im_conv(x, w, pads), (x, w)


def _col2im_conv_bwd(pads, saved, g):
    x, w = saved
    _, w_vjp = jax.vjp(
        lambda w: lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC), w)
    return _col2im_input_grad(g, w, pads, x.shape[1:3]), w_vjp(g)[0]


_col2im_conv.defvjp(_col2im_conv_fwd, _col2im_conv_bwd)


def use_col2im_input_grad(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Any,
                          padding: Any, lhs_dilation: Any, rhs_dilation: Any,
                          dimension_numbers: Any, feature_group_count: int) -> bool:
    """Whether `conv_general_dilated` takes the col2im input gradient for these arguments."""
    if not _plain_stride1_nhwc(rhs_shape, window_strides, padding, lhs_dilation, rhs_dilation,
                               dimension_numbers, feature_group_count):
        return False
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        return False
    kh, kw, cin, _ = rhs_shape
    if kh * kw * cin <= MAX_SHIFTED_TERMS or cin > COL2IM_MAX_CHANNELS:
        return False
    (pt, pb), (pl, pr) = padding
    ho, wo = lhs_shape[1] + pt + pb - kh + 1, lhs_shape[2] + pl + pr - kw + 1
    return ho > 0 and wo > 0 and lhs_shape[0] * ho * wo * kh * kw * cin * 4 <= COL2IM_MAX_BYTES


def conv_input_boundary(x: jax.Array) -> jax.Array:
    """x, unchanged, behind a conditional that XLA's fusion passes do not cross.

    The predicate is true unless x's first element is NaN, and then x is returned as it is; the
    other branch returns x + 0, the same values (at most a -0.0 could read +0.0 there). The
    point is the boundary: x is materialised once instead of being recomputed inside every
    consumer fusion (see the module docstring). Under `vmap` with a batched x the conditional
    becomes a select and the boundary disappears, which changes speed only.
    """
    if x.size == 0:
        return x
    first = lax.slice(x.reshape(-1), (0,), (1,))[0]
    return lax.cond(first == first, lambda v: v, lambda v: v + jnp.zeros((), v.dtype), x)


def _explicit_pads(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Any,
                   padding: Any) -> tuple[tuple[int, int], ...] | None:
    """Padding as ((top, bottom), (left, right)) ints; None when it is not 2-D."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], window_strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return pads if len(pads) == 2 and len(tuple(window_strides)) == 2 else None


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         **kwargs) -> jax.Array:
    """`lax.conv_general_dilated`, with the CPU formulations of the module docstring."""
    if (not kwargs and precision is None and CPU_ONEDNN_CONVS and jax.default_backend() == "cpu"
            and _is_nhwc(dimension_numbers)):
        pads = _explicit_pads(lhs.shape, rhs.shape, window_strides, padding)
        if (pads is not None and lhs.dtype == rhs.dtype
                and onednn.supports(lhs.shape, rhs.shape, lhs.dtype, lhs_dilation, rhs_dilation,
                                    feature_group_count, pads)
                and onednn.available()):
            return onednn.conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)
    if not kwargs and use_shifted_conv(lhs.shape, rhs.shape, window_strides, padding,
                                       lhs_dilation, rhs_dilation, dimension_numbers,
                                       feature_group_count):
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        return _shifted_conv(lhs, rhs, pads)
    if not kwargs and precision is None and CPU_COL2IM_INPUT_GRAD and use_col2im_input_grad(
            lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count):
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        return _col2im_conv(lhs, rhs, pads)
    if (CPU_CONV_INPUT_BOUNDARY and jax.default_backend() == "cpu" and _is_nhwc(dimension_numbers)
            and lhs.shape[-1] >= BOUNDARY_MIN_CHANNELS):
        lhs = conv_input_boundary(lhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    **kwargs)


def _window_positions(shape: tuple[int, ...], kw: int) -> jax.Array:
    """Row-major position inside its window of every element of a (B, H', kh, W', kw, C) shape."""
    return (lax.broadcasted_iota(jnp.int32, shape, 2) * kw
            + lax.broadcasted_iota(jnp.int32, shape, 4))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _window_max(xr: jax.Array, kh: int, kw: int) -> jax.Array:
    """Max over axes 2 and 4 (of sizes kh, kw) of a (B, H/kh, kh, W/kw, kw, C) tensor."""
    return xr.max(axis=(2, 4))


def _window_max_fwd(xr, kh, kw):
    if jax.default_backend() == "cpu":  # computed once, not inside both reductions below
        xr = conv_input_boundary(xr)
    y = xr.max(axis=(2, 4))
    # the window position (row-major) of the first maximum: all the backward pass needs
    first = jnp.where(xr == y[:, :, None, :, None, :], _window_positions(xr.shape, kw),
                      kh * kw).min(axis=(2, 4))
    return y, first.astype(jnp.int8 if kh * kw < 127 else jnp.int32)


def _window_max_bwd(kh, kw, first, g):
    """The gradient to the first maximum of each window in row-major order, as XLA's
    `select_and_scatter` (reduce_window's gradient) sends it; one elementwise pass."""
    shape = (g.shape[0], g.shape[1], kh, g.shape[2], kw, g.shape[3])
    hit = _window_positions(shape, kw) == first.astype(jnp.int32)[:, :, None, :, None, :]
    return (jnp.where(hit, g[:, :, None, :, None, :], jnp.zeros((), g.dtype)),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: Sequence[tuple[int, int]]) -> jax.Array:
    """Max pooling over NHWC; reshape + max for non-overlapping, unpadded, dividing windows."""
    b, h, w, c = x.shape
    if (tuple(window) == tuple(strides) and all(p == (0, 0) for p in map(tuple, padding))
            and h % window[0] == 0 and w % window[1] == 0):
        kh, kw = window
        xr = x.reshape(b, h // kh, kh, w // kw, kw, c)
        return _window_max(xr, kh, kw) if FIRST_MAX_POOL_GRAD else xr.max(axis=(2, 4))
    return nn.max_pool(x, window, strides, padding=padding)


def _channel_sums(x: jax.Array, y: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Per-channel sums of x and of x*x (or of x*y), over every axis but the last."""
    axes = tuple(range(x.ndim - 1))
    return lax.reduce_sum(x, axes), lax.reduce_sum(lax.mul(x, x if y is None else y), axes)


def _global_count(x: jax.Array, axis_name: str | None) -> float | jax.Array:
    n = x.size // x.shape[-1]
    n = n * lax.psum(1, axis_name) if axis_name is not None else n
    return float(n) if isinstance(n, int) else lax.convert_element_type(n, x.dtype)


def _channels(v: jax.Array, x: jax.Array) -> jax.Array:
    """A per-channel vector broadcast to x's shape (channels last)."""
    return lax.broadcast_in_dim(v, x.shape, (x.ndim - 1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: str | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm over every axis but the last: (y, batch mean, batch variance).

    The same formula as Flax's `nn.BatchNorm` with its defaults (variance as E[x^2] - E[x]^2,
    clipped at 0, biased; statistics summed over `axis_name` when given), with the gradient
    written out: the forward pass reads x twice (the two sums, then y = x*a + b), the backward
    pass reads x and dy twice (the sums of dy and dy*x, then dx), where autodiff of the
    formula leaves XLA more passes (it materialises x - mean). Cotangents of the returned mean
    and variance are honoured.
    """
    return _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name)[0]


# The two passes below are written in lax, not in operators: each jnp operator is a jit of its
# own, which the trace enters and inlines, 684 of the 1,633 such calls in tracing ResNet-20's
# train step, paid on every launch (benchmarks/RESULTS.md, issue 15). The equations are those
# the operators made, so the numbers are too.

def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name):
    sums = _channel_sums(x)
    if axis_name is not None:
        sums = lax.psum(sums, axis_name)
    n = _global_count(x, axis_name)
    mean = lax.div(sums[0], n)
    var = lax.max(lax.sub(lax.div(sums[1], n), lax.mul(mean, mean)), 0.0)
    inv = lax.rsqrt(lax.add(var, epsilon))
    a = lax.mul(scale, inv)
    y = lax.add(lax.mul(x, _channels(a, x)), _channels(lax.sub(bias, lax.mul(mean, a)), x))
    return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, axis_name, saved, cotangents):
    x, mean, inv, scale = saved
    dy, dmean, dvar = cotangents
    # Per-channel sums of dy and dy*x (one pass over both), then dx = a*dy + k*x + c (a second):
    # x - mean is never materialised as a tensor of its own. The per-channel values travel as
    # a tuple (one psum of several operands), not stacked and indexed: the stacks, slices and
    # squeezes were a fifth of the traced step's equations.
    sum_dy, sum_dyx = _channel_sums(dy, x)
    dbias, dscale = sum_dy, lax.mul(inv, lax.sub(sum_dyx, lax.mul(mean, sum_dy)))
    # dx needs the sums over every replica; the parameters' gradients stay this replica's own.
    total = (dbias, dscale, dmean, dvar)
    if axis_name is not None:
        total = lax.psum(total, axis_name)
    t_bias, t_scale, t_mean, t_var = total
    n = _global_count(x, axis_name)
    a = lax.mul(scale, inv)
    k = lax.sub(lax.mul(2.0 / n, t_var), lax.mul(lax.div(lax.mul(a, inv), n), t_scale))
    c = lax.sub(lax.sub(lax.div(t_mean, n), lax.mul(lax.div(a, n), t_bias)), lax.mul(mean, k))
    dx = lax.add(lax.add(lax.mul(_channels(a, x), dy), lax.mul(_channels(k, x), x)),
                 _channels(c, x))
    return dx, dscale, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def conv_bn_inference(x: jax.Array, kernel: jax.Array, conv_bias: jax.Array | None,
                      norm: dict[str, jax.Array], epsilon: float, strides: Sequence[int],
                      padding: Any, relu: bool, residual: jax.Array | None = None
                      ) -> jax.Array | None:
    """ReLU?(BatchNorm(conv(x)) [+ residual]) with BatchNorm's running averages as one oneDNN
    convolution, or None.

    BatchNorm's y = (z - mean) * scale / sqrt(var + eps) + bias is folded into the kernel (times
    scale / sqrt(var + eps) per output channel) and a bias; oneDNN adds the bias and the residual
    and applies the ReLU as it writes the output, so no pass over the activation follows the
    convolution. The same numbers as the separate steps to float32 rounding. None (the caller
    runs the steps) off the CPU backend, for other dtypes or shapes, or without oneDNN.
    """
    if not (CPU_FUSED_INFERENCE_CONV_BN and CPU_ONEDNN_CONVS and jax.default_backend() == "cpu"):
        return None
    strides = tuple(int(v) for v in strides)
    padding = canonicalize_padding(padding, 2)
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
        return None  # CIRCULAR, CAUSAL: Flax pads the input itself
    pads = _explicit_pads(x.shape, kernel.shape, strides, padding)
    arrays = [x, kernel, *norm.values()] + [a for a in (conv_bias, residual) if a is not None]
    if (pads is None or any(a.dtype != jnp.float32 for a in arrays)
            or not onednn.supports(x.shape, kernel.shape, x.dtype, None, None, 1, pads)
            or (residual is not None and residual.shape != onednn.output_shape(
                x.shape, kernel.shape, strides, pads))
            or not onednn.available()):
        return None
    mul = norm["scale"] * lax.rsqrt(norm["var"] + epsilon)
    shift = norm["bias"] - norm["mean"] * mul
    if conv_bias is not None:
        shift = shift + conv_bias * mul
    return onednn.conv_bias(x, kernel * mul, shift, residual, strides, pads, relu)
