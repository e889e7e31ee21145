"""AlexNet (Krizhevsky et al. 2012) as a single tower, and torchvision's variant.

`AlexNet` is the lecture's: 227x227 input, 96@11x11/4, 256@5x5, 384, 384, 256@3x3, overlapping
3x3/2 max-pools, fc 4096-4096 (62,378,344 parameters at 1000 classes); the paper's local response
normalisation is left out (`norm` can add a modern normalisation instead). `AlexNetTV` follows
torchvision: 64/192/384/256/256 channels, adaptive average pool to 6x6 (61,100,840 parameters).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import AdaptiveAvgPool, ConvBlock, MaxPool, make_conv
from cnn_jax.models.common import ModelBase
from cnn_jax.models.mlp import Classifier

# (features, kernel, stride, padding, max-pool after)
LECTURE_LAYERS = ((96, 11, 4, 0, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False),
                  (384, 3, 1, 1, False), (256, 3, 1, 1, True))
TORCHVISION_LAYERS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                      (256, 3, 1, 1, False), (256, 3, 1, 1, True))


class AlexNet(ModelBase):
    """Five conv layers with overlapping max-pools and a 3-layer classifier with dropout."""

    conv_layers: Sequence[Sequence[int]] = LECTURE_LAYERS
    adaptive_pool: int = 0  # > 0: average-pool the features to this size (torchvision: 6)
    classifier_width: int = 4096
    dropout: float = 0.5
    dropout_first: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = self.checked_norm(x, train)
        conv = make_conv(self.dtype, use_bias=norm is None)
        x = x.astype(self.dtype)
        for i, (features, kernel, stride, pad, pool) in enumerate(self.conv_layers, start=1):
            x = ConvBlock(features, (kernel, kernel), stride, pad, conv=conv, norm=norm,
                          name=f"conv{i}")(x)
            if pool:
                x = MaxPool(3, 2, name=f"pool{i}")(x)
        if self.adaptive_pool > 0:
            x = AdaptiveAvgPool(self.adaptive_pool, name="avgpool")(x)
        x = x.reshape(x.shape[0], -1)
        x = Classifier((self.classifier_width,) * 2, self.num_classes, self.dropout,
                       self.dropout_first, self.dtype, name="classifier")(x, train)
        return x.astype(jnp.float32)
