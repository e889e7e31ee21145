"""Helpers shared by the experiment files: typed `:ARGS` parsing, sweep axes, dataset recipes.

Not an experiment on its own. An experiment file `experiments/X.py` defines `get_config(arg)`
(and, for a sweep, `get_sweep(arg)`) and imports what it needs from here:

- `parse_arg(arg, **defaults)` and `product(**axes)`, the `file.py:a=1,runlocal` grammar and the
  named sweep points (`depth20_residual`), as in big_vision's configs;
- CIFAR-10: `cifar10_path`, `he2016_recipe`, `set_cifar_resnet`, `set_cifar10_data`,
  `shrink_cifar10_for_runlocal`;
- ImageNet: `imagenet_config`, `parse_imagenet_arg`, `imagenet_multistep_recipe`,
  `shrink_imagenet_for_runlocal`.

CIFAR-10 data: the JPEG tree `<root>/<split>/<class>/*.jpg`, root taken from the environment
variable CNN_JAX_CIFAR10, else ~/data/cifar10-jpeg; make it once with

    mkdir -p ~/data/cifar10-jpeg
    tar xzf ../shared/datasets/cifar10-jpeg-train.tar.gz -C ~/data/cifar10-jpeg

(or point at another tree with CNN_JAX_CIFAR10=DIR or --config.data.path=DIR). Only the train
split ships there, so training uses its first 90% and validation the last 10%; the test split is
evaluated when the tree has `test/`, else the validation split stands in for it (and the
report's test column stays empty). `data=synthetic` swaps in random 32x32x3 images with the same
splits, to exercise the machinery without the tree.

ImageNet: `data=imagenet2012` (default) reads tfds's prepared imagenet2012 (train / validation;
tfds needs the ILSVRC2012 tar files in its manual_dir) or an image tree at --config.data.path;
`data=imagenette` the 10-class Imagenette subset (tfds, or a tree); `data=synthetic` random
224x224 images, for when neither is at hand. Training augmentation is the Inception-style
random-resized crop to 224 plus horizontal flip (Szegedy et al. 2015, Sec. 6); evaluation is the
single centre crop; pixels are normalised with the usual ImageNet constants. Synthetic images
live in memory, where the engine has no random-resized crop: they get the flip only (they
measure the machinery and throughput, not accuracy).
"""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from cnn_jax.rundir import format_value, point_name, split_arg
from experiments.default import get_default_config

__all__ = ["parse_arg", "product", "point_name"]

# ----------------------------------------------------------------------------------------------
# Args and sweep points.


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", ""):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"experiment arg {key}={text!r}: expected True or False")


def _parse_like(key: str, text: str, default: Any) -> Any:
    """Parses `text` into the type of `default` (bool, int, float, str, or a '+'-separated tuple)."""
    try:
        if isinstance(default, bool):
            return _parse_bool(key, text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            if text == "":
                return ()
            element = default[0] if default else ""
            return tuple(_parse_like(key, part, element) for part in text.split("+"))
    except ValueError as e:
        if "experiment arg" in str(e):
            raise
        raise ValueError(
            f"experiment arg {key}={text!r}: expected a {type(default).__name__} "
            f"like {format_value(default)!r}") from None
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses an experiment's `:ARGS` string ('runlocal,depth=20') against typed defaults.

    A bare key sets a bool to True; values take the type of their default; a tuple default takes
    '+'-separated values (`depths=20+32`). Unknown keys are an error naming the valid ones.
    """
    out = dict(defaults)
    for key, value in split_arg(arg):
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown experiment arg {key!r} in {arg!r}. Valid args: "
                f"{', '.join(sorted(defaults)) or '(none)'}.{hint}")
        default = defaults[key]
        if value is None:
            if not isinstance(default, bool):
                raise ValueError(
                    f"experiment arg {key!r} needs a value, e.g. {key}={format_value(default)}")
            out[key] = True
        else:
            out[key] = _parse_like(key, value, default)
    return ml_collections.ConfigDict(out)


def product(**axes: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Cartesian product of named axes, as named points (first axis varies slowest)."""
    for key, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"sweep axis {key}={values!r}: give a list of values, e.g. {key}=[1, 2]")
    keys = list(axes)
    points = []
    for values in itertools.product(*(list(axes[k]) for k in keys)):
        overrides = dict(zip(keys, values))
        points.append((point_name(overrides), overrides))
    return points


