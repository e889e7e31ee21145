"""The train state: everything a run needs to continue exactly, as one pytree."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization


@flax.struct.dataclass
class TrainState:
    """Parameters, BN statistics, optimizer state, step, PRNG key and optional EMA of params."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None


def _reset_bn_statistics(batch_stats: Any) -> Any:
    """BatchNorm's running statistics as at construction: mean 0 and variance 1."""
    def reset(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        return jnp.ones_like(x) if name == "var" else jnp.zeros_like(x)
    return jax.tree_util.tree_map_with_path(reset, batch_stats)


def init_variables(model: flax.linen.Module, rng: jax.Array,
                   input_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """(params, batch_stats) of `model` for NHWC inputs of `input_shape` (without the batch).

    Initialised in train mode so that train-only branches (GoogLeNet's auxiliary heads) get their
    parameters; the BN statistics that this dummy forward pass touched are reset.
    """
    params_rng, dropout_rng = jax.random.split(rng)
    x = jnp.zeros((1, *input_shape), jnp.float32)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, x, train=True)
    params = variables["params"]
    batch_stats = _reset_bn_statistics(variables.get("batch_stats", {}))
    return params, batch_stats


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation, seed: int,
                       input_shape: tuple[int, ...], ema: bool) -> TrainState:
    """A fresh state from the seed; pure, so it can run under jit with any output sharding."""
    rng = jax.random.PRNGKey(seed)
    init_rng, train_rng = jax.random.split(rng)
    params, batch_stats = init_variables(model, init_rng, input_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), rng=train_rng,
        ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def state_to_tree(state: TrainState) -> dict:
    """The state as nested dicts of arrays (optax named tuples become dicts): what Orbax stores."""
    tree = serialization.to_state_dict(state)
    if tree.get("ema_params") is None:
        tree.pop("ema_params", None)
    return tree


def tree_to_state(template: TrainState, tree: dict) -> TrainState:
    """Inverse of `state_to_tree`, given a state of the same structure."""
    tree = dict(tree)
    if template.ema_params is None:
        tree["ema_params"] = None
    elif "ema_params" not in tree:
        raise ValueError("The checkpoint holds no EMA of the parameters but config.ema_decay > 0; "
                         "resume with the ema_decay the run started with.")
    return serialization.from_state_dict(template, tree)


def host_tree(tree: Any) -> Any:
    """A host (numpy) copy of a pytree of arrays, also for replicated arrays spread over processes."""
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.array(x.addressable_data(0))
        return np.array(x)
    return jax.tree.map(fetch, tree)
