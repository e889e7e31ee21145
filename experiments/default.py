"""Shared defaults for every experiment; each experiment's get_config() starts here.

Not an experiment on its own: experiments import `get_default_config()` and override a few fields.
"""

import ml_collections


def get_default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128                 # global batch, over all devices and hosts
    c.num_epochs = 10                  # used when total_steps <= 0
    c.total_steps = -1
    c.parallel = "jit"                 # "jit" (Mesh + NamedSharding) | "pmap"
    c.dtype = "float32"                # compute dtype: "float32" | "bfloat16"; params stay float32
    c.log_every_steps = 100
    c.eval_every_steps = -1            # <= 0: evaluate at the end of every epoch
    c.checkpoint_every_steps = -1      # <= 0: checkpoint at the end of every epoch
    c.keep_checkpoints = 3
    c.keep_best_metric = "top1"        # also keep the best checkpoint by this eval metric ("" disables)
    c.async_checkpoints = True
    c.compilation_cache = True         # JAX persistent compilation cache
    c.threefry_partitionable = False   # JAX PRNG mode; False compiles RNG code ~5x faster on CPU
    c.ema_decay = 0.0                  # > 0 keeps an exponential moving average of params
    c.label_smoothing = 0.0
    c.eval_flip_tta = False            # evaluate on the mean logits of image and its mirror image
    c.grad_clip_norm = 0.0             # <= 0: no clipping
    c.steps_per_dispatch = 1           # > 1: lax.scan over several train steps per call
    c.eval_batch_size = -1             # <= 0: same as batch_size (global; splits over devices)
    c.aux_loss_weight = 0.3            # GoogLeNet auxiliary classifiers' loss weight (training)
    c.init_from = ""                   # "DIR[:STEP]": start from that run's params and BN stats
    c.freeze = ()                      # regexes over param paths ("^conv1/"): kept fixed
    c.divergence_factor = 20.0         # stop when the train loss > this x max(first loss, ln K)
    c.divergence_param_factor = 1e4    # ... or the param norm > this x its start (0: off; see
                                       # cnn_jax/train/divergence.py)

    c.model = ml_collections.ConfigDict()
    c.model.name = "lenet5"
    c.model.bn_sync = True             # pmap only: average BN statistics across devices

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"
    c.data.path = ""                   # local files: IDX dir, JPEG tree root, image_folder root
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.val_split = ""              # e.g. "train[90%:]": evaluate on it during training
    c.data.normalize = "train_stats"   # "train_stats" | "published" | "none"
    c.data.on_device = False           # whole split on the accelerator, augmented in JAX
    c.data.image_size = -1             # <= 0: native size; else resize/crop to this size
    c.data.crop_padding = 0            # random crop after zero padding (CIFAR: 4)
    c.data.flip = False                # random horizontal flip
    c.data.random_resized_crop = False # Inception-style crop (ImageNet-sized data)
    c.data.mixup_alpha = 0.0
    c.data.cutmix_alpha = 0.0
    c.data.shuffle_buffer = 50_000
    c.data.max_bad_fraction = 0.01     # image folders: tolerated fraction of unreadable files
    c.data.cache_dir = ""              # stats/decoded-image caches; "": beside the data when
                                       # writable, else ~/.cache/cnn_jax
    c.data.tfds_data_dir = ""          # tensorflow-datasets data dir; "": the tfds default
    c.data.download = True             # let tfds download when no prepared/local copy is found
    c.data.stats_max_examples = 10_000 # streamed image sets: train_stats from this many images
    c.data.synthetic_shape = (32, 32, 3)
    c.data.synthetic_num_classes = 10
    c.data.synthetic_num_examples = 1024

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"               # "sgd" | "adamw" | "lars" | "adam"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 5e-4
    c.optim.weight_decay_mode = "l2"   # "l2" (added to the loss gradient) | "decoupled"
    c.optim.decay_bn_and_bias = False
    c.optim.schedule = "cosine"        # "constant" | "multistep" | "cosine"
    c.optim.warmup_epochs = 0.0
    c.optim.milestones = ()            # multistep: lr is multiplied by `gamma` at each milestone
    c.optim.milestone_unit = "epochs"  # unit of `milestones`: "epochs" | "steps" (iterations)
    c.optim.gamma = 0.1
    c.optim.scale_lr_by_batch = False  # linear scaling rule: lr * batch_size / 256
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8                 # adam / adamw epsilon
    return c


def get_config() -> ml_collections.ConfigDict:
    return get_default_config()
