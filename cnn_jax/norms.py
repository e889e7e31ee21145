"""Normalisation layers for the zoo: BatchNorm, GroupNorm, LayerNorm and the `make_norm` factory.

`GroupNorm` uses exactly the configured group count, and fails naming the layer when it does not
divide the channels. Flax's `nn.GroupNorm` has no such check.

`BatchNorm` is Flax's `nn.BatchNorm`, with the same variables and numbers. Its training-mode pass
on the CPU backend runs `ops.batch_norm_train`, a custom VJP: autodiff of Flax's formula leaves
XLA a backward pass that writes x - mean out as a tensor of its own, and nothing in Flax offers
another gradient (see cnn_jax/ops.py and benchmarks/RESULTS.md, issue 15).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from cnn_jax import ops
from cnn_jax.validate import layer_name as _layer_name

ModuleDef = Any
NORMS = ("batch", "group", "layer", "none")


class GroupNorm(nn.Module):
    """GroupNorm (Wu & He 2018) with exactly `num_groups` groups of channels.

    The count is the model's `norm_groups` field (32 by default, the paper's choice); a layer
    whose channel count it does not divide fails at trace time naming the layer, its channels and
    the divisors that would fit, instead of silently using another count (16 channels with 16
    groups would be InstanceNorm). `num_groups=1` normalises over (H, W, C): LayerNorm.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        groups = self.num_groups
        if not isinstance(groups, (int, np.integer)) or groups < 1 or channels % groups:
            fits = [g for g in range(1, min(channels, 32) + 1) if channels % g == 0]
            raise ValueError(
                f"layer {_layer_name(self)}: {channels} channels do not split into "
                f"norm_groups={groups!r} groups of equal size. Set --config.model.norm_groups to "
                f"a divisor of every normalised layer's channel count (this layer: "
                f"{', '.join(map(str, fits))}).")
        norm = nn.GroupNorm(num_groups=int(groups), epsilon=self.epsilon, dtype=self.dtype,
                            param_dtype=self.param_dtype, scale_init=self.scale_init)
        nn.share_scope(self, norm)  # params live directly under this module's name
        return norm(x)


class LayerNorm(GroupNorm):
    """Layer normalisation over all non-batch axes (H, W, C), per-channel scale and bias."""

    num_groups: int = 1


class BatchNorm(nn.BatchNorm):
    """Flax's `nn.BatchNorm` (same variables, same numbers), whose training-mode pass on the CPU
    backend runs `ops.batch_norm_train`: a custom VJP with two passes over the activation in
    each direction (`ops.CPU_BATCHNORM_VJP`), initialisation included (a cheaper trace than
    Flax's formula, whose jnp operators are each a nested jit). Inference, masks, float32-only
    settings aside (other dtypes, axes, axis groups, no scale or bias, exact variance) and
    other backends take Flax's own code.
    """

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_ra = nn.merge_param("use_running_average", self.use_running_average,
                                use_running_average)
        if (use_ra or mask is not None or not ops.CPU_BATCHNORM_VJP
                or jax.default_backend() != "cpu" or self.axis not in (-1, x.ndim - 1)
                or self.axis_index_groups is not None or not (self.use_scale and self.use_bias)
                or not self.use_fast_variance or x.dtype != jnp.float32
                or self.dtype not in (None, jnp.float32) or self.param_dtype != jnp.float32):
            return super().__call__(x, use_running_average, mask=mask)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        # As in Flax: initialisation normalises with this replica's statistics and leaves the
        # running averages at their initial values.
        initializing = self.is_initializing()
        y, mean, var = ops.batch_norm_train(x, scale, bias, self.epsilon,
                                            None if initializing else self.axis_name)
        if not initializing:  # in lax, not operators: see ops._batch_norm_train_fwd
            m = self.momentum
            ra_mean.value = lax.add(lax.mul(m, ra_mean.value), lax.mul(1 - m, mean))
            ra_var.value = lax.add(lax.mul(m, ra_var.value), lax.mul(1 - m, var))
        return y


def make_norm(
    kind: str,
    *,
    train: bool,
    dtype: Any = jnp.float32,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    axis_name: str | None = None,
    num_groups: int = 32,
) -> ModuleDef | None:
    """Normalisation factory: a partial taking (name=..., scale_init=...), or None for "none".

    "batch" keeps running statistics in the `batch_stats` collection and uses them when
    `train=False`; `momentum` is Flax's (0.9 == PyTorch's 0.1); `axis_name` makes the batch
    statistics cross-device under pmap. "group" uses exactly `num_groups` groups (each layer's
    channel count must be a multiple of it); "layer" is GroupNorm with one group.
    """
    if kind == "batch":
        return functools.partial(BatchNorm, use_running_average=not train, momentum=momentum,
                                 epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                                 axis_name=axis_name)
    if kind == "group":
        return functools.partial(GroupNorm, num_groups=num_groups, epsilon=epsilon, dtype=dtype)
    if kind == "layer":
        return functools.partial(LayerNorm, epsilon=epsilon, dtype=dtype)
    if kind == "none":
        return None
    raise ValueError(f"norm={kind!r} is not one of {NORMS}; set the model field `norm` to one")
