"""Building blocks shared by every network of the zoo (Flax linen).

Blocks take pre-configured `conv` and `norm` partials (as in Flax's ImageNet example), so the
compute dtype, BatchNorm momentum, the train/eval switch and the pmap axis are decided once, at the
top of a model, and flow into every block. Parameters always stay float32; `dtype` is the compute
dtype.

Every convolution and pooling layer checks its output size at trace time with `output_size`, so an
input too small for a network fails under `jax.eval_shape` with a message naming the layer, the
input size and the formula's result, instead of an XLA shape error deep inside a compile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import ops, validate
from cnn_jax.norms import NORMS, BatchNorm, GroupNorm, LayerNorm, make_norm

_layer_name = validate.layer_name

ModuleDef = Any
Padding = int | str | Sequence[int] | Sequence[tuple[int, int]]

SHORTCUTS = ("A", "B", "C")
ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "silu": nn.silu,
}

# He et al. 2015 initialisation (fan-out, as torchvision's ResNet/VGG): keeps ReLU nets trainable.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# ---------------------------------------------------------------------------------------------
# Shape arithmetic
# ---------------------------------------------------------------------------------------------


def output_size(
    n: int,
    kernel: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    *,
    layer: str = "layer",
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Spatial output size floor((n + 2p - k)/s) + 1 of a conv/pool; ValueError when it is < 1.

    `padding` is an int (both sides) or a (low, high) pair. `ceil_mode` follows PyTorch's pooling
    rule (round up, but the last window must start inside the input or the left padding).
    """
    lo, hi = (padding, padding) if isinstance(padding, int) else (int(padding[0]), int(padding[1]))
    k = dilation * (kernel - 1) + 1
    padded = n + lo + hi
    pad_txt = f"2*{lo}" if lo == hi else f"{lo}+{hi}"
    padding = lo if lo == hi else (lo, hi)
    rnd = "ceil" if ceil_mode else "floor"
    if ceil_mode:
        out = -((k - padded) // stride) + 1  # ceil((padded - k)/stride) + 1
        if out >= 1 and (out - 1) * stride >= n + lo:
            out -= 1
    else:
        out = (padded - k) // stride + 1
    if padded < k or out < 1:
        why = f" (padded input {padded} < kernel {k})" if padded < k else ""
        raise ValueError(
            f"layer {layer}: input size {n} is too small for kernel {k}, stride {stride}, "
            f"padding {padding}: {rnd}(({n} + {pad_txt} - {k})/{stride}) + 1 = {out} < 1{why}. "
            "Use a larger input, fewer downsampling layers, or a model variant made for small "
            "images (e.g. small_stem=True; see cnn_jax.models.default_input_shape)."
        )
    return out


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (int(v),) * n if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)


def _pad_pairs(padding: Padding, n: int) -> list[tuple[int, int]] | str:
    """Normalise a flax-style padding into per-dimension (low, high) pairs, or keep the string."""
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, (int, np.integer)):
        return [(int(padding), int(padding))] * n
    pairs = [(int(p), int(p)) if isinstance(p, (int, np.integer)) else (int(p[0]), int(p[1]))
             for p in padding]
    if len(pairs) != n:
        raise ValueError(f"padding {padding!r} has {len(pairs)} entries for {n} spatial dims")
    return pairs


