"""The tiny finished run the fine-tuning and diagnostics tests share (built without the sweep
tooling): an MLP fc1 -> BN norm1 -> fc2 on 96 synthetic 6x6x3 images, 24 to evaluate."""

from typing import Any

import ml_collections

from experiments.default import get_default_config


def config(classes: int = 5, hidden: tuple = (16,), **fields: Any) -> ml_collections.ConfigDict:
    """6 steps of batch 16 (one epoch), one checkpoint and one evaluation at the end;
    `fields` are dotted overrides ("optim.lr": 0.1)."""
    c = get_default_config()
    c.model.name = "mlp"
    c.model.hidden_sizes = hidden
    c.model.norm = "batch"
    c.data.name = "synthetic"
    c.data.synthetic_shape = (6, 6, 3)
    c.data.synthetic_num_classes = classes
    c.data.synthetic_num_examples = 96
    c.batch_size = 16
    c.total_steps = 6
    c.log_every_steps = 6
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 6
    c.optim.lr = 0.05
    c.async_checkpoints = False
    c.compilation_cache = False
    c.update_from_flattened_dict(fields)
    return c
