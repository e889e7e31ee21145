"""Shared pieces of the ImageNet recipe files (imagenet_*.py): data choice, augmentation, runlocal.

Not an experiment on its own. `data=imagenet2012` (default) reads tfds's prepared imagenet2012
(train / validation; tfds needs the ILSVRC2012 tar files in its manual_dir) or an image tree at
--config.data.path; `data=imagenette` the 10-class Imagenette subset (tfds, or a tree);
`data=synthetic` random 224x224 images, for when neither is at hand. Training augmentation is the
Inception-style random-resized crop to 224 plus horizontal flip (Szegedy et al. 2015, Sec. 6);
evaluation is the single centre crop; pixels are normalised with the usual ImageNet constants.
Synthetic images live in memory, where the engine has no random-resized crop: they get the flip
only (they measure the machinery and throughput, not accuracy).
"""

from collections.abc import Sequence

import ml_collections

from cnn_jax.sweep import parse_arg
from experiments.default import get_default_config

DATA_CHOICES = ("imagenet2012", "imagenette", "synthetic")


def base_config(model: str, data: str, *, batch_size: int, lr: float, weight_decay: float,
                epochs: int) -> ml_collections.ConfigDict:
    """SGD momentum 0.9 on `data` with random-resized-crop 224 + flip; the schedule is set by the caller."""
    if data not in DATA_CHOICES:
        raise ValueError(f"data={data!r}: valid values are {', '.join(DATA_CHOICES)}")
    c = get_default_config()
    c.model.name = model
    c.batch_size = batch_size
    c.num_epochs = epochs
    c.optim.name = "sgd"
    c.optim.lr = lr
    c.optim.momentum = 0.9
    c.optim.weight_decay = weight_decay
    c.data.name = data
    c.data.image_size = 224
    c.data.random_resized_crop = True
    c.data.flip = True
    c.data.train_split = "train"
    c.data.val_split = ""
    c.data.shuffle_buffer = 16_384
    c.log_every_steps = 500
    if data == "synthetic":
        # In-memory arrays: no random-resized crop (it works on streamed files); native 224.
        c.data.random_resized_crop = False
        c.data.image_size = -1
        c.data.synthetic_shape = (224, 224, 3)
        c.data.synthetic_num_classes = 1000
        c.data.synthetic_num_examples = 4096
        c.data.eval_split = "test"
        c.log_every_steps = 10
    else:
        c.data.normalize = "published"
        c.data.eval_split = "validation"
    return c


def shrink_for_runlocal(c: ml_collections.ConfigDict, image_size: int) -> None:
    """A CPU smoke test: a few small synthetic images (unless data= says otherwise), 3 steps."""
    c.batch_size = 4
    c.total_steps = 3
    c.log_every_steps = 1
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.async_checkpoints = False
    c.data.shuffle_buffer = 64
    if c.data.name == "synthetic":
        c.data.synthetic_shape = (image_size, image_size, 3)
        c.data.synthetic_num_classes = 10
        c.data.synthetic_num_examples = 32
    else:
        c.data.image_size = image_size
        c.data.train_split = "train[:64]"
        c.data.eval_split = "validation[:32]"


def parse_recipe_arg(arg: str | None, epochs: int,
                     **extra) -> tuple[ml_collections.ConfigDict, str]:
    """A recipe's args (runlocal, data=, epochs=, and `extra`) and the data set they choose."""
    a = parse_arg(arg, runlocal=False, data="", epochs=epochs, **extra)
    return a, a.data or ("synthetic" if a.runlocal else "imagenet2012")


def multistep_recipe(arg: str | None, model: str, *, epochs: int, batch_size: int, lr: float,
                     weight_decay: float, drops: Sequence[float],
                     runlocal_image_size: int = 64) -> ml_collections.ConfigDict:
    """A recipe file's config: base_config with lr / 10 at the fractions `drops` of the epochs."""
    a, data = parse_recipe_arg(arg, epochs)
    c = base_config(model, data, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                    epochs=a.epochs)
    c.optim.schedule = "multistep"
    c.optim.milestones = tuple(round(a.epochs * f) for f in drops)
    if a.runlocal:
        shrink_for_runlocal(c, image_size=runlocal_image_size)
    return c
