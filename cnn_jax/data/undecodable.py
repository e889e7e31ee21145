"""Streamed images that do not decode: a zero placeholder of weight 0 in place, counted and warned.

A damaged file must neither stop training nor shift the examples of later steps (exact resume
needs batch s to hold the examples of step s), so tf.data's `ignore_errors()`, which drops the
element, does not do; `map_or_placeholder` keeps every position.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

Batch = dict[str, np.ndarray]


def map_or_placeholder(ds, load, placeholder):
    """`ds.map(load)` in order, except that an element whose `load` fails (an image that does not
    decode) becomes `placeholder(*element)` at the same position.

    Unlike `ignore_errors()`, nothing shifts: batch s still holds the examples of step s. Each
    element is loaded in its own one-element dataset (errors dropped there), followed by the
    placeholder, of which the first is kept; the interleave decodes in parallel, in order.
    """
    import tensorflow as tf

    def one(*x):
        good = tf.data.Dataset.from_tensors(x).map(load).ignore_errors()
        return good.concatenate(tf.data.Dataset.from_tensors(placeholder(*x))).take(1)

    return ds.interleave(one, cycle_length=max(2, os.cpu_count() or 1), block_length=1,
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class DecodeFailures:
    """Counts the training images that failed to decode (weight 0) and warns as they appear."""

    def __init__(self, where: str):
        self.where, self.total = where, 0

    def __call__(self, batch: Batch, step: int) -> Batch:
        bad = int(np.sum(batch["weight"] == 0))
        if bad:
            self.total += bad
            warnings.warn(
                f"{bad} training image(s) of {self.where} failed to decode in the batch of step "
                f"{step} ({self.total} so far): each is a zero image with weight 0 in the loss "
                "and metrics, so later batches do not shift. Fix or remove the file(s).",
                stacklevel=2)
        return batch
