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
    """Parameters, BN statistics, optimizer state, step, PRNG key and the optional EMA.

    With `config.ema_decay > 0`, `ema_params` and `ema_batch_stats` are exponential moving
    averages (same decay) of the parameters and of BatchNorm's running statistics: the EMA
    weights are evaluated with the EMA statistics, not with statistics measured under the live
    weights. Both are None without an EMA.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None
    ema_batch_stats: Any = None

# The EMA's parts of the state (absent from the checkpoint of a run without an EMA).
EMA_FIELDS = ("ema_params", "ema_batch_stats")


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
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    params, batch_stats = init_variables(model, init_rng, input_shape)
    return _around_variables(params, batch_stats, tx, train_rng, ema)


def _around_variables(params: Any, batch_stats: Any, tx: optax.GradientTransformation,
                      train_rng: jax.Array, ema: bool) -> TrainState:
    """The state of step 0 around initial variables: optimizer state, PRNG key, EMA copies."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), rng=train_rng,
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else None)


def train_state_shapes(variable_shapes: tuple[Any, Any], tx: optax.GradientTransformation,
                       seed: int, ema: bool) -> TrainState:
    """`jax.eval_shape` of `create_train_state` from the shapes of `init_variables`' output,
    without tracing the model a second time (0.1-0.3 s of a run's start for ResNet-20)."""
    def state(variables):
        train_rng = jax.random.split(jax.random.PRNGKey(seed))[1]
        return _around_variables(*variables, tx, train_rng, ema)
    return jax.eval_shape(state, variable_shapes)


def state_to_tree(state: TrainState) -> dict:
    """The state as nested dicts of arrays (optax named tuples become dicts): what Orbax stores."""
    tree = serialization.to_state_dict(state)
    for field in EMA_FIELDS:
        if tree.get(field) is None:
            tree.pop(field, None)
    return tree


def add_ema_batch_stats(tree: dict) -> bool:
    """Gives a checkpoint tree from before `ema_batch_stats` existed (an EMA of the parameters
    only) EMA statistics equal to its running statistics, the ones its EMA was evaluated with.

    Returns True when it did (the caller warns); the tree is changed in place.
    """
    if "ema_params" not in tree or "ema_batch_stats" in tree:
        return False
    tree["ema_batch_stats"] = jax.tree.map(np.copy, tree.get("batch_stats", {}))
    return True


def tree_to_state(template: TrainState, tree: dict) -> TrainState:
    """Inverse of `state_to_tree`, given a state of the same structure."""
    tree = dict(tree)
    if template.ema_params is None:
        tree.update(dict.fromkeys(EMA_FIELDS))
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
