"""LeNet-5 as in the lecture (LeCun et al. 1998, modernised): 61,706 parameters for 10 classes.

conv 6@5x5 pad 2 -> pool 2 -> conv 16@5x5 -> pool 2 -> fc 400-120-84-classes on 28x28x1 input.
Activation defaults to ReLU and pooling to max (the 1998 paper used scaled tanh and trainable
subsampling); `activation="tanh"`, `pool="avg"` get closer to the original.
"""

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import AvgPool, ConvBlock, MaxPool, activation, check_choice, make_conv
from cnn_jax.models.common import ModelBase


class LeNet5(ModelBase):
    """LeNet-5; `norm` adds a normalisation after each conv (none by default, as the original)."""

    num_classes: int = 10
    activation: str = "relu"
    pool: str = "max"

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = self.checked_norm(x, train)
        check_choice("pool", self.pool, ("max", "avg"))
        act = activation(self.activation)
        conv = make_conv(self.dtype, use_bias=norm is None)
        pool = MaxPool if self.pool == "max" else AvgPool
        x = x.astype(self.dtype)
        x = ConvBlock(6, (5, 5), padding=2, conv=conv, norm=norm, act=act, name="conv1")(x)
        x = pool(2, name="pool1")(x)
        x = ConvBlock(16, (5, 5), padding=0, conv=conv, norm=norm, act=act, name="conv2")(x)
        x = pool(2, name="pool2")(x)
        x = x.reshape(x.shape[0], -1)
        x = act(nn.Dense(120, dtype=self.dtype, name="fc1")(x))
        x = act(nn.Dense(84, dtype=self.dtype, name="fc2")(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc3")(x)
        return x.astype(jnp.float32)
