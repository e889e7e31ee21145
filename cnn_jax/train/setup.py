"""Set-up shared by training, evaluation and prediction: everything derived from the config
before any step runs.

Holds the process-wide JAX settings (`configure_jax`: compilation cache, PRNG mode), the config
checks (`validate_config`), the model (`build_model`), the input shape and split sizes, and
`Setup`, which builds the data info, schedule, optimizer, step config, parallel strategy and the
train-state template from them.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import files
from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import optim, parallel, steps
from cnn_jax.train.state import TrainState, add_ema_batch_stats, create_train_state, \
    init_variables, state_to_tree, train_state_shapes, tree_to_state
from cnn_jax.validate import check_choice, check_number

# float16 is not offered: without loss scaling small gradients flush to zero (and large
# activations overflow), so it would train silently worse; see validate_config.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BEST_METRICS = ("top1", "top5", "loss")


def configure_jax(config: ml_collections.ConfigDict) -> None:
    """Process-wide JAX settings a run asks for: compilation cache and the PRNG mode."""
    enable_compilation_cache(bool(config.get("compilation_cache", True)))
    # Non-partitionable threefry compiles random-number code several times faster on the CPU;
    # random arrays are only ever replicated here (data parallelism), so nothing is lost.
    jax.config.update("jax_threefry_partitionable",
                      bool(config.get("threefry_partitionable", False)))


def enable_compilation_cache(enabled: bool) -> str | None:
    """Turns on JAX's persistent compilation cache ($CNN_JAX_CACHE or ~/.cache/cnn_jax/jax_cache).

    A re-launched run then loads its compiled steps from disk instead of compiling them again.
    """
    if not enabled:
        return None
    return files.enable_compilation_cache(
        os.environ.get("CNN_JAX_CACHE") or "~/.cache/cnn_jax/jax_cache")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Clear errors, naming the field, for values that would otherwise fail deep inside JAX."""
    check_number("batch_size", config.batch_size, low=1, integer=True)
    check_number("eval_batch_size", config.get("eval_batch_size", -1), integer=True)
    for field in ("log_every_steps", "steps_per_dispatch", "keep_checkpoints"):
        check_number(field, config[field], low=1, integer=True)
    for field in ("total_steps", "eval_every_steps", "checkpoint_every_steps"):
        check_number(field, config[field], integer=True)
    check_number("seed", config.seed, low=0, high=2**32 - 1, integer=True)  # data order: 32 bits
    if config.total_steps <= 0:
        check_number("num_epochs", config.num_epochs, low=0, low_open=True)
    check_number("ema_decay", config.ema_decay, low=0, high=1, high_open=True)
    check_number("label_smoothing", config.label_smoothing, low=0, high=1, high_open=True)
    check_number("grad_clip_norm", config.grad_clip_norm)
    check_number("aux_loss_weight", config.get("aux_loss_weight", 0.3), low=0)
    for field in ("divergence_factor", "divergence_param_factor"):  # 0: that check is off
        check_number(field, config.get(field, 1.0), low=0)
    if config.dtype == "float16":
        raise ValueError(
            "config.dtype='float16' is refused: this engine has no loss scaling, without which "
            "float16 gradients below 6e-8 flush to zero and the run trains silently worse. Use "
            "--config.dtype=bfloat16 (float32's exponent range, the same memory and speed on "
            "GPUs/TPUs with bfloat16) or float32.")
    check_choice("dtype", config.dtype, DTYPES)
    check_choice("parallel", config.parallel, parallel.PARALLEL_MODES)
    if config.keep_best_metric:
        check_choice("keep_best_metric", config.keep_best_metric, BEST_METRICS)
    for field in ("async_checkpoints", "compilation_cache", "eval_flip_tta"):
        if not isinstance(config.get(field, True), bool):
            raise ValueError(f"config.{field} must be True or False, got {config[field]!r}.")
    optim.validate(config)
    if config.data.get("on_device", False) and config.parallel != "jit":
        raise ValueError("config.data.on_device=True needs config.parallel='jit' "
                         f"(got {config.parallel!r}).")


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON types (tuples become lists)."""
    import json
    return json.loads(config.to_json_best_effort())


def split_size(info: Any, split: str) -> int:
    """Examples in a split spec such as 'train' or 'train[:90%]'."""
    sizes = dict(info.num_examples)
    if split in sizes:
        return int(sizes[split])
    from cnn_jax.data import splits
    return int(splits.num_examples(split, sizes, f"data set {info.name!r}"))


def input_shape(config: ml_collections.ConfigDict, info: Any) -> tuple[int, ...]:
    """(H, W, C) of the images the model sees."""
    shape = tuple(int(d) for d in info.image_shape)
    size = int(config.data.get("image_size", -1))
    if size > 0 and len(shape) == 3:
        shape = (size, size, shape[2])
    return shape


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The model named by config.model.name with its fields (the registry validates them)."""
    from cnn_jax import models
    from cnn_jax.model_config import MODULE_FIELD, NOT_MODEL_FIELDS
    models.import_module(config.model.get(MODULE_FIELD, ""))  # the user's registered models
    fields = {k: v for k, v in config.model.to_dict().items() if k not in NOT_MODEL_FIELDS}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if config.parallel == "pmap" and config.model.get("bn_sync", True):
        fields["bn_axis_name"] = parallel.PMAP_AXIS
    return models.build(config.model.name, num_classes=num_classes,
                        dtype=DTYPES[config.dtype], **fields)


