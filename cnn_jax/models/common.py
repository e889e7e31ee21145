"""Fields and normalisation set-up shared by every model of the zoo."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import NORMS, ModuleDef, check_choice, check_input, make_norm


class ModelBase(nn.Module):
    """Class count, normalisation, dtype and BatchNorm settings, under one name in every family.

    A model overrides a default by redeclaring the field (`norm: str = "batch"`); the registry
    builds models with keywords only, so the base fields coming first changes nothing.
    """

    num_classes: int = 1000
    norm: str = "none"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None

    def checked_norm(self, x, train: bool) -> ModuleDef | None:
        """Checks the input and `norm`, then the norm factory this model's fields configure."""
        check_input(type(self).__name__, x)
        check_choice("norm", self.norm, NORMS)
        return make_norm(self.norm, train=train, dtype=self.dtype, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, axis_name=self.bn_axis_name)
