"""Augmentations, each defined once: random crop after zero padding, horizontal flip, mixup/CutMix.

Each augmentation is its random draw (crop offsets, flip flags; the mixing permutation, weight
and box) and its application to a batch. The application is written once against an array
module `xp`, NumPy for host batches and jax.numpy for on-device batches (`cnn_jax.data.on_device`),
so both paths apply the very same arithmetic, and the tests check them equal on equal draws.
The draws come from each path's own generator, seeded by `cnn_jax.data.seeds`: NumPy's for host
batches, jax.random inside the jitted step on the device, TensorFlow's stateless ops for
streamed image files, which are decoded, cropped (only the window of a JPEG is decoded) and
flipped per example inside tf.data (`tf_train_image`). A batch is a function of (seed, step)
only on every path. Zero padding is applied to raw pixels (black borders, as torchvision's
`RandomCrop(32, padding=4)` before `Normalize`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnn_jax.data import seeds
from cnn_jax.validate import field

# Inception-style random-resized crop (Szegedy et al. 2015; torchvision defaults).
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
# Evaluation of streamed images: when training takes random-resized crops, a central crop of
# EVAL_CROP_FRACTION of the shorter side (224 of 256, the standard ratio, at any image size);
# otherwise the whole centre square, which is what training sees (a small image is not halved).
EVAL_CROP_FRACTION = 0.875


def eval_crop_fraction(random_resized_crop: bool) -> float:
    """Fraction of the shorter side that evaluation keeps, for this training augmentation."""
    return EVAL_CROP_FRACTION if random_resized_crop else 1.0


# ------------------------------------------------------------ in-memory batches (NumPy and JAX)

def settings(cfg: Any) -> dict[str, Any]:
    """The augmentation fields of `config.data`."""
    return dict(
        padding=int(field(cfg, "crop_padding", 0)), flip=bool(field(cfg, "flip", False)),
        mixup=float(field(cfg, "mixup_alpha", 0.0)), cutmix=float(field(cfg, "cutmix_alpha", 0.0)),
        rrc=bool(field(cfg, "random_resized_crop", False)))


def draw_crop_flip(rng: np.random.Generator, n: int, padding: int, flip: bool
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-example crop offsets (n, 2) in [0, 2 * padding] and flip flags (n,) (None if off)."""
    offsets = rng.integers(0, 2 * padding + 1, size=(n, 2)) if padding > 0 else None
    flips = rng.random(n) < 0.5 if flip else None
    return offsets, flips


def _windows(xp: Any, padded: Any, offsets: Any, h: int, w: int) -> Any:
    """The h x w window at each example's offset: a strided view on the host, slices in XLA."""
    if xp is np:
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
        return windows[np.arange(len(offsets)), offsets[:, 0], offsets[:, 1]].transpose(0, 2, 3, 1)
    import jax

    c = padded.shape[-1]
    return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)


def crop_flip(xp: Any, images: Any, offsets: Any | None, flips: Any | None, padding: int) -> Any:
    """Random crop after zero padding, then horizontal flip, of a (b, H, W, C) batch.

    `offsets` (b, 2) in [0, 2 * padding] and `flips` (b,) bool come from `draw_crop_flip` (or
    jax.random on the device); None turns that augmentation off.
    """
    b, h, w, _ = images.shape
    fresh = offsets is not None  # the windows are a new array (safe to flip in place)
    if offsets is not None:
        p = padding
        images = _windows(xp, xp.pad(images, ((0, 0), (p, p), (p, p), (0, 0))), offsets, h, w)
    if flips is not None:
        images = _flip(xp, images, flips, fresh)
    return images


def _flip(xp: Any, images: Any, flips: Any, fresh: bool) -> Any:
    """The examples where `flips` is set, mirrored left-right: in place on the host (a copy
    unless `images` is already a new array), a select in XLA."""
    if xp is np:
        out = images if fresh else images.copy()
        out[flips] = out[flips, :, ::-1]
        return out
    return xp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def apply_crop_flip(images: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None,
                    padding: int) -> np.ndarray:
    """`crop_flip` on the host (may return a non-contiguous view; `normalize` copies it)."""
    return crop_flip(np, images, offsets, flips, padding)


