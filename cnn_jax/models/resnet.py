"""Residual networks (He et al. 2016) and their plain twins, ImageNet and CIFAR variants.

ImageNet ResNets default to torchvision's v1.5 (stride on the 3x3 of the bottleneck) with
projection shortcuts where the shape changes (option "B"); `stride_on_1x1=True` gives the paper's
v1. `small_stem=True` replaces the 7x7/2 conv and max-pool by a 3x3/1 conv for 32x32 inputs.
CIFAR ResNets follow section 4.2: 6n+2 layers, 16-32-64 channels, shortcut option "A"; `depth`
counts the real layers for any number of stages (`widths`), so 4 stages take 8n+2. The
registry holds the paper's depths 20-110 and 1202 (n = 200: 19,421,274 parameters, the 19.4M
of Table 6).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import (SHORTCUTS, BasicBlock, BottleneckBlock, ConvBlock, GlobalAvgPool,
                            MaxPool, activation, check_choice, make_conv)
from cnn_jax.models.common import ModelBase

BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}
# The CIFAR depths of He et al. 2016, Table 6 (registered as resnetD and plainD).
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
# GroupNorm's group count (model.norm_groups) for the CIFAR widths 16/32/64: 8 groups of 2/4/8
# channels. Wu & He 2018 use 32 groups at ImageNet widths (>= 64 channels); 32 does not divide 16,
# and 16 groups of one channel each would be InstanceNorm. In their Table 3 (ResNet-50, ImageNet)
# 8 groups give 24.4% top-1 error against 24.1% with 32, and one channel per group 28.3%.
CIFAR_NORM_GROUPS = 8


def cifar_blocks_per_stage(depth: int, stages: int) -> int:
    """n of a CIFAR ResNet with `stages` stages of n basic blocks: depth = 2 * n * stages + 2
    weighted layers (stem conv, two convs per block, fc). With the paper's three stages this is
    6n + 2; `depth` always counts the real layers, so four stages give 8n + 2 (10, 18, 26, ...)."""
    if stages < 1 or depth < 2 * stages + 2 or (depth - 2) % (2 * stages):
        valid = [2 * n * stages + 2 for n in range(1, 5)] if stages >= 1 else []
        examples = ", ".join(map(str, CIFAR_DEPTHS if stages == 3 else valid))
        raise ValueError(
            f"CifarResNet depth={depth} must be {2 * stages}n+2 with {stages} stage(s) "
            f"(depth counts the stem conv, 2 convs per block and the fc; n blocks per stage): "
            f"{examples}, ... Set --config.model.depth to one of them.")
    return (depth - 2) // (2 * stages)


class _ResidualNetBase(ModelBase):
    """Fields both ResNet families share: shortcuts on/off (plain twins), last-BN init, activation."""

    residual: bool = True
    zero_init_last_bn: bool = False
    activation: str = "relu"
    norm: str = "batch"


class ResNet(_ResidualNetBase):
    """ImageNet-style ResNet: stem, four stages of residual blocks, global average pool, fc."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64
    shortcut: str = "B"
    stride_on_1x1: bool = False
    small_stem: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = self.checked_norm(x, train)
        check_choice("block", self.block, tuple(BLOCKS))
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        act = activation(self.activation)
        conv = make_conv(self.dtype, use_bias=norm is None)
        x = x.astype(self.dtype)
        if self.small_stem:
            x = ConvBlock(self.width, (3, 3), 1, 1, conv=conv, norm=norm, act=act, name="stem")(x)
        else:
            x = ConvBlock(self.width, (7, 7), 2, 3, conv=conv, norm=norm, act=act, name="stem")(x)
            x = MaxPool(3, 2, padding=1, name="stem_pool")(x)
        extra = {"stride_on_1x1": self.stride_on_1x1} if self.block == "bottleneck" else {}
        for s, n in enumerate(self.stage_sizes):
            for b in range(n):
                x = BLOCKS[self.block](
                    self.width * 2 ** s, strides=2 if s > 0 and b == 0 else 1, conv=conv,
                    norm=norm, act=act, shortcut=self.shortcut, residual=self.residual,
                    zero_init_last_bn=self.zero_init_last_bn, name=f"stage{s + 1}_block{b + 1}",
                    **extra)(x)
        x = GlobalAvgPool(name="avgpool")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


class CifarResNet(_ResidualNetBase):
    """CIFAR ResNet of He et al. 2016 sec. 4.2: 3x3 conv, 3 stages of n basic blocks, pool, fc."""

    num_classes: int = 10
    depth: int = 20
    widths: Sequence[int] = (16, 32, 64)
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = self.checked_norm(x, train)
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        n = cifar_blocks_per_stage(self.depth, len(self.widths))
        act = activation(self.activation)
        conv = make_conv(self.dtype, use_bias=norm is None)
        x = x.astype(self.dtype)
        x = ConvBlock(self.widths[0], (3, 3), 1, 1, conv=conv, norm=norm, act=act, name="stem")(x)
        for s, width in enumerate(self.widths):
            for b in range(n):
                x = BasicBlock(width, strides=2 if s > 0 and b == 0 else 1, conv=conv, norm=norm,
                               act=act, shortcut=self.shortcut, residual=self.residual,
                               zero_init_last_bn=self.zero_init_last_bn,
                               name=f"stage{s + 1}_block{b + 1}")(x)
        x = GlobalAvgPool(name="avgpool")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)