def check_output_shape(
    layer: str,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    padding: Padding,
    dilation: Sequence[int] | None = None,
    ceil_mode: bool = False,
) -> tuple[int, ...]:
    """Output spatial shape of a conv/pool over `spatial`, raising ValueError if any dim is < 1."""
    n = len(spatial)
    kernel, strides = _tuple(kernel, n), _tuple(strides, n)
    dilation = _tuple(dilation or 1, n)
    pads = _pad_pairs(padding, n)
    if pads == "SAME":
        if min(spatial) < 1:
            raise ValueError(f"layer {layer}: empty input of spatial shape {tuple(spatial)}")
        return tuple(-(-d // s) for d, s in zip(spatial, strides))
    if pads == "VALID":
        pads = [(0, 0)] * n
    if isinstance(pads, str):  # CIRCULAR / CAUSAL: flax computes these; nothing to check here.
        return tuple(spatial)
    return tuple(
        output_size(d, k, s, p, layer=layer, dilation=r, ceil_mode=ceil_mode)
        for d, k, s, p, r in zip(spatial, kernel, strides, pads, dilation)
    )


def check_input(model: str, x: Any) -> None:
    """ValueError naming the input shape when an example is empty (an H, W or C of 0).

    Convolutions catch this in `output_size`; a model that starts with a Dense (MLP) would
    otherwise divide by zero in its initialiser's fan-in.
    """
    shape = tuple(x.shape[1:])
    if shape and min(shape) < 1:
        raise ValueError(
            f"{model}: input of shape {shape} per example is empty; every input dimension "
            "(H, W, C) must be >= 1. Check the data's image shape (data.image_size, "
            "data.synthetic_shape) or the input_shape given to the model.")


# ---------------------------------------------------------------------------------------------
# Convolution, normalisation, activation
# ---------------------------------------------------------------------------------------------


class Conv(nn.Conv):
    """`nn.Conv` that validates the output size at trace time (see `output_size`).

    Convolves with `ops.conv_general_dilated`: XLA's convolution, except small stride-1
    convolutions on the CPU backend (see cnn_jax/ops.py for the profile behind it).
    """

    conv_general_dilated: Any = ops.conv_general_dilated

    def __call__(self, inputs):
        check_output_shape(_layer_name(self), inputs.shape[1:-1], self.kernel_size,
                           self.strides or 1, self.padding, self.kernel_dilation)
        return super().__call__(inputs)


def make_conv(dtype: Any = jnp.float32, use_bias: bool = False,
              kernel_init: Callable = he_normal) -> ModuleDef:
    """Pre-configured convolution partial: compute dtype, bias, init; params float32."""
    return functools.partial(Conv, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=kernel_init)


def activation(name: str | Callable) -> Callable:
    """Activation function by name (relu, tanh, sigmoid, gelu, silu); callables pass through."""
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


check_choice = validate.check_member  # a model field's choice (the models' shared check)


class ConvBlock(nn.Module):
    """conv -> norm [-> + residual] -> activation. `padding=None` means k//2 on each side
    (torchvision's "same"). In inference with BatchNorm on the CPU backend the whole block is
    one oneDNN convolution (`ops.conv_bn_inference`)."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] | int = 1
    padding: Padding | None = None
    conv: ModuleDef = Conv
    norm: ModuleDef | None = None
    act: Callable | None = nn.relu
    zero_init_norm: bool = False  # start the norm's scale at 0 (last BN of a residual branch)

    @nn.compact
    def __call__(self, x, residual=None):
        """act(norm(conv(x)) [+ residual]): a residual block passes its shortcut here."""
        ks = _tuple(self.kernel_size, 2)
        pad = tuple((k // 2, k // 2) for k in ks) if self.padding is None else self.padding
        conv = self.conv(self.features, ks, strides=_tuple(self.strides, 2), padding=pad,
                         name="conv")
        norm = None
        if self.norm is not None:
            kw = {"scale_init": nn.initializers.zeros} if self.zero_init_norm else {}
            norm = self.norm(name="norm", **kw)
        fused = self._fused_inference(conv, norm, x, residual)
        if fused is not None:
            return fused
        x = conv(x)
        if norm is not None:
            x = norm(x)
        if residual is not None:
            x = x + residual.astype(x.dtype)
        if self.act is not None:
            x = self.act(x)
        return x

    def _fused_inference(self, conv, norm, x, residual):
        """conv -> BatchNorm (running averages) [-> + residual] -> ReLU or nothing, as one
        oneDNN convolution on the CPU backend (`ops.conv_bn_inference`); None where that does
        not apply, and whenever the `intermediates` collection is mutable (Flax's
        `capture_intermediates`, `sow`), so that the conv and norm outputs are recorded."""
        if (self.is_initializing() or self.is_mutable_collection("intermediates")
                or not isinstance(norm, BatchNorm)
                or not norm.use_running_average or self.act not in (None, nn.relu, jax.nn.relu)
                or not isinstance(conv, Conv) or conv.conv_general_dilated is not
                ops.conv_general_dilated or conv.kernel_dilation not in (None, 1, (1, 1))
                or conv.input_dilation not in (None, 1, (1, 1)) or conv.feature_group_count != 1
                or conv.precision is not None or conv.dtype not in (None, jnp.float32)
                or norm.axis not in (-1, x.ndim - 1) or not (norm.use_scale and norm.use_bias)
                or norm.dtype not in (None, jnp.float32) or x.ndim != 4):
            return None
        check_output_shape(_layer_name(conv), x.shape[1:-1], conv.kernel_size,
                           conv.strides or 1, conv.padding, conv.kernel_dilation)
        params, stats = self.variables["params"], self.variables["batch_stats"]["norm"]
        bn = {"scale": params["norm"]["scale"], "bias": params["norm"]["bias"],
              "mean": stats["mean"], "var": stats["var"]}
        return ops.conv_bn_inference(x, params["conv"]["kernel"], params["conv"].get("bias"), bn,
                                     norm.epsilon, _tuple(conv.strides or 1, 2), conv.padding,
                                     relu=self.act is not None, residual=residual)


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------


class MaxPool(nn.Module):
    """Max pooling (strides default to the window); `ceil_mode` as PyTorch (used by GoogLeNet)."""

    window: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: int = 0
    ceil_mode: bool = False

    def __call__(self, x):
        window = _tuple(self.window, 2)
        strides = _tuple(self.strides if self.strides is not None else self.window, 2)
        out = check_output_shape(_layer_name(self), x.shape[1:3], window, strides, self.padding,
                                 ceil_mode=self.ceil_mode)
        pads = [(self.padding, self.padding)] * 2
        if self.ceil_mode:  # pad the high side just enough for the extra (partial) window
            pads = [(self.padding, max(0, (o - 1) * s + k - n - self.padding))
                    for n, k, s, o in zip(x.shape[1:3], window, strides, out)]
        return ops.max_pool(x, window, strides, pads)


class AvgPool(nn.Module):
    """Average pooling; padded zeros count in the average (PyTorch's count_include_pad=True)."""

    window: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: int = 0

    def __call__(self, x):
        window = _tuple(self.window, 2)
        strides = _tuple(self.strides if self.strides is not None else self.window, 2)
        check_output_shape(_layer_name(self), x.shape[1:3], window, strides, self.padding)
        return nn.avg_pool(x, window, strides, padding=[(self.padding, self.padding)] * 2)


def global_avg_pool(x):
    """Mean over the spatial axes of an NHWC tensor -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))


class GlobalAvgPool(nn.Module):
    """Module form of `global_avg_pool` (shows up as a layer in the summary)."""

    def __call__(self, x):
        return global_avg_pool(x)


def _adaptive_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) averaging matrix with PyTorch's adaptive bins [floor(i n/m), ceil((i+1) n/m))."""
    a = np.zeros((m, n), np.float32)
    for i in range(m):
        lo, hi = (i * n) // m, -(-((i + 1) * n) // m)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


class AdaptiveAvgPool(nn.Module):
    """Average pooling to a fixed (H, W), bins as torchvision's AdaptiveAvgPool2d (exact)."""

    output_size: int | Sequence[int] = 1

    def __call__(self, x):
        oh, ow = _tuple(self.output_size, 2)
        h, w = x.shape[1:3]
        if (h, w) == (oh, ow):
            return x
        if h % oh == 0 and w % ow == 0:
            x = x.reshape(x.shape[0], oh, h // oh, ow, w // ow, x.shape[-1])
            return x.mean(axis=(2, 4))
        ah = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
        aw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
        return jnp.einsum("oh,bhwc,pw->bopc", ah, x, aw)


# ---------------------------------------------------------------------------------------------
# Inception and residual blocks
# ---------------------------------------------------------------------------------------------


class InceptionBlock(nn.Module):
    """Inception module (Szegedy et al. 2015, fig. 2): 1x1, 3x3, 5x5 conv and 3x3 max-pool, concat.

    `reduced=True` (fig. 2b) puts 1x1 reductions before the 3x3 and 5x5 convs and a 1x1 projection
    after the pool; `reduced=False` is the naive form (fig. 2a), whose pool branch passes all input
    channels. `kernel_5x5=3` reproduces torchvision's GoogLeNet, which has a 3x3 in that branch.
    """

    features_1x1: int
    reduce_3x3: int = 0
    features_3x3: int = 0
    reduce_5x5: int = 0
    features_5x5: int = 0
    pool_proj: int = 0
    reduced: bool = True
    kernel_5x5: int = 5
    conv: ModuleDef = Conv
    norm: ModuleDef | None = None
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        if self.reduced and min(self.reduce_3x3, self.reduce_5x5, self.pool_proj) < 1:
            raise ValueError(
                f"InceptionBlock(reduced=True) needs reduce_3x3, reduce_5x5, pool_proj >= 1, got "
                f"{self.reduce_3x3}, {self.reduce_5x5}, {self.pool_proj}; or set reduced=False")
        block = functools.partial(ConvBlock, conv=self.conv, norm=self.norm, act=self.act)
        k5 = self.kernel_5x5
        b1 = block(self.features_1x1, (1, 1), name="b1x1")(x)
        b2, b3, b4 = x, x, MaxPool(3, 1, padding=1, name="pool")(x)
        if self.reduced:
            b2 = block(self.reduce_3x3, (1, 1), name="b3x3_reduce")(b2)
            b3 = block(self.reduce_5x5, (1, 1), name="b5x5_reduce")(b3)
        b2 = block(self.features_3x3, (3, 3), name="b3x3")(b2)
        b3 = block(self.features_5x5, (k5, k5), name="b5x5")(b3)
        if self.reduced:
            b4 = block(self.pool_proj, (1, 1), name="pool_proj")(b4)
        return jnp.concatenate([b1, b2, b3, b4.astype(b1.dtype)], axis=-1)


class _ResidualBase(nn.Module):
    """Fields and shortcut logic shared by BasicBlock and BottleneckBlock (He et al. 2016)."""

    features: int
    strides: int = 1
    conv: ModuleDef = Conv
    norm: ModuleDef | None = None
    act: Callable = nn.relu
    shortcut: str = "B"
    residual: bool = True
    zero_init_last_bn: bool = False

    def _shortcut(self, x, features: int, strides: int):
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        in_features = x.shape[-1]
        changes = strides != 1 or in_features != features
        if self.shortcut == "C" or (self.shortcut == "B" and changes):
            return ConvBlock(features, (1, 1), strides, padding=0, conv=self.conv, norm=self.norm,
                             act=None, name="shortcut")(x)
        if self.shortcut == "A" and changes:
            x = x[:, ::strides, ::strides, :]
            if features < in_features:
                raise ValueError(f"shortcut='A' cannot reduce channels ({in_features} -> "
                                 f"{features}); use shortcut='B' or 'C'")
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - in_features)))
        return x

    def _last(self, x, y, features: int, **block):
        """The block's last conv-norm layer on y, with act(. + shortcut(x)) for a residual block
        (one oneDNN primitive in CPU inference, see ConvBlock), act(.) for its plain twin."""
        shortcut = self._shortcut(x, features, self.strides) if self.residual else None
        return ConvBlock(features, conv=self.conv, norm=self.norm, act=self.act,
                         zero_init_norm=self.zero_init_last_bn, **block)(y, shortcut)


class BasicBlock(_ResidualBase):
    """Two 3x3 conv-norm layers + shortcut; `residual=False` gives the plain (no-shortcut) twin."""

    expansion = 1

    @nn.compact
    def __call__(self, x):
        block = functools.partial(ConvBlock, conv=self.conv, norm=self.norm)
        y = block(self.features, (3, 3), self.strides, act=self.act, name="conv1")(x)
        return self._last(x, y, self.features, kernel_size=(3, 3), strides=1, name="conv2")


class BottleneckBlock(_ResidualBase):
    """1x1 reduce, 3x3, 1x1 expand (x4). Stride on the 3x3 (v1.5) or on the first 1x1 (v1)."""

    stride_on_1x1: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x):
        block = functools.partial(ConvBlock, conv=self.conv, norm=self.norm)
        s1, s3 = (self.strides, 1) if self.stride_on_1x1 else (1, self.strides)
        out = self.features * self.expansion
        y = block(self.features, (1, 1), s1, act=self.act, name="conv1")(x)
        y = block(self.features, (3, 3), s3, act=self.act, name="conv2")(y)
        return self._last(x, y, out, kernel_size=(1, 1), strides=1, name="conv3")


__all__ = [
    "ACTIVATIONS", "AdaptiveAvgPool", "AvgPool", "BasicBlock", "BatchNorm", "BottleneckBlock",
    "Conv", "ConvBlock", "GlobalAvgPool", "GroupNorm", "InceptionBlock", "LayerNorm", "MaxPool",
    "ModuleDef", "NORMS", "SHORTCUTS", "activation", "check_choice", "check_input",
    "check_output_shape",
    "global_avg_pool", "he_normal", "make_conv", "make_norm", "output_size",
]
