"""GoogLeNet (Inception v1) on ImageNet with the published recipe (Szegedy et al. 2015).

    python launch.py --config=experiments/imagenet_googlenet.py --workdir=runs/imagenet_googlenet
    python launch.py --config=experiments/imagenet_googlenet.py:data=imagenette --workdir=runs/gn_nette
    python launch.py --config=experiments/imagenet_googlenet.py:runlocal --workdir=/tmp/gn  # CPU smoke

Should reach: 10.07% top-5 error on the ImageNet validation set for one model and one crop
(Szegedy et al. 2015, arXiv:1409.4842, Table 3; 6.67% is their 7-model, 144-crop ensemble).

Recipe (Sec. 6 of the paper): SGD momentum 0.9, the learning rate decreased by 4% every 8 epochs
(here: multistep with gamma 0.96 at every 8th epoch), Polyak averaging of the weights (here: an
exponential moving average, ema_decay 0.9999, of the weights and of the BatchNorm statistics; the
results report the EMA's figures and, as raw_*, the live weights'), the two auxiliary classifiers
(model.aux_logits=True, after inception 4a and 4d; trained only, dropped at evaluation) with
their losses weighted 0.3 (aux_loss_weight), random crops of 8%-100% of the area with aspect ratio
3/4-4/3 (the random-resized crop) and flips. The paper does not give the batch size, the base
learning rate, the weight decay or the length; here batch 256, lr 0.1, weight decay 1e-4 and
`epochs=250` (at 90 epochs the rate would only fall to 0.064; use `schedule=cosine` for a shorter
practical run). Args: runlocal, data=imagenet2012|imagenette|synthetic, epochs=250,
schedule=paper|cosine.
"""

from experiments import common


def get_config(arg=None):
    a, data = common.parse_imagenet_arg(arg, epochs=250, schedule="paper")
    if a.schedule not in ("paper", "cosine"):
        raise ValueError(f"schedule={a.schedule!r}: valid values are paper, cosine")
    c = common.imagenet_config("googlenet", data, batch_size=256, lr=0.1,
                                    weight_decay=1e-4, epochs=a.epochs)
    if a.schedule == "paper":
        c.optim.schedule = "multistep"
        c.optim.milestones = tuple(range(8, a.epochs, 8))
        c.optim.gamma = 0.96
    else:
        c.optim.schedule = "cosine"
    c.ema_decay = 0.9999
    c.model.aux_logits = True  # the two auxiliary heads (after 4a, 4d); training only
    c.aux_loss_weight = 0.3
    if a.runlocal:
        common.shrink_imagenet_for_runlocal(c, image_size=64)
        c.ema_decay = 0.9
    return c
