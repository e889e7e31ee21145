"""Helpers several test files share: a data config, image hashes, checkpoint comparisons."""

import hashlib
from typing import Any

import ml_collections
import numpy as np


def data_config(cache_dir: Any, **overrides: Any) -> ml_collections.ConfigDict:
    """A `config.data` for Fashion-MNIST without augmentation, caching under `cache_dir`."""
    c = ml_collections.ConfigDict(dict(
        name="fashion_mnist", path="", train_split="train", eval_split="test", val_split="",
        normalize="train_stats", image_size=-1, crop_padding=0, flip=False,
        random_resized_crop=False, mixup_alpha=0.0, cutmix_alpha=0.0, max_bad_fraction=0.01,
        cache_dir=str(cache_dir), download=False))
    c.update(overrides)
    return c


def image_hashes(images: np.ndarray) -> list[str]:
    """Sorted SHA-1 of every image: equal lists mean the same images, in any order."""
    return sorted(hashlib.sha1(x.tobytes()).hexdigest() for x in images)


def checkpoint_params(workdir: Any) -> tuple[list, int]:
    """Leaves of the newest checkpoint's variables (not the EMA's) in `workdir`, and its step."""
    import jax

    from cnn_jax.train import checkpoint as ckpt
    variables, _, step = ckpt.load_latest(str(workdir), use_ema=False)
    return jax.tree.leaves(variables), step


def assert_bitwise_equal(a: list, b: list) -> None:
    """Two lists of arrays are equal bit for bit."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
