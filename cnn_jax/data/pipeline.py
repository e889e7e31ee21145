"""From `config.data` to data set facts, training batches and evaluation batches.

Training order: epoch e visits the training split in the permutation drawn from (seed, e) and
drops its last partial batch, so step s always holds the same examples and `start_step=k`
resumes exactly where an uninterrupted run would be. Process p of P takes rows
[p * b, (p + 1) * b) of every global batch of B = P * b examples (in-memory and image-file
sources); a streamed tfds set gives each process its own `tfds.even_splits` part instead.
Evaluation visits a split once, in order, padding the last global batch and marking real
examples with `mask`, so every example is counted exactly once over all processes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from cnn_jax import validate
from cnn_jax.data import augment, idx, preprocess, seeds, splits
from cnn_jax.data.prefetch import OrderedMap
from cnn_jax.data.undecodable import DecodeFailures, map_or_placeholder
from cnn_jax.data.sources import (DEFAULT_IMAGE_SIZE, IDX_NAMES, ArraySplit, FileSplit, Source,
                                  TfdsSplit, field, resolve_source)

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts about a configured data set, as the model sees it after preprocessing."""
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_examples: dict[str, int]        # split spec -> examples, for the configured splits
    class_names: list[str]
    mean: tuple[float, ...]             # per channel, on [0, 1] pixels, used to normalise
    std: tuple[float, ...]
    train_split: str = "train"
    origin: str = ""                    # where the data was found
    fingerprint: str = ""               # changes when the data (or its decoding) changes


@dataclasses.dataclass
class _Plan:
    """A resolved configuration: the source, its facts and the normalisation constants."""
    cfg: Any
    source: Source
    info: DatasetInfo
    image_size: int                     # > 0: every image is made image_size x image_size
    scale: np.ndarray
    bias: np.ndarray


def _check_config(cfg: Any) -> None:
    preprocess.check_mode(str(field(cfg, "normalize", "train_stats")))
    validate.check_data_config(cfg)


def _check_idx_size(source: Source) -> None:
    """Refuses MNIST-style IDX files of another image size before a model is built for it.

    idx.read_split refuses them too, naming the file, but only when a split is loaded, which
    normalize='none'/'published' leaves until the first batch.
    """
    h, w = source.shape[:2]
    if (source.name in IDX_NAMES and source.origin.startswith("IDX files")
            and (h, w) != idx.MNIST_IMAGE_HW):
        raise ValueError(
            f"{source.origin}: {idx.IDX_FILES['train'][0]} holds {h}x{w} images, but "
            f"{source.name} images are 28x28: the files belong to another data set or are "
            "corrupt. Point data.path at the IDX files of the data set named by data.name, or "
            "store other images as <root>/<split>/<class>/*.png and use data.name='image_folder'.")


def _load_array(source: Source, spec: str, image_size: int) -> ArraySplit:
    split = source.load(spec)
    assert isinstance(split, ArraySplit)
    return ArraySplit(preprocess.fit_size(split.images, image_size), split.labels)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"{where} has label {labels[bad[0]]} at index {bad[0]} ({bad.size} in all) outside "
            f"[0, {num_classes}); the labels do not match the data set's {num_classes} classes."
        )


