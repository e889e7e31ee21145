"""Mixup and CutMix: the label weights are the mixed pixels' weights, on the host and on device.

Every image is one constant value (its index), so a mixed image tells which images went into it
and in what proportion: mixup's pixel is lam * own + (1 - lam) * partner with lam the label
weight of the own class; CutMix's pasted box covers exactly the partner class's label weight.
"""

import jax
import numpy as np
import pytest

from cnn_jax.data import augment
from cnn_jax.data.on_device import _mix, _Settings

B, H, W, C = 8, 12, 10, 3  # H != W: a swapped height and width would show


def _constant_images() -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(B)
    images = np.broadcast_to((labels * 10.0 + 5.0)[:, None, None, None], (B, H, W, C))
    return np.ascontiguousarray(images, np.float32), labels


def _partner(targets: np.ndarray, i: int) -> int | None:
    """The other class in row i of the targets (None when the image was mixed with itself)."""
    others = [k for k in np.flatnonzero(targets[i] > 1e-7) if k != i]
    assert len(others) <= 1, targets[i]
    return others[0] if others else None


def _check_mixup(images, targets, values):
    checked = 0
    for i in range(B):
        p = _partner(targets, i)
        if p is None:
            np.testing.assert_allclose(images[i], values[i], rtol=1e-6)
            continue
        lam = targets[i, i]
        np.testing.assert_allclose(targets[i, i] + targets[i, p], 1.0, atol=1e-6)
        # every pixel is the same blend, with the weight the labels got
        np.testing.assert_allclose(images[i], lam * values[i] + (1 - lam) * values[p],
                                   rtol=1e-5, atol=1e-4)
        checked += 0.0 < lam < 1.0
    return checked


def _check_cutmix(images, targets, values):
    checked = 0
    for i in range(B):
        p = _partner(targets, i)
        if p is None:
            continue
        pasted = np.all(np.isclose(images[i], values[p]), axis=-1)
        own = np.all(np.isclose(images[i], values[i]), axis=-1)
        assert np.all(pasted | own)  # each pixel is one image's or the other's, never a blend
        ys, xs = np.nonzero(pasted)
        if len(ys):  # the pasted region is one axis-aligned box
            box = pasted[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            assert box.all() and box.sum() == pasted.sum()
        area = pasted.mean()
        assert targets[i, p] == pytest.approx(area, abs=1e-6)
        assert targets[i, i] == pytest.approx(1.0 - area, abs=1e-6)
        checked += 0.0 < area < 1.0
    return checked


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_host_mix_label_weights_equal_the_pixel_weights(kind):
    images, labels = _constant_images()
    values = images[:, 0, 0, 0]
    partial = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        alphas = (0.4, 0.0) if kind == "mixup" else (0.0, 1.0)
        mixed, targets = augment.mix(images, labels, B, rng, *alphas)
        assert mixed.shape == images.shape and targets.shape == (B, B)
        check = _check_mixup if kind == "mixup" else _check_cutmix
        partial += check(mixed, targets, values[:, None, None, None] * np.ones((1, H, W, C)))
    assert partial > 10  # most draws really mixed two images


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_on_device_mix_label_weights_equal_the_pixel_weights(kind):
    images, labels = _constant_images()
    values = images[:, 0, 0, 0][:, None, None, None] * np.ones((1, H, W, C))
    alphas = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0), "both": (0.4, 1.0)}[kind]
    s = _Settings(seed=0, batch_size=B, steps_per_epoch=1, padding=0, flip=False,
                  mixup_alpha=alphas[0], cutmix_alpha=alphas[1], num_classes=B,
                  scale=(1.0,) * C, bias=(0.0,) * C)
    mix = jax.jit(lambda x, y, k: _mix(s, x, y, k))
    partial = 0
    for seed in range(6):
        mixed, targets = jax.device_get(mix(images, labels, jax.random.key(seed)))
        mixed, targets = np.asarray(mixed), np.asarray(targets)
        # a blend (mixup) leaves pixels that are no image's value; CutMix only moves values
        blended = not np.isclose(mixed[..., None], images[:, 0, 0, 0]).any(-1).all()
        if kind == "mixup" or (kind == "both" and blended):
            partial += _check_mixup(mixed, targets, values)
        else:
            partial += _check_cutmix(mixed, targets, values)
    assert partial > 10
