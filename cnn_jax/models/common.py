"""Fields and normalisation set-up shared by every model of the zoo."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import NORMS, ModuleDef, check_choice, check_input, make_norm


class ModelBase(nn.Module):
    """Class count, normalisation, dtype and BatchNorm settings, under one name in every family.

    `norm_groups` is GroupNorm's group count, used as given in every normalised layer (a layer
    whose width it does not divide is an error naming the layer): it never changes silently.

    A model overrides a default by redeclaring the field (`norm: str = "batch"`); the registry
    builds models with keywords only, so the base fields coming first changes nothing.
    """

    num_classes: int = 1000
    norm: str = "none"
    norm_groups: int = 32  # norm="group": groups per layer (Wu & He 2018: 32); must divide widths
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None

    def checked_norm(self, x, train: bool) -> ModuleDef | None:
        """Checks the input and `norm`, then the norm factory this model's fields configure."""
        check_input(type(self).__name__, x)
        check_choice("norm", self.norm, NORMS)
        return make_norm(self.norm, train=train, dtype=self.dtype, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                         num_groups=self.norm_groups)
