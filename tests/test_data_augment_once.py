"""Each augmentation is defined once (cnn_jax.data.augment): the host (NumPy) and device (JAX)
paths apply it identically on equal draws, and today's batches stay bitwise what they were.

The golden hashes pin the training batches of the in-memory host iterator and of the on-device
batches on synthetic data: a batch is a pure function of (seed, step), which exact resume relies
on, so a change that moves any of them must be deliberate (and breaks resuming runs in flight).
"""

import hashlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import augment, seeds

B, H, W, C = 8, 9, 7, 3


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (B, H, W, C), dtype=np.uint8)


@pytest.mark.parametrize("padding,flip", [(0, True), (2, False), (3, True)])
def test_crop_flip_is_the_same_on_host_and_device(padding, flip):
    images = _images()
    offsets, flips = augment.draw_crop_flip(np.random.default_rng(1), B, padding, flip)
    host = augment.crop_flip(np, images, offsets, flips, padding)
    device = jax.jit(lambda x, o, f: augment.crop_flip(jnp, x, o, f, padding))(
        images, None if offsets is None else jnp.asarray(offsets),
        None if flips is None else jnp.asarray(flips))
    np.testing.assert_array_equal(host, np.asarray(device))
    if padding:  # a window of the zero-padded image: row 0 of an example at offset 0 is zeros
        rows = np.flatnonzero(offsets[:, 0] == 0)
        assert rows.size == 0 or not host[rows[0], 0].any()


@pytest.mark.parametrize("cutmix", [False, True])
def test_mix_is_the_same_on_host_and_device(cutmix):
    x = _images(2).astype(np.float32) / 255.0
    onehot = np.eye(5, dtype=np.float32)[np.arange(B) % 5]
    perm = np.random.default_rng(3).permutation(B)
    lam = 0.625  # exact in float32, as the host's Python float and the device's float32 meet
    if cutmix:
        box = tuple(int(v) for v in augment.cutmix_box(np, np.array([0.4, 0.7]), lam, H, W))
        dbox = augment.cutmix_box(jnp, jnp.array([0.4, 0.7]), jnp.float32(lam), H, W)
        assert tuple(int(v) for v in dbox) == box
    else:
        box = dbox = None
    host, host_lam = augment.mix_images(np, x, perm, lam, box)
    dev, dev_lam = augment.mix_images(jnp, jnp.asarray(x), jnp.asarray(perm), jnp.float32(lam),
                                      dbox)
    np.testing.assert_array_equal(host.astype(np.float32), np.asarray(dev))
    # The host's CutMix weight is a Python float (float64), the device's a float32: equal in float32.
    assert np.float32(host_lam) == np.asarray(dev_lam)
    # Soft targets: the host forms 1 - lam in float64, the device in float32 (1 ulp apart).
    np.testing.assert_allclose(augment.mix_targets(onehot, perm, host_lam).astype(np.float32),
                               np.asarray(augment.mix_targets(jnp.asarray(onehot),
                                                              jnp.asarray(perm), dev_lam)),
                               rtol=2e-7, atol=0)


def test_seed_streams_are_the_ones_batches_were_made_with():
    # The numbers that every recorded run's batches came from.
    assert seeds.int63(3, seeds.PERMUTATION) == int(
        np.random.SeedSequence([3, 0]).generate_state(2, np.uint64)[0] >> 1)
    a = seeds.numpy_rng(3, seeds.CROP_FLIP, 7).integers(0, 1000, 4)
    np.testing.assert_array_equal(a, np.random.default_rng([3, 1, 7]).integers(0, 1000, 4))


def _cfg(tmp_path, **fields):
    return ml_collections.ConfigDict({
        **dict(name="synthetic", synthetic_shape=(8, 8, 3), synthetic_num_examples=64,
               synthetic_num_classes=5, crop_padding=2, flip=True, mixup_alpha=0.0,
               cutmix_alpha=0.0, cache_dir=str(tmp_path)), **fields})


def _hash(batch) -> str:
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode() + np.ascontiguousarray(np.asarray(batch[k])).tobytes())
    return h.hexdigest()[:16]


# (mixup_alpha, cutmix_alpha) -> hashes of the global batch (process 0 of 1) of steps 0, 1, 9
# from the host iterator, then of steps 0, 1, 9 on the device; seed 3, batch 8, with JAX's PRNG
# in the mode training sets (config.threefry_partitionable=False).
GOLDEN = {
    (0.0, 0.0): ["64ede97aad6cb081", "a68399a994fccddd", "d8ea5cf37546dd3b",
                 "059013ef9bed2e05", "befc6017498a4858", "32bee815165d2bee"],
    (0.4, 1.0): ["c2cedc50a3c9c071", "a85ec14f401b75a9", "d6d180db85f3065d",
                 "b3f3276054c7e316", "4cdcc76968eebba2", "8b8c9a6cac8b36a2"],
}


@pytest.fixture
def training_prng_mode():
    """The PRNG mode the engine sets for a run (configure_jax), restored afterwards."""
    before = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    yield
    jax.config.update("jax_threefry_partitionable", before)


@pytest.mark.parametrize("alphas", list(GOLDEN))
def test_training_batches_are_bitwise_today_s(tmp_path, alphas, training_prng_mode):
    cfg = _cfg(tmp_path, mixup_alpha=alphas[0], cutmix_alpha=alphas[1])
    it = data.create_train_iterator(cfg, global_batch_size=8, seed=3)
    host = [next(it) for _ in range(10)]
    it.close()
    resumed = data.create_train_iterator(cfg, global_batch_size=8, seed=3, start_step=9)
    assert _hash(next(resumed)) == _hash(host[9])
    resumed.close()
    two = [data.create_train_iterator(cfg, global_batch_size=8, seed=3, process_index=p,
                                      process_count=2) for p in range(2)]
    halves = [next(t) for t in two]
    for t in two:
        t.close()
    # Two processes' rows are the global batch's rows (crop and flip are drawn for the global
    # batch; mixing pairs images within a process's rows, so only the labels are compared then).
    for k in (host[0] if alphas == (0.0, 0.0) else ["label"]):
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), host[0][k])
    od = data.OnDeviceData(cfg, 8, seed=3)
    batch_fn = jax.jit(od.batch_fn)
    device = [jax.device_get(batch_fn(od.arrays, s)) for s in (0, 1, 9)]
    got = [_hash(host[s]) for s in (0, 1, 9)] + [_hash(b) for b in device]
    assert got == GOLDEN[alphas]
