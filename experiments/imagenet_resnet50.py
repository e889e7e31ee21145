"""ResNet-50 (bottleneck blocks) on ImageNet with the published recipe (He et al. 2016, Sec. 3.4).

    python launch.py --config=experiments/imagenet_resnet50.py --workdir=runs/imagenet_resnet50
    python launch.py --config=experiments/imagenet_resnet50.py:data=imagenette --workdir=runs/r50_nette
    python launch.py --config=experiments/imagenet_resnet50.py:runlocal --workdir=/tmp/r50  # CPU smoke

Should reach: 22.85% top-1 / 6.71% top-5 error on the ImageNet validation set (He et al. 2016,
arXiv:1512.03385, Table 3, 10-crop testing); about 23.6% top-1 error with a single 224 centre crop
(Goyal et al. 2017, arXiv:1706.02677, Table 1: 23.60% for this 90-epoch schedule at batch 256).

Recipe: batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at epochs 30, 60
and 80 of 90 (Goyal et al. 2017, the fixed form of He et al.'s "divide when the error
plateaus"); random-resized crop 224 + flip (experiments/common.py).
Args: runlocal, data=imagenet2012|imagenette|synthetic, epochs=90.
"""

from experiments import common


def get_config(arg=None):
    return common.imagenet_multistep_recipe(
        arg, "resnet50", epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4,
        drops=(1 / 3, 2 / 3, 8 / 9))
