"""The lecture's preprocessing: pixels to [0, 1], then `X -= mean; X /= std` per channel.

`data.normalize`:
  "train_stats": mean and std of every pixel of the configured training split (on [0, 1] pixels,
                 population std), computed once and cached as JSON beside the data;
  "published":   the constants below;
  "none":        only the scaling to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from cnn_jax.data import cache
from cnn_jax.validate import did_you_mean

NORMALIZE_MODES = ("train_stats", "published", "none")

# name -> (mean, std, source). Pixel statistics on [0, 1] of the original training images.
PUBLISHED = {
    "mnist": ((0.1307,), (0.3081,), "PyTorch examples/mnist (Normalize((0.1307,), (0.3081,)))"),
    "fashion_mnist": ((0.2860,), (0.3530,),
                      "pixel mean/std of the 60,000 Fashion-MNIST training images (Xiao et al. 2017 data)"),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                "pixel mean/std of the 50,000 original CIFAR-10 training images"),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                 "pixel mean/std of the 50,000 original CIFAR-100 training images"),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                     "torchvision ImageNet normalisation constants"),
    "imagenette": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                   "torchvision ImageNet normalisation constants (Imagenette is an ImageNet subset)"),
}
_STATS_VERSION = 1


def check_mode(mode: str) -> str:
    """Validates data.normalize."""
    if mode not in NORMALIZE_MODES:
        hint = did_you_mean(str(mode), NORMALIZE_MODES)
        raise ValueError(f"data.normalize={mode!r} is not one of {list(NORMALIZE_MODES)}.{hint}")
    return mode


def published(name: str | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Published constants for a data set (error when there are none)."""
    if name not in PUBLISHED:
        raise ValueError(
            f"data.normalize='published' has no constants for data set {name!r} (known: "
            f"{sorted(PUBLISHED)}); use --config.data.normalize=train_stats or none."
        )
    mean, std, _ = PUBLISHED[name]
    if len(mean) != channels:
        raise ValueError(f"Published constants of {name!r} have {len(mean)} channels, images {channels}.")
    return mean, std


def channel_stats(batches: Iterable[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and population std of uint8 image batches, on [0, 1] pixels."""
    total = total_sq = None
    count = 0
    images = 0
    for batch in batches:
        x = np.asarray(batch)
        c = x.shape[-1]
        flat = x.reshape(-1, c).astype(np.float64)
        s, sq = flat.sum(0), np.square(flat).sum(0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += flat.shape[0]
        images += x.shape[0]
    if not count:
        raise ValueError("Cannot compute statistics of an empty training split.")
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    return tuple(float(m / 255) for m in mean), tuple(float(np.sqrt(v) / 255) for v in var), images


def array_batches(images: np.ndarray, chunk: int = 4096) -> Iterable[np.ndarray]:
    """Chunks of an in-memory image array (bounded float64 temporaries)."""
    for i in range(0, len(images), chunk):
        yield images[i: i + chunk]


def cached_stats(cache_dir, key_parts: list[Any], compute) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Stats from the JSON cache `stats-<key>.json`, or computed by `compute()` and cached."""
    key = cache.fingerprint([_STATS_VERSION] + key_parts)
    if cache_dir is not None:
        path = cache_dir / f"stats-{key}.json"
        hit = cache.read_json(path)
        if hit and "mean" in hit and "std" in hit:
            return tuple(hit["mean"]), tuple(hit["std"])
    mean, std, n = compute()
    if cache_dir is not None:
        cache.write_json(path, {"mean": list(mean), "std": list(std), "num_images": n,
                                "key": [str(k) for k in key_parts]})
    return mean, std


def fit_size(images: np.ndarray, size: int) -> np.ndarray:
    """Central square crop + resize of an in-memory uint8 array to size x size (no-op if equal)."""
    if size <= 0 or images.shape[1:3] == (size, size):
        return images
    import tensorflow as tf

    h, w = images.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    out = []
    for i in range(0, len(images), 4096):
        chunk = images[i: i + 4096, top: top + side, left: left + side]
        resized = tf.image.resize(chunk, [size, size], method="bilinear", antialias=True)
        out.append(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def scale_bias(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, bias) so that `uint8 * scale + bias == (x / 255 - mean) / std`."""
    mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    std_a = np.where(std_a > 1e-6, std_a, 1.0).astype(np.float32)  # constant channel: only centre it
    return (1.0 / (255.0 * std_a)).astype(np.float32), (-mean_a / std_a).astype(np.float32)
