"""ResNet-18 with the small-input stem (3x3 stride-1 conv, no max-pool) on Fashion-MNIST.

    python launch.py --config=experiments/resnet18_fashion_mnist.py --workdir=runs/resnet18_fmnist
    python launch.py --config=experiments/resnet18_fashion_mnist.py:runlocal \
        --workdir=/tmp/resnet18_fmnist                 # CPU smoke test, under a minute

Should reach: above the published anchor of 94.9% test accuracy for ResNet-18 (the benchmark
table of the Fashion-MNIST README, github.com/zalandoresearch/fashion-mnist); this recipe aims at
95.5% or more (one GPU, roughly 10-20 minutes). Recipe: all 60,000 training images (as the anchor),
batch 128, SGD momentum 0.9 (Nesterov), lr 0.1 with 1 warm-up epoch then cosine decay to 0 over
60 epochs, weight decay 5e-4, label smoothing 0.1, 4-pixel pad + 28x28 crop and horizontal flip.
The test split is evaluated every epoch and reported at the end (the final epoch, not the best
one, is the honest number). `holdout` instead trains on train[:90%] and validates on train[90%:].

Data: the four IDX files, found in /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist) or at --config.data.path=DIR. Args: runlocal, holdout, epochs=60.
"""

from experiments.common import parse_arg
from experiments.default import get_default_config


def get_config(arg=None):
    a = parse_arg(arg, runlocal=False, holdout=False, epochs=60)
    c = get_default_config()
    c.model.name = "resnet18"
    c.model.small_stem = True
    c.data.name = "fashion_mnist"
    c.data.train_split = "train[:90%]" if a.holdout else "train"
    c.data.val_split = "train[90%:]" if a.holdout else ""
    c.data.eval_split = "test"
    c.data.crop_padding = 4
    c.data.flip = True
    c.batch_size = 128
    c.num_epochs = a.epochs
    c.label_smoothing = 0.1
    c.optim.name = "sgd"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 1.0
    if a.runlocal:
        c.batch_size = 16
        c.total_steps = 6
        c.optim.warmup_epochs = 0.0
        c.log_every_steps = 2
        c.eval_every_steps = 3
        c.checkpoint_every_steps = 3
        c.async_checkpoints = False
        c.data.train_split = "train[:512]"
        c.data.val_split = "train[-128:]" if a.holdout else ""
        c.data.eval_split = "test[:256]"
        c.data.shuffle_buffer = 512
    return c
