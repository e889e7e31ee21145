"""GoogLeNet / Inception v1 (Szegedy et al. 2015) with BatchNorm after every conv, as torchvision.

Inception configuration from the paper's Table 1. `torchvision_compat=True` uses a 3x3 conv where
the paper has the 5x5 (torchvision's known deviation): 6,624,904 parameters at 1000 classes versus
7,005,832 with the paper's 5x5. `aux_logits=True` adds the two auxiliary classifiers (after 4a and
4d); the model then returns (logits, aux1, aux2) when `train=True` and only logits otherwise.
`inception="naive"` builds every Inception block in the naive form of the paper's fig. 2a (no 1x1
reductions, the pool branch passes all its input channels; Table 1's #1x1, #3x3 and #5x5 kept), the
form whose cost the paper's reductions avoid: the channels grow block by block (5b outputs 4,944
instead of 1,024) and it has 97,531,080 parameters at 1000 classes, 14 times the reduced 7,005,832.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import (AdaptiveAvgPool, ConvBlock, GlobalAvgPool, InceptionBlock, MaxPool,
                            check_choice, make_conv)
from cnn_jax.models.common import ModelBase

# name: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)   (Table 1 of the paper)
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}

INCEPTION_FORMS = ("reduced", "naive")  # GoogLeNet.inception: fig. 2b (the network) or fig. 2a


class InceptionAux(nn.Module):
    """Auxiliary classifier: avg-pool to 4x4, 1x1 conv 128, fc 1024, dropout, fc classes."""

    num_classes: int
    conv: Any
    norm: Any
    dropout: float = 0.7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = AdaptiveAvgPool(4, name="avgpool")(x)
        x = ConvBlock(128, (1, 1), conv=self.conv, norm=self.norm, name="conv")(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(1024, dtype=self.dtype, name="fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x).astype(jnp.float32)


class GoogLeNet(ModelBase):
    """Inception v1: stem, nine Inception blocks, global average pool, dropout, fc."""

    aux_logits: bool = False
    torchvision_compat: bool = False
    dropout: float = 0.2  # torchvision's; the paper used 0.4
    aux_dropout: float = 0.7
    norm: str = "batch"
    bn_epsilon: float = 1e-3  # torchvision's BasicConv2d
    inception: str = "reduced"  # "reduced" (fig. 2b, the paper's network) | "naive" (fig. 2a)

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = self.checked_norm(x, train)
        check_choice("inception", self.inception, INCEPTION_FORMS)
        conv = make_conv(self.dtype, use_bias=norm is None)
        block = lambda *cfg, name: InceptionBlock(  # noqa: E731
            *cfg, reduced=self.inception == "reduced",
            kernel_5x5=3 if self.torchvision_compat else 5, conv=conv, norm=norm, name=name)
        x = x.astype(self.dtype)
        x = ConvBlock(64, (7, 7), 2, 3, conv=conv, norm=norm, name="conv1")(x)
        x = MaxPool(3, 2, ceil_mode=True, name="pool1")(x)
        x = ConvBlock(64, (1, 1), conv=conv, norm=norm, name="conv2")(x)
        x = ConvBlock(192, (3, 3), conv=conv, norm=norm, name="conv3")(x)
        x = MaxPool(3, 2, ceil_mode=True, name="pool2")(x)
        x = block(*INCEPTION["3a"], name="inception3a")(x)
        x = block(*INCEPTION["3b"], name="inception3b")(x)
        x = MaxPool(3, 2, ceil_mode=True, name="pool3")(x)
        aux = []
        for name in ("4a", "4b", "4c", "4d", "4e"):
            if self.aux_logits and name in ("4b", "4e"):  # heads read the outputs of 4a and 4d
                aux.append(InceptionAux(self.num_classes, conv, norm, self.aux_dropout,
                                        self.dtype, name=f"aux{len(aux) + 1}")(x, train))
            x = block(*INCEPTION[name], name=f"inception{name}")(x)
        x = MaxPool(2, 2, ceil_mode=True, name="pool4")(x)
        x = block(*INCEPTION["5a"], name="inception5a")(x)
        x = block(*INCEPTION["5b"], name="inception5b")(x)
        x = GlobalAvgPool(name="avgpool")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)
        # Aux heads also run in eval mode so that init in either mode creates their parameters;
        # under jit their unused outputs are dead code and cost nothing.
        return (x, *aux) if train and aux else x
