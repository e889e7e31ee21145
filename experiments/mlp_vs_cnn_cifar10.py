"""MLP vs a small CNN on CIFAR-10 with the same budget (epochs, batch, data, augmentation).

    python launch.py --config=experiments/mlp_vs_cnn_cifar10.py --workdir=runs/mlp_vs_cnn --sweep
    python -m cnn_jax.report runs/mlp_vs_cnn
    python launch.py --config=experiments/mlp_vs_cnn_cifar10.py:runlocal,data=synthetic \
        --workdir=/tmp/mlp_vs_cnn --sweep              # CPU smoke test, seconds

Should reach the lecture's picture: the CNN (ResNet-20, 0.27M parameters) near 85-90% test accuracy
and the MLP (3072-1024-512-10, 3.7M parameters) near 53-55%, so the network with 14x FEWER
parameters wins by ~30 points: locality and weight sharing, not size. Both get 30 epochs of
batch 128, SGD momentum 0.9, cosine decay, weight decay 5e-4, 4-pixel pad-crop and flip; only the
peak learning rate differs (0.1 CNN, 0.01 MLP, each net's usual stable value).

Args: runlocal, data=cifar10|synthetic, epochs=30, nets=mlp+cnn (the sweep axis), net (set per
point), seeds=0 (the second sweep axis, e.g. seeds=0+1; points are named net_seedS when there are
several), seed (set per point: config.seed), cnn=resnet20 (the registry name of the CNN; e.g. lenet5 for the lecture's smallest one). Data: $CNN_JAX_CIFAR10 or ~/data/cifar10-jpeg (see experiments/common.py).
"""

from experiments import common

DATA_HINT = common.CIFAR10_DATA_HINT
NETS = ("mlp", "cnn")


def _args(arg):
    return common.parse_arg(arg, runlocal=False, data="cifar10", epochs=30, nets=NETS, net="cnn",
                            seeds=(0,), seed=0, cnn="resnet20")


def get_config(arg=None):
    a = _args(arg)
    if a.net not in NETS:
        raise ValueError(f"net={a.net!r}: valid values are {', '.join(NETS)}")
    c = common.he2016_recipe(a.epochs)
    c.seed = a.seed
    c.optim.schedule = "cosine"
    c.optim.milestones = ()
    c.optim.weight_decay = 5e-4
    if a.net == "mlp":
        c.model.name = "mlp"
        c.model.hidden_sizes = (1024, 512)
        c.optim.lr = 0.01
    else:
        c.model.name = a.cnn
        c.optim.lr = 0.1
    common.set_cifar10_data(c, a.data, a.runlocal)
    return c


def get_sweep(arg=None):
    a = _args(arg)
    for net in a.nets:
        if net not in NETS:
            raise ValueError(f"nets={'+'.join(a.nets)}: {net!r} is not one of {', '.join(NETS)}")
    seeds = tuple(a.seeds)
    if len(seeds) == 1:  # the seed stays an axis here (the first sweeps were planned so)
        return [(net, {"net": net, "seed": seeds[0]}) for net in a.nets]
    return common.with_seeds([(net, {"net": net}) for net in a.nets], seeds)
