"""Shared pieces of the CIFAR-10 experiment files: where the data lives, the recipe, `runlocal`.

Not an experiment on its own. Data: the JPEG tree `<root>/<split>/<class>/*.jpg`, root taken from
the environment variable CNN_JAX_CIFAR10, else ~/data/cifar10-jpeg; make it once with

    mkdir -p ~/data/cifar10-jpeg
    tar xzf /work/shared/datasets/cifar10-jpeg-train.tar.gz -C ~/data/cifar10-jpeg

(or point at another tree with CNN_JAX_CIFAR10=DIR or --config.data.path=DIR). Only the train
split ships here, so training uses its first 90% and validation the last 10%; the test split is
evaluated when the tree has `test/`, else the validation split stands in for it (and the
report's test column stays empty). `data=synthetic` swaps in random 32x32x3 images with the same
splits, to exercise the machinery without the tree.
"""

import os

import ml_collections

from experiments.default import get_default_config

ENV_VAR = "CNN_JAX_CIFAR10"
DEFAULT_PATH = "~/data/cifar10-jpeg"
DATA_HINT = (
    f"CIFAR-10 JPEG tree missing: extract it with `mkdir -p {DEFAULT_PATH} && tar xzf "
    f"/work/shared/datasets/cifar10-jpeg-train.tar.gz -C {DEFAULT_PATH}`, or set {ENV_VAR}=DIR "
    "or --config.data.path=DIR")
DATA_CHOICES = ("cifar10", "synthetic")


def cifar10_path() -> str:
    """The CIFAR-10 JPEG root: $CNN_JAX_CIFAR10, else ~/data/cifar10-jpeg."""
    return os.path.expanduser(os.environ.get(ENV_VAR) or DEFAULT_PATH)


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


def set_data(c: ml_collections.ConfigDict, data: str, runlocal: bool) -> None:
    """Points `c.data` at CIFAR-10 (or 32x32x3 synthetic data) and shrinks it for runlocal."""
    if data not in DATA_CHOICES:
        raise ValueError(f"data={data!r}: valid values are {', '.join(DATA_CHOICES)}")
    if data == "cifar10":
        root = cifar10_path()
        c.data.name = "cifar10"
        c.data.path = root
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
        shrink_for_runlocal(c)


def shrink_for_runlocal(c: ml_collections.ConfigDict) -> None:
    """A CPU smoke test: a few hundred examples, small batches, a handful of steps."""
    c.batch_size = 16
    c.total_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.async_checkpoints = False
    c.compilation_cache = False
    c.data.shuffle_buffer = 256
    if c.data.name == "synthetic":
        c.data.synthetic_num_examples = 128
    else:
        c.data.train_split = "train[:512]"
        c.data.val_split = "train[-256:]"
        if c.data.eval_split != "test":
            c.data.eval_split = "train[-256:]"
        else:
            c.data.eval_split = "test[:256]"