def _stats_from_stream(source: Source, cfg: Any, spec: str, image_size: int):
    """Stats of at most data.stats_max_examples training images, as the model sees them."""
    import tensorflow as tf

    limit = int(field(cfg, "stats_max_examples", 10_000))
    split = source.load(spec)
    if isinstance(split, FileSplit):
        n = len(split.labels)
        pick = np.sort(np.random.default_rng(0).permutation(n)[: min(n, limit)])
        ds = tf.data.Dataset.from_tensor_slices(split.paths[pick]).map(tf.io.read_file)
    else:
        import tensorflow_datasets as tfds

        ds = split.builder.as_dataset(split=spec, shuffle_files=False,
                                      decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.take(limit).map(lambda ex: ex["image"])
    fraction = _eval_crop(cfg)
    ds = ds.map(lambda b: augment.tf_eval_image(b, image_size=image_size, crop_fraction=fraction),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors().batch(256)  # a file that does not decode adds nothing to the stats
    return preprocess.channel_stats(ds.as_numpy_iterator())


def _plan(cfg: Any, *, splits_to_count: tuple[str, ...] | None = None) -> _Plan:
    _check_config(cfg)
    source = resolve_source(cfg)
    _check_idx_size(source)
    name = source.name
    train_spec = str(field(cfg, "train_split", "train"))
    image_size = int(field(cfg, "image_size", -1))
    if source.kind != "array" and image_size <= 0:
        image_size = DEFAULT_IMAGE_SIZE.get(name, 224)
    if bool(field(cfg, "random_resized_crop", False)) and source.kind == "array":
        raise ValueError(
            f"data.random_resized_crop=True needs streamed image files (image_folder with "
            f"data.image_size > 0, imagenette, imagenet2012), but {name!r} is held in memory "
            f"({source.origin}); use data.crop_padding and data.flip for small images.")

    if splits_to_count is None:
        splits_to_count = tuple(s for s in (train_spec, str(field(cfg, "eval_split", "")),
                                            str(field(cfg, "val_split", ""))) if s)
    num_examples = {spec: source.num_examples(spec) for spec in splits_to_count}
    _warn_overlap(source, train_spec, str(field(cfg, "val_split", "")))

    if source.kind == "array":
        h, w, c = source.shape
        shape = (image_size, image_size, c) if image_size > 0 else (h, w, c)
    else:
        shape = (image_size, image_size, 3)

    mode = str(field(cfg, "normalize", "train_stats"))
    if mode == "none":
        mean, std = (0.0,) * shape[2], (1.0,) * shape[2]
    elif mode == "published":
        mean, std = preprocess.published(source.published, shape[2])
    else:
        def compute():
            if source.kind == "array":
                split = _load_array(source, train_spec, image_size)
                return preprocess.channel_stats(preprocess.array_batches(split.images))
            return _stats_from_stream(source, cfg, train_spec, image_size)
        key = [source.fingerprint, train_spec, image_size, shape,
               int(field(cfg, "stats_max_examples", 10_000)) if source.kind != "array" else 0]
        if source.kind != "array":  # the statistics are of the evaluation view
            key.append(("eval_crop", _eval_crop(cfg)))
        mean, std = preprocess.cached_stats(source.cache_dir, key, compute)

    info = DatasetInfo(
        name=name, num_classes=source.num_classes, image_shape=tuple(int(s) for s in shape),
        num_examples=num_examples, class_names=list(source.class_names),
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        train_split=train_spec, origin=source.origin, fingerprint=source.fingerprint)
    scale, bias = preprocess.scale_bias(info.mean, info.std)
    return _Plan(cfg, source, info, image_size, scale, bias)


def _eval_crop(cfg: Any) -> float:
    """Fraction of the shorter side streamed evaluation keeps (see augment.eval_crop_fraction)."""
    return augment.eval_crop_fraction(bool(field(cfg, "random_resized_crop", False)))


def _warn_overlap(source: Source, train_spec: str, val_spec: str) -> None:
    if not val_spec:
        return
    train = splits.resolve(train_spec, source.sizes, source.origin)
    val = splits.resolve(val_spec, source.sizes, source.origin)
    for name, a0, a1 in train:
        for vname, b0, b1 in val:
            if name == vname and max(a0, b0) < min(a1, b1):
                warnings.warn(
                    f"data.val_split={val_spec!r} overlaps data.train_split={train_spec!r} "
                    f"({min(a1, b1) - max(a0, b0)} examples of {name!r}): validation scores will "
                    f"be optimistic. Use e.g. train_split='{name}[:90%]' with val_split='{name}[90%:]'.",
                    stacklevel=3)
                return


def get_info(data_cfg: Any) -> DatasetInfo:
    """Facts about the configured data set (computes and caches the training statistics)."""
    return _plan(data_cfg).info


def eval_view(data_cfg: Any) -> tuple[str, tuple[int, ...], int, float, np.ndarray, np.ndarray]:
    """How evaluation preprocesses this data set's images: (source kind, model input shape,
    image size, central crop fraction, normalisation scale, bias); see `eval_image`."""
    plan = _plan(data_cfg, splits_to_count=(str(field(data_cfg, "train_split", "train")),))
    return (plan.source.kind, plan.info.image_shape, plan.image_size, _eval_crop(plan.cfg),
            plan.scale, plan.bias)


def num_train_examples(info: DatasetInfo) -> int:
    """Examples in the configured training split."""
    return info.num_examples[info.train_split]


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
    """Full global batches per epoch (the last partial batch of each epoch is dropped)."""
    n = num_train_examples(info)
    if global_batch_size <= 0:
        raise ValueError(f"global batch size must be positive, got {global_batch_size}.")
    if n < global_batch_size:
        raise ValueError(
            f"Training split {info.train_split!r} of {info.name} has {n} examples, fewer than one "
            f"global batch of {global_batch_size}; lower config.batch_size.")
    return n // global_batch_size


def _local_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"config.batch_size={global_batch_size} (global) must be a positive multiple of the "
            f"process count {process_count}.")
    return global_batch_size // process_count


# ------------------------------------------------------------------------------- training

class _ArrayTrainBatches:
    """Training batch of step s from an in-memory split (thread-safe, pure in (seed, s))."""

    def __init__(self, plan: _Plan, split: ArraySplit, B: int, b: int, seed: int, p: int):
        self.plan, self.split, self.B, self.b, self.seed, self.p = plan, split, B, b, seed, p
        self.spe = len(split.labels) // B
        self.aug = augment.settings(plan.cfg)
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._perms:
                if len(self._perms) >= 2:
                    self._perms.pop(min(self._perms))
                n = len(self.split.labels)
                self._perms[epoch] = seeds.numpy_rng(self.seed, seeds.PERMUTATION, epoch).permutation(n)
            return self._perms[epoch]

    def __call__(self, step: int) -> Batch:
        B, b, p, aug = self.B, self.b, self.p, self.aug
        epoch, i = divmod(step, self.spe)
        index = self._perm(epoch)[i * B + p * b: i * B + (p + 1) * b]
        # Random draws cover the whole global batch, so a row's augmentation does not depend on
        # the number of processes.
        offsets, flips = augment.draw_crop_flip(seeds.numpy_rng(self.seed, seeds.CROP_FLIP, step), B,
                                                aug["padding"], aug["flip"])
        rows = slice(p * b, (p + 1) * b)
        images = augment.apply_crop_flip(
            self.split.images[index], None if offsets is None else offsets[rows],
            None if flips is None else flips[rows], aug["padding"])
        batch = {"image": augment.normalize(images, self.plan.scale, self.plan.bias),
                 "label": self.split.labels[index].astype(np.int32)}
        return augment.maybe_mix(batch, aug, self.plan.info.num_classes, self.seed, step, p)


def _files_train(plan: _Plan, split: FileSplit, B: int, b: int, seed: int, start_step: int,
                 p: int) -> Iterator[Batch]:
    """One endless tf.data pipeline over image files (traced once, not once per epoch)."""
    import tensorflow as tf

    n = len(split.labels)
    spe = n // B
    aug = augment.settings(plan.cfg)
    size = plan.image_size
    scale, bias = tf.constant(plan.scale), tf.constant(plan.bias)
    paths, labels = tf.constant(split.paths), tf.constant(split.labels.astype(np.int32))
    perm_seed, aug_seed = seeds.int63(seed, seeds.PERMUTATION) % (2**31), seeds.int63(seed, seeds.FILE_AUGMENT)
    start_epoch, first = divmod(start_step, spe)

    def epoch(e):
        # Epoch e's order: a stateless shuffle from (seed, e); this process's rows of each step.
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(perm_seed, tf.int64), e]),
            alg="philox")
        pos = tf.reshape(tf.range(spe * B, dtype=tf.int64), [spe, B])[:, p * b:(p + 1) * b]
        pos = tf.reshape(pos[tf.where(e == start_epoch, first, 0):], [-1])
        index = tf.gather(perm, pos)
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(paths, index), tf.gather(labels, index), e * spe * B + pos))

    def load(path, label, uid):
        image = augment.tf_train_image(
            tf.io.read_file(path), tf.stack([tf.constant(aug_seed, tf.int64), uid]),
            image_size=size, random_resized_crop=aug["rrc"], crop_padding=aug["padding"],
            flip=aug["flip"])
        return tf.cast(image, tf.float32) * scale + bias, label, tf.constant(1.0)

    def placeholder(path, label, uid):  # an image that does not decode: zeros, weight 0
        return tf.zeros((size, size, 3), tf.float32), label, tf.constant(0.0)

    ds = map_or_placeholder(tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch), load,
                             placeholder)
    ds = ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    failures = DecodeFailures(plan.info.origin)
    for step, (images, labels_, weight) in enumerate(ds.as_numpy_iterator(), start=start_step):
        batch = failures({"image": images, "label": labels_.astype(np.int32), "weight": weight},
                         step)
        yield augment.maybe_mix(batch, aug, plan.info.num_classes, seed, step, p)


