"""Tiny run for the fault campaign (tests/faults/campaign.py): an MLP on synthetic 6x6x3 images.

    python launch.py --config=tests/faults/tiny_config.py --workdir=/tmp/faults_tiny
    python launch.py --config=tests/faults/tiny_config.py --workdir=/tmp/faults_sweep --sweep

24 steps of batch 16 (6 per epoch), a checkpoint every 4 steps (the last 2 kept), evaluation at
steps 12 and 24, every step logged; BN, dropout and an EMA so that every part of the state
matters for an exact resume. A few seconds on a CPU.
Args: crash (a learning rate of 1e30: the loss overflows and the run stops with an error).
The sweep: points `crash` (crash=True) then `alpha` (the default run); `:points=alpha` keeps
only the named points.
"""

from typing import Any

import ml_collections

from experiments.common import parse_arg
from experiments.default import get_default_config


def tiny_mlp_config(**fields: Any) -> ml_collections.ConfigDict:
    """The tiny run the end-to-end tests share, with dotted-field overrides ("optim.lr": 0.1).

    An MLP(16) with BN and dropout on 96 synthetic 6x6x3 images of 5 classes (a 24-example test
    split), batch 16: 6 steps per epoch. Run length, logging and checkpoints are the caller's.
    """
    c = get_default_config()
    c.model.name = "mlp"
    c.model.hidden_sizes = (16,)
    c.model.norm = "batch"
    c.model.dropout = 0.1
    c.data.name = "synthetic"
    c.data.synthetic_shape = (6, 6, 3)
    c.data.synthetic_num_classes = 5
    c.data.synthetic_num_examples = 96
    c.batch_size = 16
    c.update_from_flattened_dict(fields)
    return c


def _args(arg):
    return parse_arg(arg, crash=False, points=("crash", "alpha"))


def get_config(arg=None):
    a = _args(arg)
    c = tiny_mlp_config()
    c.total_steps = 24
    c.log_every_steps = 1
    c.eval_every_steps = 12
    c.checkpoint_every_steps = 4
    c.keep_checkpoints = 2
    c.ema_decay = 0.9
    c.optim.lr = 1e30 if a.crash else 0.05
    return c


def get_sweep(arg=None):
    points = {"crash": {"crash": True}, "alpha": {"crash": False}}
    return [(name, points[name]) for name in _args(arg).points]
