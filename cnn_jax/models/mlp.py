"""Multi-layer perceptron on flattened images, and the fully-connected head of the conv nets."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import activation
from cnn_jax.models.common import ModelBase


class Classifier(nn.Module):
    """Dense-ReLU-Dropout stack ending in a linear layer to `num_classes` logits.

    `dropout_first=True` applies dropout before each hidden Dense (torchvision's AlexNet order),
    otherwise after each hidden activation (the AlexNet paper's and torchvision's VGG order).
    """

    hidden_sizes: Sequence[int]
    num_classes: int
    dropout: float = 0.5
    dropout_first: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        drop = nn.Dropout(self.dropout, deterministic=not train) if self.dropout > 0 else None
        for i, width in enumerate(self.hidden_sizes):
            if drop is not None and self.dropout_first:
                x = drop(x)
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
            if drop is not None and not self.dropout_first:
                x = drop(x)
        if drop is not None and self.dropout_first and not self.hidden_sizes:
            x = drop(x)
        name = f"fc{len(self.hidden_sizes) + 1}"
        return nn.Dense(self.num_classes, dtype=self.dtype, name=name)(x)


class MLP(ModelBase):
    """Flatten -> [Dense -> norm -> activation -> dropout] x len(hidden_sizes) -> Dense logits."""

    num_classes: int = 10
    hidden_sizes: Sequence[int] = (512, 512)
    activation: str = "relu"
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = self.checked_norm(x, train)
        act = activation(self.activation)
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i, width in enumerate(self.hidden_sizes):
            x = nn.Dense(width, use_bias=norm is None, dtype=self.dtype, name=f"fc{i + 1}")(x)
            if norm is not None:
                x = norm(name=f"norm{i + 1}")(x)
            x = act(x)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name=f"fc{len(self.hidden_sizes) + 1}")(x)
        return x.astype(jnp.float32)
