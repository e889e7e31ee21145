"""AlexNet on ImageNet with the published recipe (Krizhevsky, Sutskever & Hinton 2012, Sec. 5).

    python launch.py --config=experiments/imagenet_alexnet.py --workdir=runs/imagenet_alexnet
    python launch.py --config=experiments/imagenet_alexnet.py:data=imagenette --workdir=runs/alex_nette
    python launch.py --config=experiments/imagenet_alexnet.py:runlocal --workdir=/tmp/alex  # CPU smoke
    python -m cnn_jax.report runs/imagenet_alexnet --filters   # the lecture's 96 first-layer kernels

Should reach: 40.7% top-1 / 18.2% top-5 error on the ILSVRC-2012 validation set for one CNN
(Krizhevsky et al. 2012, Table 2), with their 10-patch testing; a little more with one centre crop.

Recipe (Sec. 5): batch 128, SGD momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 when the
validation error stopped improving, three times in roughly 90 epochs; here the three drops are
fixed at epochs 30, 60 and 80 of 90. Dropout 0.5 in the first two fully connected layers (part of
the model). Augmentation: the random-resized crop + flip stands in for the paper's random crops of
256x256 images plus flips and PCA colour noise.

Input 227x227: the model is the lecture's AlexNet (registry name `alexnet`, 62,378,344
parameters), whose layer sizes (55x55 after conv1, 6x6x256 into fc6) need 227, not the paper's
stated 224; at 224 pool5 would be 5x5 and the network 50,844,008 parameters. (torchvision's
variant, which takes 224 through an adaptive pool, is `--config.model.name=alexnet_tv` with
`--config.data.image_size=224`.) `runlocal` trains the same layers on 128x128 synthetic images,
so its classifier is smaller: a smoke test of the machinery only.
Args: runlocal, data=imagenet2012|imagenette|synthetic, epochs=90.
"""

from experiments import common

INPUT_SIZE = 227  # the lecture AlexNet's input (see above)


def get_config(arg=None):
    return common.imagenet_multistep_recipe(
        arg, "alexnet", epochs=90, batch_size=128, lr=0.01, weight_decay=5e-4,
        drops=(1 / 3, 2 / 3, 8 / 9), runlocal_image_size=128, image_size=INPUT_SIZE)