def model_description(config: ml_collections.ConfigDict) -> str:
    """The model's name plus its fields that differ from the registered variant, e.g.
    "resnet20 (depth=26, widths=(16, 32, 64, 128))": the network that really trains."""
    from cnn_jax import models
    from cnn_jax.model_config import NOT_MODEL_FIELDS
    return models.describe(config.model.name, {k: v for k, v in config.model.to_dict().items()
                                               if k not in NOT_MODEL_FIELDS})


class Setup:
    """Everything derived from the config before any step runs."""

    def __init__(self, config: ml_collections.ConfigDict, for_training: bool = True):
        from cnn_jax import data as data_lib
        self.data_lib = data_lib
        validate_config(config)
        self.config = config
        self.info = data_lib.get_info(config.data)
        self.num_classes = int(self.info.num_classes)
        parallel.check_divisible(config.batch_size, "batch_size")
        self.eval_batch_size = int(config.get("eval_batch_size", -1))
        if self.eval_batch_size <= 0:
            self.eval_batch_size = config.batch_size
        parallel.check_divisible(self.eval_batch_size, "eval_batch_size")
        self.num_train = split_size(self.info, config.data.train_split)
        if for_training and self.num_train < config.batch_size:
            raise ValueError(
                f"The training split {config.data.train_split!r} has {self.num_train} examples, "
                f"fewer than one batch (batch_size={config.batch_size}).")
        self.steps_per_epoch = max(1, self.num_train // config.batch_size)
        self.total_steps = (int(config.total_steps) if config.total_steps > 0
                            else max(1, int(math.ceil(config.num_epochs * self.steps_per_epoch))))
        self.model = build_model(config, self.num_classes)
        self.input_shape = input_shape(config, self.info)
        self.schedule = optim.create_schedule(config, self.steps_per_epoch, self.total_steps)
        variable_shapes = jax.eval_shape(
            lambda: init_variables(self.model, jax.random.PRNGKey(0), self.input_shape))
        param_shapes = variable_shapes[0]
        self.tx = optim.create_optimizer(config, self.schedule, param_shapes)
        self.step_cfg = steps.StepConfig(
            apply_fn=self.model.apply, tx=self.tx, schedule=self.schedule,
            num_classes=self.num_classes, label_smoothing=float(config.label_smoothing),
            aux_loss_weight=float(config.get("aux_loss_weight", 0.3)),
            ema_decay=float(config.ema_decay),
            eval_flip_tta=bool(config.get("eval_flip_tta", False)),
            axis_name=parallel.PMAP_AXIS if config.parallel == "pmap" else None)
        self.strategy = parallel.create_strategy(config.parallel, self.step_cfg,
                                                 bn_sync=bool(config.model.get("bn_sync", True)))
        self.init_fn = functools.partial(create_train_state, self.model, self.tx, int(config.seed),
                                         self.input_shape, config.ema_decay > 0)
        self.template = train_state_shapes(variable_shapes, self.tx, int(config.seed),
                                           config.ema_decay > 0)

    def state_from_tree(self, tree: dict) -> TrainState:
        """Checks a restored tree against this model's state, then places it on the devices."""
        if self.template.ema_params is not None and add_ema_batch_stats(tree):
            print("WARNING: the checkpoint predates the EMA of the BatchNorm statistics; it starts "
                  "from the running statistics (as its EMA weights were evaluated so far).",
                  flush=True)
        expected = state_to_tree(self.template)
        want = {ckpt._path_str(p): (tuple(x.shape), np.dtype(x.dtype))
                for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
        got = {ckpt._path_str(p): (tuple(np.shape(x)), np.asarray(x).dtype)
               for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
        if want != got:
            raise ValueError(
                "The checkpoint does not fit the configured model/optimizer (differing arrays: "
                f"{_array_differences(got, want)}). It was written by another config; evaluate "
                "it with that config, or train this one in a new --workdir.")
        return self.strategy.place_state(tree_to_state(self.template, tree))

    def eval_split_label(self, split: str) -> str:
        if split == self.config.data.get("val_split", ""):
            return "val"
        return "val" if split.startswith("val") else "test"


def _array_differences(stored: dict, configured: dict, limit: int = 6) -> str:
    """'params/fc1/kernel: stored (3072, 64) float32, configured (3072, 32) float32; ...'.

    One entry per differing path, the model's params first (the arrays a user recognises), then
    the batch statistics, EMA and optimizer state; `limit` entries, then how many more differ.
    """
    def describe(entry):
        return "missing" if entry is None else f"{entry[0]} {entry[1]}"

    paths = [p for p in set(stored) | set(configured) if stored.get(p) != configured.get(p)]
    paths.sort(key=lambda p: (not p.startswith("params"), p))
    parts = [f"{p}: stored {describe(stored.get(p))}, configured {describe(configured.get(p))}"
             for p in paths[:limit]]
    if len(paths) > limit:
        parts.append(f"... {len(paths) - limit} more")
    return "; ".join(parts)
