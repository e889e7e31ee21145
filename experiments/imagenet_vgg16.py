"""VGG-16 (configuration D) on ImageNet with the published recipe (Simonyan & Zisserman 2015).

    python launch.py --config=experiments/imagenet_vgg16.py --workdir=runs/imagenet_vgg16
    python launch.py --config=experiments/imagenet_vgg16.py:data=imagenette --workdir=runs/vgg_nette
    python launch.py --config=experiments/imagenet_vgg16.py:runlocal --workdir=/tmp/vgg  # CPU smoke

Should reach: 27.0% top-1 / 8.8% top-5 error on the ILSVRC-2012 validation set for configuration D
trained and tested at scale 256 (Simonyan & Zisserman 2015, arXiv:1409.1556, Table 3; 24.8% / 7.5%
with scale jittering in training and multi-scale testing, Table 4).

Recipe (Sec. 3.1): batch 256, SGD momentum 0.9, weight decay 5e-4, dropout 0.5 in the first two
fully connected layers (part of the model), lr 0.01 divided by 10 when the validation accuracy
stopped improving, three times in 74 epochs; here the drops are fixed at epochs 30, 50 and 65 of
74. Random-resized crop 224 + flip stand in for their random 224 crops of rescaled images, flips
and colour shift. Args: runlocal, data=imagenet2012|imagenette|synthetic, epochs=74.
"""

from experiments import common


def get_config(arg=None):
    return common.imagenet_multistep_recipe(
        arg, "vgg16", epochs=74, batch_size=256, lr=0.01, weight_decay=5e-4,
        drops=(30 / 74, 50 / 74, 65 / 74))
