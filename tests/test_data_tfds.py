"""tensorflow-datasets sources, on small data sets prepared here under the real tfds names.

`tfds.builder(name, data_dir=...)` then finds them exactly as it would find data prepared by a
real download, so the resolution order (prepared tfds data first), tfds slicing, the in-memory
path (Fashion-MNIST) and the streamed path (Imagenette) are all exercised offline.
"""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import data

N_TRAIN, N_VAL = 40, 13


def _fake_builder(tfds_name: str, version: str, features, splits: dict, config: str = ""):
    """A generator-based builder registered under nothing, writing `tfds_name`'s files."""
    def make(n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            if tfds_name == "imagenette":
                image = rng.integers(0, 256, (24 + i % 7, 30 - i % 5, 3), dtype=np.uint8)
            else:
                image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
            yield i, {"image": image, "label": int(rng.integers(0, 10))}

    with tfds.core.registered.skip_registration():
        class Fake(tfds.core.GeneratorBasedBuilder):
            name = tfds_name
            VERSION = tfds.core.Version(version)
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {s: self._generate_examples(n, seed) for s, (n, seed) in splits.items()}

            def _generate_examples(self, n, seed):
                yield from make(n, seed)
    return Fake


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    real = tfds.builder("imagenette", try_gcs=False)
    specs = [
        ("fashion_mnist", "3.0.1", "", tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)])}),
         {"train": (N_TRAIN, 0), "test": (N_VAL, 1)}),
        ("imagenette", str(real.version), real.builder_config.name, tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=real.info.features["label"].names)}),
         {"train": (N_TRAIN, 2), "validation": (N_VAL, 3)}),
    ]
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    for name, version, cfg_name, features, splits in specs:
        kwargs = {"config": cfg_name} if cfg_name else {}
        _fake_builder(name, version, features, splits, cfg_name)(data_dir=str(root), **kwargs) \
            .download_and_prepare(download_config=config)
    return root


def _cfg(tmp_path, tfds_dir, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        name="fashion_mnist", path="", train_split="train", eval_split="test", val_split="",
        normalize="train_stats", image_size=-1, crop_padding=0, flip=False,
        random_resized_crop=False, mixup_alpha=0.0, cutmix_alpha=0.0, shuffle_buffer=100,
        max_bad_fraction=0.01, cache_dir=str(tmp_path / "cache"), tfds_data_dir=str(tfds_dir),
        download=False, stats_max_examples=1000))
    c.update(overrides)
    return c


def test_prepared_tfds_data_comes_first_and_is_sliced(tmp_path, tfds_dir):
    cfg = _cfg(tmp_path, tfds_dir, train_split="train[:75%]", val_split="train[75%:]")
    info = data.get_info(cfg)  # Debian's Fashion-MNIST files exist too: tfds must win
    assert info.origin.startswith("tfds fashion_mnist:3.0.1")
    assert info.num_examples == {"train[:75%]": 30, "test": N_VAL, "train[75%:]": 10}
    builder = tfds.builder("fashion_mnist", data_dir=str(tfds_dir))
    images = tfds.as_numpy(builder.as_dataset(split="train[:75%]", batch_size=-1))["image"]
    assert info.mean[0] == pytest.approx(images.mean() / 255, abs=1e-9)
    batches = list(data.create_eval_iterator(cfg, "train[75%:]", global_batch_size=4))
    assert sum(b["mask"].sum() for b in batches) == 10


def test_streamed_tfds_training_is_deterministic_and_resumable(tmp_path, tfds_dir):
    cfg = _cfg(tmp_path, tfds_dir, name="imagenette", eval_split="validation", image_size=16,
               random_resized_crop=True, flip=True)
    info = data.get_info(cfg)
    assert info.image_shape == (16, 16, 3) and info.num_classes == 10
    assert info.num_examples == {"train": N_TRAIN, "validation": N_VAL}
    it = data.create_train_iterator(cfg, global_batch_size=8, seed=4)
    a = [next(it) for _ in range(7)]  # 5 steps per epoch: crosses into epoch 1
    b = [next(data.create_train_iterator(cfg, global_batch_size=8, seed=4, start_step=6))]
    assert a[0]["image"].shape == (8, 16, 16, 3) and a[0]["label"].dtype == np.int32
    np.testing.assert_array_equal(a[6]["image"], b[0]["image"])
    again = data.create_train_iterator(cfg, global_batch_size=8, seed=4)
    np.testing.assert_array_equal(next(again)["image"], a[0]["image"])
    halves = [next(data.create_train_iterator(cfg, global_batch_size=8, seed=4, process_index=p,
                                              process_count=2)) for p in range(2)]
    assert all(h["image"].shape == (4, 16, 16, 3) for h in halves)


def test_streamed_tfds_eval_counts_each_example_once(tmp_path, tfds_dir):
    cfg = _cfg(tmp_path, tfds_dir, name="imagenette", eval_split="validation", image_size=16)

    def sums(p, count):
        total, pixels = 0.0, 0.0
        for b in data.create_eval_iterator(cfg, "validation", global_batch_size=4, process_index=p,
                                           process_count=count):
            assert b["image"].shape == (4 // count, 16, 16, 3)
            total += b["mask"].sum()
            pixels += (b["mask"][:, None] * b["image"].reshape(len(b["mask"]), -1)).sum()
        return total, pixels

    whole = sums(0, 1)
    parts = [sums(p, 2) for p in range(2)]
    assert whole[0] == N_VAL == parts[0][0] + parts[1][0]
    assert whole[1] == pytest.approx(parts[0][1] + parts[1][1], rel=1e-5)
