"""Where the input pipeline's random numbers come from: one stream per purpose, from (seed, ...).

Every training iterator (in-memory host batches, streamed image files, streamed tfds sets, and
on-device batches) derives its generators here, so that a batch is a pure function of
(config.seed, step) on every path and `start_step=k` resumes exactly. The stream numbers are
fixed: changing one changes every batch of every run that uses it (and breaks exact resume of
runs in flight).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Stream numbers mixed in with the seed (2 is unused).
PERMUTATION = 0     # the epoch's order of the training split
CROP_FLIP = 1       # crop offsets and flip flags of an in-memory batch
MIX = 3             # mixup / CutMix of a host batch
FILE_AUGMENT = 4    # per-example augmentation of streamed images (tf stateless seeds)
TFDS_READ = 5       # the file order of a tfds epoch
TFDS_SHUFFLE = 6    # the shuffle buffer of a tfds epoch


def numpy_rng(seed: int, stream: int, *parts: int) -> np.random.Generator:
    """NumPy's generator for (seed, stream, *parts), e.g. (seed, CROP_FLIP, step)."""
    return np.random.default_rng([seed, stream, *parts])


def int63(seed: int, stream: int, *parts: int) -> int:
    """A 63-bit integer seed mixed from (seed, stream, *parts) (SeedSequence), for tf.data and
    TensorFlow's stateless ops."""
    words = [int(p) & 0xFFFFFFFF for p in (seed, stream, *parts)]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> 1)


def device_keys(seed: Any, epoch: Any, step: Any) -> tuple[Any, Any, Any]:
    """jax.random keys of an on-device batch: (the epoch's permutation, crop/flip, mix)."""
    import jax

    k_perm, k_aug = jax.random.split(jax.random.key(seed))
    k_crop, k_mix = jax.random.split(jax.random.fold_in(k_aug, step))
    return jax.random.fold_in(k_perm, epoch), k_crop, k_mix
