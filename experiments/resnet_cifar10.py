"""ResNet (or its plain twin) on CIFAR-10 with the recipe of He et al. 2016, Sec. 4.2.

    python launch.py --config=experiments/resnet_cifar10.py:depth=20 --workdir=runs/resnet20_cifar10
    python launch.py --config=experiments/resnet_cifar10.py:depth=56,plain --workdir=runs/plain56
    python launch.py --config=experiments/resnet_cifar10.py:runlocal --workdir=/tmp/resnet_cifar10

Should reach (He et al. 2016, arXiv:1512.03385, Table 6, original PNG data): test error 8.75 /
7.51 / 7.17 / 6.97 / 6.43 / 7.93% for ResNet-20/32/44/56/110/1202 (the 1202-layer net, 19.4M
parameters, overfits: worse than 110); the plain nets get worse with depth. On the JPEG re-encoding used here expect a few points more error (../shared/datasets/README.md).
Recipe: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at iterations 32k
and 48k, 64k iterations in all, 4-pixel zero pad + 32x32 random crop + horizontal flip; training
on 45k images with a 5k validation split carved from train (as the paper's Sec. 4.2 does).
`runlocal` shrinks it to a CPU smoke test of a few steps on a few hundred images.

Args (comma-separated after the file name): depth=20 (6n+2: 20, 32, 44, 56, 110, 1202), plain
(no shortcuts), norm=batch (batch|group|layer|none), groups=8 (norm=group: GroupNorm's group count,
model.norm_groups; 8 groups of 2/4/8 channels on the widths 16/32/64, see cnn_jax/models/resnet.py),
shortcut=A (A: zero-padded identity, B: projection when the shape changes, C: projection
everywhere), data=cifar10|synthetic, runlocal.
Data: the JPEG tree `<root>/<split>/<class>/*.jpg` from $CNN_JAX_CIFAR10 or ~/data/cifar10-jpeg
(see experiments/common.py), or --config.data.path=DIR.
"""

from cnn_jax.models.resnet import CIFAR_DEPTHS, CIFAR_NORM_GROUPS
from experiments import common

DEPTHS = CIFAR_DEPTHS  # each one registered as resnetD and plainD


def get_config(arg=None):
    a = common.parse_arg(arg, depth=20, plain=False, norm="batch", groups=CIFAR_NORM_GROUPS,
                         shortcut="A", data="cifar10", runlocal=False)
    if a.depth not in DEPTHS:
        raise ValueError(f"depth={a.depth}: the CIFAR ResNets have depth 6n+2, one of {DEPTHS}.")
    if a.shortcut not in ("A", "B", "C"):
        raise ValueError(f"shortcut={a.shortcut!r}: valid values are A, B, C.")
    c = common.he2016_recipe(182)
    # 64k iterations with /10 at 32k and 48k, counted in steps as in the paper.
    c.total_steps = 64_000
    c.optim.milestones = (32_000, 48_000)
    c.optim.milestone_unit = "steps"
    c.model.name = f"{'plain' if a.plain else 'resnet'}{a.depth}"
    c.model.norm = a.norm
    if a.norm == "group":
        c.model.norm_groups = a.groups
    if not a.plain:
        c.model.shortcut = a.shortcut
    common.set_cifar10_data(c, a.data, a.runlocal)
    return c
