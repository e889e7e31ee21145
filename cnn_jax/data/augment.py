"""Augmentations: NumPy ops for in-memory batches, TensorFlow ops for streamed image files.

Every random choice is drawn from an explicit generator or a stateless seed, so batches are a
function of (seed, step) only. Zero padding is applied to raw pixels (black borders, as
torchvision's `RandomCrop(32, padding=4)` before `Normalize`).
"""

from __future__ import annotations

import math

import numpy as np

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


# ----------------------------------------------------------------------------- NumPy (host)

def draw_crop_flip(rng: np.random.Generator, n: int, padding: int, flip: bool
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-example crop offsets (n, 2) in [0, 2 * padding] and flip flags (n,) (None if off)."""
    offsets = rng.integers(0, 2 * padding + 1, size=(n, 2)) if padding > 0 else None
    flips = rng.random(n) < 0.5 if flip else None
    return offsets, flips


def apply_crop_flip(images: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None,
                    padding: int) -> np.ndarray:
    """Random crop after zero padding and horizontal flip of a (b, H, W, C) uint8 batch.

    May return a non-contiguous view; `normalize` copies it anyway.
    """
    if offsets is None and flips is None:
        return images
    b, h, w, _ = images.shape
    if offsets is not None:
        padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
        out = windows[np.arange(b), offsets[:, 0], offsets[:, 1]]  # (b, C, h, w) copy
        if flips is not None:
            out[flips] = out[flips, ..., ::-1]
        return out.transpose(0, 2, 3, 1)
    out = images.copy()
    out[flips] = out[flips, :, ::-1]
    return out


def normalize(images: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 `pixel * scale + bias` (scale = 1/(255 std), bias = -mean/std)."""
    out = images.astype(np.float32)
    out *= scale
    out += bias
    return out


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
        y1, y2, x1, x2 = cutmix_box(rng.random(2), lam, h, w)
        images = images.copy()
        images[:, y1:y2, x1:x2] = images[perm, y1:y2, x1:x2]
        lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    else:
        lam = rng.beta(mixup_alpha, mixup_alpha)
        images = lam * images + (1.0 - lam) * images[perm]
    targets = lam * onehot + (1.0 - lam) * onehot[perm]
    return images.astype(np.float32), targets.astype(np.float32)


def cutmix_box(uniform: np.ndarray, lam: float, h: int, w: int) -> tuple[int, int, int, int]:
    """Box of area about (1 - lam) * h * w centred at a uniform point, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(uniform[0] * h), int(uniform[1] * w)
    return (max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w))


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
