"""Image files named by hand (`--mode=predict`) preprocessed exactly as evaluation preprocesses
the data set's own images, by the same functions.

- Streamed image files (image_folder with `data.image_size > 0`, ImageNet-sized sets):
  `augment.tf_eval_image` (decode, central square crop of `augment.eval_crop_fraction` of the
  shorter side, antialiased bilinear resize, float pixels), then `pixel * scale + bias`.
- Sets held in memory (MNIST-style IDX files, CIFAR, image_folder at native size): decoded to
  8 bits (16-bit PNGs scaled as the decoders scale them), with `data.image_size > 0` made
  square by `preprocess.fit_size` (central crop, antialiased resize, rounded to uint8: what
  evaluation applies to these sets), then `augment.normalize`. With `data.image_size <= 0`
  evaluation does not resize (every image has the set's size); an image of another size is
  resized to it (bilinear), the only step evaluation has no counterpart for.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnn_jax.data import augment, image_tree, pipeline, preprocess


def load(data_cfg: Any, paths: list[str]) -> np.ndarray:
    """(N, H, W, C) float32: the image files at `paths` as evaluation feeds them to the model."""
    kind, shape, size, fraction, scale, bias = pipeline.eval_view(data_cfg)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path}")
    if kind == "array":
        images = [_in_memory_view(p, shape, size) for p in paths]
        return np.stack([augment.normalize(x, scale, bias) for x in images])
    return np.stack([_streamed_view(p, size, fraction) * scale + bias for p in paths])


def _in_memory_view(path: str, shape: tuple[int, ...], size: int) -> np.ndarray:
    from PIL import Image

    h, w, c = shape
    try:
        with Image.open(path) as img:  # 16-bit PNGs scaled as in training, not clipped
            img = image_tree.to_8bit(img).convert("L" if c == 1 else "RGB")
            if size <= 0 and img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
            x = np.asarray(img, np.uint8).reshape(img.size[1], img.size[0], c)
    except image_tree.unreadable_errors() as e:  # a decompression bomb included
        raise ValueError(f"Cannot read image {path}: {e}") from None
    return preprocess.fit_size(x[None], size)[0] if size > 0 else x


def _streamed_view(path: str, size: int, fraction: float) -> np.ndarray:
    import tensorflow as tf

    try:
        image = augment.tf_eval_image(tf.io.read_file(path), image_size=size,
                                      crop_fraction=fraction)
    except tf.errors.OpError as e:
        reason = " ".join(str(e.message).split())[:200]
        raise ValueError(f"Cannot read image {path}: {reason}") from None
    return image.numpy().astype(np.float32)
