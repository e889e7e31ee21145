"""VGG (Simonyan & Zisserman 2015), configurations A/B/D/E = vgg11/13/16/19, torchvision layout.

Conv 3x3 pad 1 stages separated by 2x2 max-pools, adaptive average pool to 7x7, classifier
4096-4096-classes with dropout. Convs keep their bias also with BatchNorm (`vgg*_bn`), as
torchvision does, so parameter counts match its published ones.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import AdaptiveAvgPool, ConvBlock, MaxPool, make_conv
from cnn_jax.models.common import ModelBase
from cnn_jax.models.mlp import Classifier

# Convs per stage for configurations A, B, D, E of the paper's Table 1.
STAGES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


class VGG(ModelBase):
    """VGG with `stage_sizes` convs of `widths` channels per stage."""

    stage_sizes: Sequence[int] = STAGES[16]
    widths: Sequence[int] = (64, 128, 256, 512, 512)
    classifier_width: int = 4096
    pool_size: int = 7
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = self.checked_norm(x, train)
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(f"VGG: stage_sizes {tuple(self.stage_sizes)} and widths "
                             f"{tuple(self.widths)} must have the same length")
        conv = make_conv(self.dtype, use_bias=True)
        x = x.astype(self.dtype)
        for s, (n, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
            for b in range(1, n + 1):
                x = ConvBlock(width, (3, 3), 1, 1, conv=conv, norm=norm, name=f"conv{s}_{b}")(x)
            x = MaxPool(2, 2, name=f"pool{s}")(x)
        x = AdaptiveAvgPool(self.pool_size, name="avgpool")(x)
        x = x.reshape(x.shape[0], -1)
        x = Classifier((self.classifier_width,) * 2, self.num_classes, self.dropout,
                       dtype=self.dtype, name="classifier")(x, train)
        return x.astype(jnp.float32)
