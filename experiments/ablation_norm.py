"""Normalization ablation on CIFAR-10: norm {batch, group, layer, none} x {plain, residual}.

    python launch.py --config=experiments/ablation_norm.py --workdir=runs/ablation_norm --sweep
    python launch.py --config=experiments/ablation_norm.py:depth=32 --workdir=runs/ablation_norm32 --sweep
    python -m cnn_jax.report runs/ablation_norm
    python launch.py --config=experiments/ablation_norm.py:runlocal,data=synthetic \
        --workdir=/tmp/ablation_norm --sweep          # CPU smoke test

What it should show: BatchNorm (Ioffe & Szegedy 2015, arXiv:1502.03167) trains fastest and lowest;
GroupNorm (Wu & He 2018, arXiv:1803.08494) and LayerNorm follow a little behind; with no
normalization the same recipe (lr 0.1) trains much worse or diverges, most of all the plain net,
which is the lecture's "BatchNorm makes deep networks trainable". Reference points: ResNet-20 with
BN reaches 8.75% test error (He et al. 2016, Table 6) on the original data; a diverged point is
reported as failed with its error line, not hidden. Every point uses the same recipe (He et al. Sec.
4.2, experiments/common.py), depth 20 by default.

GroupNorm here uses 8 groups (model.norm_groups, arg groups=8): Wu & He's 32 does not divide the
CIFAR widths 16/32/64, so 8 groups of 2/4/8 channels (16 groups would be InstanceNorm in the first
stage); their Table 3 finds 8 groups 0.3 points behind 32 on ImageNet. LayerNorm is one group over
(H, W, C) per example.

Args: runlocal, data=cifar10|synthetic, epochs=182, depth=20, norms=batch+group+layer+none,
groups=8, norm and residual (set per point by the sweep), seeds=0 (e.g. seeds=0+1: every point
once per seed, named norm-batch_residual_seed1, and the report gives mean and std over them), seed
(set per point: config.seed), widths=16+32+64 (model.widths; at widths=8+16+32 use groups=4 to keep
2/4/8 channels per group).
"""

from cnn_jax.models.resnet import CIFAR_NORM_GROUPS
from experiments import common

DATA_HINT = common.CIFAR10_DATA_HINT


def _args(arg):
    return common.parse_arg(arg, runlocal=False, data="cifar10", epochs=182, depth=20,
                            norms=("batch", "group", "layer", "none"), norm="batch", residual=True,
                            seeds=(0,), seed=0, widths=(16, 32, 64), groups=CIFAR_NORM_GROUPS)


def get_config(arg=None):
    a = _args(arg)
    c = common.he2016_recipe(a.epochs)
    c.seed = a.seed
    common.set_cifar_resnet(c, a.depth, a.residual, a.widths)
    c.model.norm = a.norm
    if a.norm == "group":
        c.model.norm_groups = a.groups
    common.set_cifar10_data(c, a.data, a.runlocal)
    return c


def get_sweep(arg=None):
    a = _args(arg)
    return common.with_seeds(common.product(norm=a.norms, residual=(False, True)), a.seeds)
