"""Depth ablation on CIFAR-10: ResNet vs its plain twin at depth {20, 32, 44, 56} (8 points).

    python launch.py --config=experiments/ablation_depth.py --workdir=runs/ablation_depth --sweep
    python launch.py --config=experiments/ablation_depth.py --workdir=runs/ablation_depth \
        --sweep_dry_run          # one launch.py command per point, for a scheduler
    python -m cnn_jax.report runs/ablation_depth      # tables and plots afterwards
    python launch.py --config=experiments/ablation_depth.py:runlocal,data=synthetic \
        --workdir=/tmp/ablation_depth --sweep          # CPU smoke test

Should reach (He et al. 2016, arXiv:1512.03385, Table 6 and Fig. 6, original PNG data): test
error 8.75 / 7.51 / 7.17 / 6.97% for ResNet-20/32/44/56, while the plain nets get WORSE with depth
in both training and test error (Fig. 6 left: plain-56 above plain-20). On this JPEG re-encoding
expect a few points more error (see ../shared/datasets/README.md). Recipe: He et al. Sec. 4.2
(experiments/common.py), shortcut option A, 182 epochs; `epochs=N` shrinks it.

Args (comma-separated after the file name): runlocal, data=cifar10|synthetic, epochs=182,
depths=20+32+44+56 (the sweep's depth axis), twins=plain+residual (the sweep's other axis;
twins=residual runs the ResNets alone, e.g. to re-test the residual half at a longer schedule),
depth and residual (set per point by the sweep),
seeds=0 (e.g. seeds=0+1: every point once per seed, named depth20_residual_seed1, and the report
gives mean and std over them), seed (set per point: config.seed), widths=16+32+64 (the three
stages' channels, model.widths; e.g. widths=8+16+32 for a quarter of the FLOPs on a CPU).
Data: $CNN_JAX_CIFAR10 or ~/data/cifar10-jpeg (see experiments/common.py for how to
extract it). Sweep points are passed as experiment args, e.g. `...:depth=20,residual=True`.
"""

from experiments import common

DATA_HINT = common.CIFAR10_DATA_HINT
TWINS = {"plain": False, "residual": True}


def _args(arg):
    return common.parse_arg(arg, runlocal=False, data="cifar10", epochs=182,
                            depths=(20, 32, 44, 56), twins=tuple(TWINS), depth=20,
                            residual=True, seeds=(0,), seed=0,
                            widths=(16, 32, 64))


def get_config(arg=None):
    a = _args(arg)
    c = common.he2016_recipe(a.epochs)
    c.seed = a.seed
    common.set_cifar_resnet(c, a.depth, a.residual, a.widths)
    common.set_cifar10_data(c, a.data, a.runlocal)
    return c


def get_sweep(arg=None):
    a = _args(arg)
    for twin in a.twins:
        if twin not in TWINS:
            raise ValueError(f"twins={'+'.join(a.twins)}: {twin!r} is not one of "
                             f"{', '.join(TWINS)}; e.g. twins=plain+residual")
    residual = tuple(TWINS[twin] for twin in a.twins)
    return common.with_seeds(common.product(depth=a.depths, residual=residual), a.seeds)
