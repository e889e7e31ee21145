"""On-device input mode: the training split on the device, batches drawn under jit."""

import gzip

import jax
import ml_collections
import numpy as np
import pytest

from cnn_jax.data.on_device import OnDeviceData, epoch_permutation

N_TRAIN = 300


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _id_images(n):
    """28x28 images whose first two pixels encode the example's index."""
    images = np.random.default_rng(2).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images


def _labels():
    return np.random.default_rng(1).integers(0, 10, N_TRAIN)


def _ids(images):
    pixels = np.round(images[..., 0] * 255).astype(int)
    return pixels[:, 0, 0] + 256 * pixels[:, 0, 1]


@pytest.fixture
def idx_dir(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte.gz", _id_images(N_TRAIN))
    _write_idx(d / "train-labels-idx1-ubyte.gz", _labels())
    return d


def _cfg(tmp_path, idx_dir, **overrides):
    c = ml_collections.ConfigDict(dict(
        name="fashion_mnist", path=str(idx_dir), train_split="train", eval_split="", val_split="",
        normalize="none", image_size=-1, crop_padding=0, flip=False, random_resized_crop=False,
        mixup_alpha=0.0, cutmix_alpha=0.0, cache_dir=str(tmp_path / "cache"), download=False))
    c.update(overrides)
    return c


def test_epoch_permutation_is_a_permutation():
    for n in (1, 7, 4097):
        perm = np.asarray(jax.jit(epoch_permutation, static_argnums=2)(jax.random.key(3), np.arange(n), n))
        assert sorted(perm.tolist()) == list(range(n))
    a = np.asarray(epoch_permutation(jax.random.key(1), np.arange(1000), 1000))
    b = np.asarray(epoch_permutation(jax.random.key(2), np.arange(1000), 1000))
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(1000))


def test_on_device_batches(tmp_path, idx_dir):
    source = OnDeviceData(_cfg(tmp_path, idx_dir), 64, seed=5)
    assert source.arrays["images"].dtype == np.uint8 and source.steps_per_epoch == 4
    fn = jax.jit(source.batch_fn)
    batches = [jax.device_get(fn(source.arrays, step)) for step in range(8)]
    assert batches[0]["image"].shape == (64, 28, 28, 1) and batches[0]["label"].dtype == np.int32
    for e in range(2):
        ids = np.concatenate([_ids(b["image"]) for b in batches[4 * e: 4 * e + 4]])
        assert len(set(ids.tolist())) == 256  # each example at most once per epoch
        labels = np.concatenate([b["label"] for b in batches[4 * e: 4 * e + 4]])
        np.testing.assert_array_equal(labels, _labels()[ids])
    again = jax.device_get(fn(source.arrays, 5))
    np.testing.assert_array_equal(again["image"], batches[5]["image"])
    np.testing.assert_allclose(batches[0]["image"][..., 0],
                               _id_images(N_TRAIN)[_ids(batches[0]["image"])] / 255.0, atol=1e-6)


def test_on_device_crop_flip_and_normalisation(tmp_path, idx_dir):
    aug = OnDeviceData(_cfg(tmp_path, idx_dir, crop_padding=3, flip=True), 64, seed=0)
    plain = OnDeviceData(_cfg(tmp_path, idx_dir), 64, seed=0)  # same seed: same examples
    batch = jax.device_get(jax.jit(aug.batch_fn)(aug.arrays, 0))
    raw = jax.device_get(jax.jit(plain.batch_fn)(plain.arrays, 0))
    flips = 0
    for out, src in zip(batch["image"][:16, ..., 0], raw["image"][:16, ..., 0]):
        padded = np.pad(src, 3)
        found = [f for dy in range(7) for dx in range(7) for f in (0, 1)
                 if np.allclose(padded[dy:dy + 28, dx:dx + 28][:, ::-1] if f else padded[dy:dy + 28, dx:dx + 28], out)]
        assert found, "not a padded crop/flip of the source image"
        flips += found[0]
    assert 0 < flips < 16
    stats = OnDeviceData(_cfg(tmp_path, idx_dir, normalize="train_stats"), 64, seed=0)
    x = jax.device_get(jax.jit(stats.batch_fn)(stats.arrays, 0))["image"]
    mean, std = (_id_images(N_TRAIN) / 255).mean(), (_id_images(N_TRAIN) / 255).std()
    np.testing.assert_allclose(x, (raw["image"] - mean) / std, atol=1e-5)


def test_on_device_mixup_cutmix(tmp_path, idx_dir):
    source = OnDeviceData(_cfg(tmp_path, idx_dir, mixup_alpha=0.2, cutmix_alpha=1.0), 32, seed=0)
    fn = jax.jit(source.batch_fn)
    for step in range(3):
        batch = jax.device_get(fn(source.arrays, step))
        assert batch["targets"].shape == (32, 10)
        np.testing.assert_allclose(batch["targets"].sum(1), 1.0, atol=1e-5)
        assert (batch["targets"][np.arange(32), batch["label"]] > 0).all()


def test_on_device_refuses_streamed_data(tmp_path):
    from PIL import Image

    root = tmp_path / "tree" / "train" / "a"
    root.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / f"{i}.png")
    cfg = ml_collections.ConfigDict(dict(name="image_folder", path=str(tmp_path / "tree"),
                                         train_split="train", image_size=8, normalize="none",
                                         cache_dir=str(tmp_path / "c")))
    with pytest.raises(ValueError, match=r"on_device=True needs a data set held in memory"):
        OnDeviceData(cfg, 2, seed=0)


def test_seed_as_data_gives_the_same_batches_as_a_compiled_in_seed():
    """The seed travels in `arrays` (one compilation for every seed); the stream is unchanged."""
    import ml_collections

    from cnn_jax.data.on_device import OnDeviceData, _batch

    cfg = ml_collections.ConfigDict(dict(
        name="synthetic", path="", train_split="train", eval_split="", val_split="",
        normalize="none", image_size=-1, crop_padding=2, flip=True, random_resized_crop=False,
        mixup_alpha=0.0, cutmix_alpha=0.0, shuffle_buffer=100, max_bad_fraction=0.01,
        synthetic_shape=(8, 8, 3), synthetic_num_classes=4, synthetic_num_examples=64,
        cache_dir="", download=False, stats_max_examples=64))
    source = OnDeviceData(cfg, global_batch_size=16, seed=7)
    assert int(source.arrays["seed"]) == 7
    without = {k: v for k, v in source.arrays.items() if k != "seed"}
    for step in (0, 5):
        a = source.batch_fn(source.arrays, step)
        b = _batch(source.settings, without, step)
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    other = OnDeviceData(cfg, global_batch_size=16, seed=8)
    assert not np.array_equal(np.asarray(source.batch_fn(other.arrays, 0)["image"]),
                              np.asarray(source.batch_fn(source.arrays, 0)["image"]))