def normalize(images: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 `pixel * scale + bias` (scale = 1/(255 std), bias = -mean/std)."""
    out = images.astype(np.float32)
    out *= scale
    out += bias
    return out


def cutmix_box(xp: Any, uniform: Any, lam: Any, h: int, w: int) -> tuple[Any, Any, Any, Any]:
    """Box (y1, y2, x1, x2) of area about (1 - lam) * h * w centred at a uniform point, clipped."""
    cut = xp.sqrt(1.0 - lam)
    ch, cw = xp.floor(h * cut).astype(np.int32), xp.floor(w * cut).astype(np.int32)
    cy = xp.floor(uniform[0] * h).astype(np.int32)
    cx = xp.floor(uniform[1] * w).astype(np.int32)
    return (xp.maximum(cy - ch // 2, 0), xp.minimum(cy + ch // 2, h),
            xp.maximum(cx - cw // 2, 0), xp.minimum(cx + cw // 2, w))


def mix_images(xp: Any, images: Any, perm: Any, lam: Any, box: tuple | None) -> tuple[Any, Any]:
    """Mixup (box None: lam * x + (1 - lam) * x[perm]) or CutMix (x[perm] inside the box).

    Returns the mixed images and the weight of the unshuffled batch (CutMix: 1 - box area).
    """
    if box is None:
        return lam * images + (1.0 - lam) * images[perm], lam
    h, w = images.shape[1:3]
    y1, y2, x1, x2 = box
    return _paste(xp, images, perm, box), 1.0 - (y2 - y1) * (x2 - x1) / (h * w)


def _paste(xp: Any, images: Any, perm: Any, box: tuple) -> Any:
    """`images` with the box of `images[perm]` pasted in: sliced on the host (Python-int box),
    a select in XLA (the box is traced)."""
    y1, y2, x1, x2 = box
    if xp is np:
        out = images.copy()
        out[:, y1:y2, x1:x2] = images[perm, y1:y2, x1:x2]
        return out
    h, w = images.shape[1:3]
    ys, xs = xp.arange(h)[:, None], xp.arange(w)[None, :]
    inside = (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)
    return xp.where(inside[None, :, :, None], images[perm], images)


def mix_targets(onehot: Any, perm: Any, lam: Any) -> Any:
    """Soft targets of a mixed batch: lam * y + (1 - lam) * y[perm]."""
    return lam * onehot + (1.0 - lam) * onehot[perm]


def mix(images: np.ndarray, labels: np.ndarray, num_classes: int, rng: np.random.Generator,
        mixup_alpha: float, cutmix_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with a shuffled copy.

    One mixing weight per batch; with both alphas > 0 each batch uses one of the two, chosen with
    probability 1/2. Returns the mixed images and soft targets (b, num_classes).
    """
    b, h, w, _ = images.shape
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    perm = rng.permutation(b)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    if use_cutmix:
        lam = rng.beta(cutmix_alpha, cutmix_alpha)
        # Python ints, so that the weight stays a Python float (NumPy's weak scalar).
        box = tuple(int(v) for v in cutmix_box(np, rng.random(2), lam, h, w))
    else:
        lam, box = rng.beta(mixup_alpha, mixup_alpha), None
    images, lam = mix_images(np, images, perm, lam, box)
    return images.astype(np.float32), mix_targets(onehot, perm, lam).astype(np.float32)


def maybe_mix(batch: dict, aug: dict, num_classes: int, seed: int, step: int, p: int) -> dict:
    """`mix` of process p's host batch of `step` when data.mixup_alpha or data.cutmix_alpha is
    on (adds `targets`)."""
    if aug["mixup"] > 0 or aug["cutmix"] > 0:
        rng = seeds.numpy_rng(seed, seeds.MIX, step, p)
        batch["image"], batch["targets"] = mix(
            batch["image"], batch["label"], num_classes, rng, aug["mixup"], aug["cutmix"])
    return batch


# ------------------------------------------------------------------- TensorFlow (image files)

def _decode_crop(image_bytes, window):
    """Decodes only the window [y, x, h, w] of a JPEG (fast path), any other format in full."""
    import tensorflow as tf

    def jpeg():
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                             dct_method="INTEGER_ACCURATE")

    def other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def _image_shape(image_bytes):
    import tensorflow as tf

    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.image.extract_jpeg_shape(image_bytes)[:2],
        lambda: tf.shape(tf.io.decode_image(image_bytes, channels=3, expand_animations=False))[:2],
    )


def _resize(image, size: int, antialias: bool):
    """Bilinear resize to size x size; float32 pixels in [0, 255] (not rounded back to uint8)."""
    import tensorflow as tf

    image = tf.image.resize(image, [size, size], method="bilinear", antialias=antialias)
    return tf.clip_by_value(image, 0.0, 255.0)


def tf_train_image(image_bytes, seed, *, image_size: int, random_resized_crop: bool,
                   crop_padding: int, flip: bool):
    """Decode + train augmentation of one encoded image -> (size, size, 3) float32 in [0, 255].

    `seed` is a stateless seed (2,) int64 unique to this example of this epoch.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 3)
    shape = _image_shape(image_bytes)
    if random_resized_crop:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.concat([shape, [3]], 0), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0], min_object_covered=RRC_SCALE[0], aspect_ratio_range=RRC_RATIO,
            area_range=RRC_SCALE, max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = _resize(_decode_crop(image_bytes, window), image_size, antialias=False)
    else:
        image = _center_square(image_bytes, shape, image_size, crop_fraction=1.0)
    if crop_padding > 0:
        image = tf.pad(image, [[crop_padding, crop_padding], [crop_padding, crop_padding], [0, 0]])
        image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=seeds[1])
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[2])
    return image


def _center_square(image_bytes, shape, image_size: int, crop_fraction: float):
    import tensorflow as tf

    h, w = shape[0], shape[1]
    side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * crop_fraction, tf.int32)
    side = tf.maximum(side, 1)
    window = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
    return _resize(_decode_crop(image_bytes, window), image_size, antialias=True)


def tf_eval_image(image_bytes, *, image_size: int, crop_fraction: float):
    """Decode + central square crop (`crop_fraction` of the shorter side, see
    `eval_crop_fraction`) + resize; float32 pixels in [0, 255]."""
    shape = _image_shape(image_bytes)
    return _center_square(image_bytes, shape, image_size, crop_fraction=crop_fraction)
