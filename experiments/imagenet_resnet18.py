"""ResNet-18 on ImageNet with the published recipe (He et al. 2016, arXiv:1512.03385, Sec. 3.4).

    python launch.py --config=experiments/imagenet_resnet18.py --workdir=runs/imagenet_resnet18
    python launch.py --config=experiments/imagenet_resnet18.py:data=imagenette --workdir=runs/r18_nette
    python launch.py --config=experiments/imagenet_resnet18.py:data=synthetic --workdir=runs/r18_syn
    python launch.py --config=experiments/imagenet_resnet18.py:runlocal --workdir=/tmp/r18  # CPU smoke

Should reach: 27.88% top-1 error on the ImageNet validation set (He et al. Table 2, 10-crop
testing); about 30% with this codebase's single 224 centre crop (torchvision's reference ResNet-18:
69.76% top-1 accuracy). Imagenette: roughly 90% top-1 or better. Synthetic: no target (it checks
the machinery and throughput).

Recipe: batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 "when the error
plateaus" (He et al.), here fixed at epochs 30, 60 and 80 of 90 as in Goyal et al. 2017
(arXiv:1706.02677); random-resized crop 224 + flip (experiments/common.py).
Args: runlocal, data=imagenet2012|imagenette|synthetic, epochs=90.
"""

from experiments import common


def get_config(arg=None):
    return common.imagenet_multistep_recipe(
        arg, "resnet18", epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4,
        drops=(1 / 3, 2 / 3, 8 / 9))