def with_seeds(points: list[tuple[str, dict[str, Any]]], seeds: Sequence[int],
               default: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Adds a `seed` axis (an experiment arg setting config.seed) to every point.

    Several seeds name the points NAME_seedS (the seeds of a point next to each other), and the
    report averages them. One seed keeps the names; the default seed adds no axis at all, so a
    single-seed sweep plans exactly what it did before seeds existed.
    """
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds=: give at least one seed, e.g. seeds=0+1")
    if seeds == (default,):
        return list(points)
    if len(seeds) == 1:
        return [(name, {**axes, "seed": seeds[0]}) for name, axes in points]
    return [(f"{name}_seed{s}", {**axes, "seed": s}) for name, axes in points for s in seeds]


def _smoke_schedule(c: ml_collections.ConfigDict, *, batch_size: int, total_steps: int,
                    log_every_steps: int, shuffle_buffer: int) -> None:
    """The runlocal run length: evaluation and a synchronous checkpoint every 3 steps."""
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.log_every_steps = log_every_steps
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.async_checkpoints = False
    c.data.shuffle_buffer = shuffle_buffer


# ----------------------------------------------------------------------------------------------
# CIFAR-10.

CIFAR10_ENV_VAR = "CNN_JAX_CIFAR10"
CIFAR10_DEFAULT_PATH = "~/data/cifar10-jpeg"
CIFAR10_DATA_HINT = (
    f"CIFAR-10 JPEG tree missing: extract it with `mkdir -p {CIFAR10_DEFAULT_PATH} && tar xzf "
    f"../shared/datasets/cifar10-jpeg-train.tar.gz -C {CIFAR10_DEFAULT_PATH}`, or set "
    f"{CIFAR10_ENV_VAR}=DIR or --config.data.path=DIR")
CIFAR10_DATA_CHOICES = ("cifar10", "synthetic")


def cifar10_path(expand: bool = True) -> str:
    """The CIFAR-10 JPEG root: $CNN_JAX_CIFAR10, else ~/data/cifar10-jpeg; with `~` expanded, or
    as written (`expand=False`: what configs record, so that they name no one machine's home)."""
    path = os.environ.get(CIFAR10_ENV_VAR) or CIFAR10_DEFAULT_PATH
    return os.path.expanduser(path) if expand else path


def he2016_recipe(epochs: int) -> ml_collections.ConfigDict:
    """He et al. 2016 (arXiv:1512.03385, Sec. 4.2) CIFAR-10 training, on a 45k/5k train/val split.

    Batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k of 64k
    iterations (= epochs 91 and 136 of 182 at 45k images), 4-pixel pad + 32x32 crop + flip.
    `epochs` shrinks the schedule keeping the milestones at 1/2 and 3/4 of it.
    """
    c = get_default_config()
    c.batch_size = 128
    c.num_epochs = epochs
    c.optim.name = "sgd"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "multistep"
    c.optim.milestones = (epochs // 2, (3 * epochs) // 4)
    c.optim.gamma = 0.1
    c.data.crop_padding = 4
    c.data.flip = True
    return c


def set_cifar_resnet(c: ml_collections.ConfigDict, depth: int, residual: bool,
                     widths: Sequence[int] = (16, 32, 64)) -> None:
    """The depth-`depth` CIFAR ResNet (shortcut option A) or its plain twin, at `widths` (the
    paper's 16/32/64 unless given; only a different value is written into the config)."""
    c.model.name = f"{'resnet' if residual else 'plain'}{depth}"
    if tuple(widths) != (16, 32, 64):
        c.model.widths = tuple(widths)
    if residual:
        c.model.shortcut = "A"


def set_cifar10_data(c: ml_collections.ConfigDict, data: str, runlocal: bool) -> None:
    """Points `c.data` at CIFAR-10 (or 32x32x3 synthetic data) and shrinks it for runlocal."""
    if data not in CIFAR10_DATA_CHOICES:
        raise ValueError(f"data={data!r}: valid values are {', '.join(CIFAR10_DATA_CHOICES)}")
    if data == "cifar10":
        root = cifar10_path()
        c.data.name = "cifar10"
        c.data.path = cifar10_path(expand=False)  # the data reader expands `~`
        c.data.train_split = "train[:90%]"
        c.data.val_split = "train[90%:]"
        c.data.eval_split = "test" if os.path.isdir(os.path.join(root, "test")) else "train[90%:]"
    else:
        c.data.name = "synthetic"
        c.data.synthetic_shape = (32, 32, 3)
        c.data.synthetic_num_classes = 10
        c.data.synthetic_num_examples = 50_000
        c.data.train_split = "train[:90%]"
        c.data.val_split = "train[90%:]"
        c.data.eval_split = "test"
    if runlocal:
        shrink_cifar10_for_runlocal(c)


def shrink_cifar10_for_runlocal(c: ml_collections.ConfigDict) -> None:
    """A CPU smoke test: a few hundred examples, small batches, a handful of steps."""
    _smoke_schedule(c, batch_size=16, total_steps=6, log_every_steps=2, shuffle_buffer=256)
    c.compilation_cache = False
    if c.data.name == "synthetic":
        c.data.synthetic_num_examples = 128
    else:
        c.data.train_split = "train[:512]"
        c.data.val_split = "train[-256:]"
        if c.data.eval_split != "test":
            c.data.eval_split = "train[-256:]"
        else:
            c.data.eval_split = "test[:256]"


# ----------------------------------------------------------------------------------------------
# ImageNet.

IMAGENET_DATA_CHOICES = ("imagenet2012", "imagenette", "synthetic")


def imagenet_config(model: str, data: str, *, batch_size: int, lr: float, weight_decay: float,
                    epochs: int, image_size: int = 224) -> ml_collections.ConfigDict:
    """SGD momentum 0.9 on `data` with random-resized-crop `image_size` (224) + flip, synthetic
    images of that size; the schedule is set by the caller."""
    if data not in IMAGENET_DATA_CHOICES:
        raise ValueError(f"data={data!r}: valid values are {', '.join(IMAGENET_DATA_CHOICES)}")
    c = get_default_config()
    c.model.name = model
    c.batch_size = batch_size
    c.num_epochs = epochs
    c.optim.name = "sgd"
    c.optim.lr = lr
    c.optim.momentum = 0.9
    c.optim.weight_decay = weight_decay
    c.data.name = data
    c.data.image_size = image_size
    c.data.random_resized_crop = True
    c.data.flip = True
    c.data.train_split = "train"
    c.data.val_split = ""
    c.data.shuffle_buffer = 16_384
    c.log_every_steps = 500
    if data == "synthetic":
        # In-memory arrays: no random-resized crop (it works on streamed files); native size.
        c.data.random_resized_crop = False
        c.data.image_size = -1
        c.data.synthetic_shape = (image_size, image_size, 3)
        c.data.synthetic_num_classes = 1000
        c.data.synthetic_num_examples = 4096
        c.data.eval_split = "test"
        c.log_every_steps = 10
    else:
        c.data.normalize = "published"
        c.data.eval_split = "validation"
    return c


def shrink_imagenet_for_runlocal(c: ml_collections.ConfigDict, image_size: int) -> None:
    """A CPU smoke test: a few small synthetic images (unless data= says otherwise), 3 steps."""
    _smoke_schedule(c, batch_size=4, total_steps=3, log_every_steps=1, shuffle_buffer=64)
    if c.data.name == "synthetic":
        c.data.synthetic_shape = (image_size, image_size, 3)
        c.data.synthetic_num_classes = 10
        c.data.synthetic_num_examples = 32
    else:
        c.data.image_size = image_size
        c.data.train_split = "train[:64]"
        c.data.eval_split = "validation[:32]"


def parse_imagenet_arg(arg: str | None, epochs: int,
                       **extra) -> tuple[ml_collections.ConfigDict, str]:
    """A recipe's args (runlocal, data=, epochs=, and `extra`) and the data set they choose."""
    a = parse_arg(arg, runlocal=False, data="", epochs=epochs, **extra)
    return a, a.data or ("synthetic" if a.runlocal else "imagenet2012")


def imagenet_multistep_recipe(arg: str | None, model: str, *, epochs: int, batch_size: int,
                              lr: float, weight_decay: float, drops: Sequence[float],
                              runlocal_image_size: int = 64,
                              image_size: int = 224) -> ml_collections.ConfigDict:
    """A recipe file's config: imagenet_config with lr / 10 at the fractions `drops` of the epochs."""
    a, data = parse_imagenet_arg(arg, epochs)
    c = imagenet_config(model, data, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        epochs=a.epochs, image_size=image_size)
    c.optim.schedule = "multistep"
    c.optim.milestones = tuple(round(a.epochs * f) for f in drops)
    if a.runlocal:
        shrink_imagenet_for_runlocal(c, image_size=runlocal_image_size)
    return c
