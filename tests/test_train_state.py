"""Setup's state template (shapes from one model trace) is what create_train_state makes."""

import jax
import numpy as np
import pytest

from cnn_jax.train.setup import Setup
from cnn_jax.train.state import state_to_tree
from tests import tiny_run


def _shapes(tree):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef, [(jax.tree_util.keystr(p), tuple(x.shape), np.dtype(x.dtype))
                     for p, x in leaves]


@pytest.mark.parametrize("fields", [
    {},
    {"ema_decay": 0.99},
    {"optim.name": "adamw", "optim.weight_decay_mode": "decoupled", "seed": 3},
    {"optim.name": "lars", "model.norm": "group", "model.norm_groups": 2,
     "model.hidden_sizes": (8, 4)},
])
def test_template_equals_the_shapes_of_a_fresh_state(fields):
    setup = Setup(tiny_run.config(**fields))
    want = jax.eval_shape(setup.init_fn)
    assert _shapes(setup.template) == _shapes(want)
    assert _shapes(state_to_tree(setup.template)) == _shapes(state_to_tree(want))


def test_template_follows_the_prng_implementation():
    before = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        setup = Setup(tiny_run.config())
        assert setup.template.rng.shape == jax.eval_shape(setup.init_fn).rng.shape == (4,)
    finally:
        jax.config.update("jax_default_prng_impl", before)