def _tfds_train(plan: _Plan, split: TfdsSplit, B: int, b: int, seed: int, start_step: int,
                p: int, P: int) -> Iterator[Batch]:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    spe = split.num_examples // B
    aug = augment.settings(plan.cfg)
    size = plan.image_size
    scale, bias = tf.constant(plan.scale), tf.constant(plan.bias)
    part = tfds.even_splits(split.spec, P)[p] if P > 1 else split.spec
    buffer = int(min(int(field(plan.cfg, "shuffle_buffer", 50_000)), split.num_examples))
    seed64 = seeds.int63(seed, seeds.FILE_AUGMENT, p)
    epoch, first = divmod(start_step, spe)
    failures = DecodeFailures(plan.info.origin)
    while True:
        read_config = tfds.ReadConfig(shuffle_seed=seeds.int63(seed, seeds.TFDS_READ, epoch, p) % (2**31))
        ds = split.builder.as_dataset(split=part, shuffle_files=True, read_config=read_config,
                                      decoders={"image": tfds.decode.SkipDecoding()})
        ds = (ds.shuffle(buffer, seed=seeds.int63(seed, seeds.TFDS_SHUFFLE, epoch, p), reshuffle_each_iteration=False)
              .take(spe * b).enumerate().skip(first * b))
        base = epoch * spe * b

        def load(i, ex):
            image = augment.tf_train_image(
                ex["image"], tf.stack([tf.constant(seed64, tf.int64), base + i]),
                image_size=size, random_resized_crop=aug["rrc"], crop_padding=aug["padding"],
                flip=aug["flip"])
            return tf.cast(image, tf.float32) * scale + bias, ex["label"], tf.constant(1.0)

        def placeholder(i, ex):  # an image that does not decode: zeros, weight 0
            return tf.zeros((size, size, 3), tf.float32), ex["label"], tf.constant(0.0)

        ds = (map_or_placeholder(ds, load, placeholder)
              .batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
        for k, (images, labels, weight) in enumerate(ds.as_numpy_iterator()):
            step = epoch * spe + first + k
            batch = failures({"image": images, "label": labels.astype(np.int32),
                              "weight": weight}, step)
            yield augment.maybe_mix(batch, aug, plan.info.num_classes, seed, step, p)
        epoch, first = epoch + 1, 0


def create_train_iterator(data_cfg: Any, *, global_batch_size: int, seed: int, start_step: int = 0,
                          process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """Endless host-local training batches: `image` float32 (b, H, W, C), `label` int32 (b,),
    `targets` float32 (b, num_classes) when mixup or cutmix is on, and for streamed images
    `weight` float32 (b,): 0 for an image that failed to decode (a zero image in its place, so
    that no later example shifts), else 1; b = global / processes.

    Batch s is a function of (seed, s) only: `start_step=k` yields what an uninterrupted
    iterator yields from step k on.
    """
    b = _local_batch(global_batch_size, process_index, process_count)
    if start_step < 0 or seed < 0:
        raise ValueError(f"start_step={start_step} and seed={seed} must be >= 0 (config.seed).")
    plan = _plan(data_cfg)
    steps_per_epoch(plan.info, global_batch_size)  # fails clearly when the split is too small
    train_spec = plan.info.train_split
    if plan.source.kind == "array":
        split = _load_array(plan.source, train_spec, plan.image_size)
        _check_labels(split.labels, plan.info.num_classes, f"Training split {train_spec!r}")
        batches = _ArrayTrainBatches(plan, split, global_batch_size, b, seed, process_index)
        return OrderedMap(batches, itertools.count(start_step))
    split = plan.source.load(train_spec)
    if isinstance(split, FileSplit):
        return _files_train(plan, split, global_batch_size, b, seed, start_step, process_index)
    return _tfds_train(plan, split, global_batch_size, b, seed, start_step, process_index,
                       process_count)


# ----------------------------------------------------------------------------- evaluation

def _array_eval_batch(plan: _Plan, split: ArraySplit, B: int, b: int, p: int, s: int) -> Batch:
    n = len(split.labels)
    pos = s * B + p * b + np.arange(b)
    mask = pos < n
    index = np.where(mask, pos, 0)
    images = augment.normalize(split.images[index], plan.scale, plan.bias)
    images[~mask] = 0.0
    return {"image": images, "label": np.where(mask, split.labels[index], 0).astype(np.int32),
            "mask": mask.astype(np.float32)}


def _files_eval(plan: _Plan, split: FileSplit, B: int, b: int, p: int, spec: str
                ) -> Iterator[Batch]:
    import tensorflow as tf

    n = len(split.labels)
    num_batches = math.ceil(n / B)
    pos = (np.arange(num_batches)[:, None] * B + p * b + np.arange(b)[None, :]).reshape(-1)
    mask = pos < n
    index = np.where(mask, pos, 0)
    scale, bias = tf.constant(plan.scale), tf.constant(plan.bias)
    size, fraction = plan.image_size, _eval_crop(plan.cfg)

    def load(path, label, m):
        image = augment.tf_eval_image(tf.io.read_file(path), image_size=size,
                                      crop_fraction=fraction)
        image = (tf.cast(image, tf.float32) * scale + bias) * m
        return {"image": image, "label": label * tf.cast(m, tf.int32), "mask": m,
                "undecodable": tf.constant(0.0)}

    def placeholder(path, label, m):  # not scored (mask 0), counted as undecodable
        return {"image": tf.zeros((size, size, 3), tf.float32), "label": label * 0,
                "mask": tf.constant(0.0), "undecodable": m}

    ds = tf.data.Dataset.from_tensor_slices(
        (split.paths[index], split.labels[index], mask.astype(np.float32)))
    ds = map_or_placeholder(ds, load, placeholder).batch(b).prefetch(tf.data.AUTOTUNE)
    failed = 0
    for batch in ds.as_numpy_iterator():
        failed += int(batch["undecodable"].sum())
        yield batch
    if failed:
        warnings.warn(f"{failed} image(s) of split {spec!r} in {plan.info.origin} failed to "
                      "decode: not scored (counted as num_undecodable). Fix or remove the "
                      "file(s).", stacklevel=2)


def _tfds_eval(plan: _Plan, split: TfdsSplit, b: int, p: int, P: int) -> Iterator[Batch]:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    part = tfds.even_splits(split.spec, P)[p] if P > 1 else split.spec
    # even_splits sizes differ by at most one: every process runs ceil(ceil(n / P) / b) batches.
    num_batches = math.ceil(math.ceil(split.num_examples / P) / b)
    scale, bias = tf.constant(plan.scale), tf.constant(plan.bias)
    size, fraction = plan.image_size, _eval_crop(plan.cfg)

    def load(ex):
        image = augment.tf_eval_image(ex["image"], image_size=size, crop_fraction=fraction)
        return {"image": tf.cast(image, tf.float32) * scale + bias,
                "label": tf.cast(ex["label"], tf.int32), "mask": tf.constant(1.0)}

    real = split.builder.as_dataset(split=part, shuffle_files=False,
                                    decoders={"image": tfds.decode.SkipDecoding()})
    real = real.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    pad = tf.data.Dataset.from_tensors({
        "image": tf.zeros((size, size, 3), tf.float32), "label": tf.constant(0, tf.int32),
        "mask": tf.constant(0.0)}).repeat()
    ds = real.concatenate(pad).take(num_batches * b).batch(b).prefetch(tf.data.AUTOTUNE)
    yield from ds.as_numpy_iterator()


def create_eval_iterator(data_cfg: Any, split: str, *, global_batch_size: int,
                         process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """One pass over `split`: host-local batches of `image`, `label` and `mask` (float32, 1 for
    real examples); the last global batch is padded so every step has the same shape. Streamed
    image files add `undecodable` (float32, 1 where a real example failed to decode: its mask
    is 0)."""
    b = _local_batch(global_batch_size, process_index, process_count)
    plan = _plan(data_cfg, splits_to_count=(str(field(data_cfg, "train_split", "train")), split))
    if plan.source.kind == "array":
        data = _load_array(plan.source, split, plan.image_size)
        _check_labels(data.labels, plan.info.num_classes, f"Split {split!r}")
        batch = functools.partial(_array_eval_batch, plan, data, global_batch_size, b, process_index)
        return OrderedMap(batch, range(math.ceil(len(data.labels) / global_batch_size)))
    data = plan.source.load(split)
    if isinstance(data, FileSplit):
        return _files_eval(plan, data, global_batch_size, b, process_index, split)
    return _tfds_eval(plan, data, b, process_index, process_count)


def num_eval_batches(info: DatasetInfo, split: str, global_batch_size: int) -> int:
    """Steps of one evaluation pass over `split` (a configured split) at this global batch."""
    return math.ceil(info.num_examples[split] / global_batch_size)
