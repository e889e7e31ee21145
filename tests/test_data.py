"""Input pipeline on tiny generated data: splits, sources, statistics, batches, bad input."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.data import cache, image_tree, pipeline, sources, splits

N_TRAIN, N_TEST = 300, 70


# ------------------------------------------------------------------------------- helpers

def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(gzip.compress(_idx_bytes(array)))


def _id_images(n: int, seed: int) -> np.ndarray:
    """28x28 images whose first two pixels encode the example's index."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images


def _ids(batch_images: np.ndarray) -> np.ndarray:
    """Example indices from un-normalised (normalize='none', no augmentation) images."""
    pixels = np.round(batch_images[..., 0] * 255).astype(int)
    return pixels[:, 0, 0] + 256 * pixels[:, 0, 1]


def _labels(split: str) -> np.ndarray:
    return np.random.default_rng(1 if split == "train" else 4).integers(
        0, 10, N_TRAIN if split == "train" else N_TEST)


@pytest.fixture
def idx_dir(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte.gz", _id_images(N_TRAIN, 2))
    _write_idx(d / "train-labels-idx1-ubyte.gz", _labels("train").astype(np.uint8))
    _write_idx(d / "t10k-images-idx3-ubyte.gz", _id_images(N_TEST, 3))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", _labels("test").astype(np.uint8))
    return d


def _cfg(tmp_path, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        name="fashion_mnist", path="", train_split="train", eval_split="test", val_split="",
        normalize="none", on_device=False, image_size=-1, crop_padding=0, flip=False,
        random_resized_crop=False, mixup_alpha=0.0, cutmix_alpha=0.0, shuffle_buffer=1000,
        max_bad_fraction=0.01, synthetic_shape=(8, 8, 3), synthetic_num_classes=5,
        synthetic_num_examples=64, cache_dir=str(tmp_path / "cache"), tfds_data_dir=str(tmp_path / "tfds"),
        download=False, stats_max_examples=1000))
    c.update(overrides)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def _write_tree(root: Path, layout: dict, size=(8, 8), ext=".png", seed=0) -> None:
    """layout: {split: {class: count}}; image content random."""
    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for cls, count in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(d / f"{i:03d}{ext}")


# --------------------------------------------------------------------------------- splits

def test_split_slices_are_disjoint_and_cover():
    for n in (7, 100, 1001, 50_000):
        (_, a0, a1), = splits.resolve("train[:90%]", {"train": n}, "x")
        (_, b0, b1), = splits.resolve("train[90%:]", {"train": n}, "x")
        assert a0 == 0 and a1 == b0 and b1 == n
    ranges = splits.resolve("train[:10]+test[-5:]", {"train": 50, "test": 20}, "x")
    assert ranges == [("train", 0, 10), ("test", 15, 20)]


def test_unknown_split_names_the_split_and_closest_match():
    with pytest.raises(ValueError, match=r"'tset'.*available splits: \['test', 'train'\].*'test'"):
        splits.resolve("tset", {"train": 5, "test": 5}, "my data")


def test_malformed_split_spec_is_explained():
    with pytest.raises(ValueError, match=r"Cannot read split spec 'train\[:90'"):
        splits.resolve("train[:90", {"train": 5}, "my data")


# ------------------------------------------------------------------- IDX source and stats

def test_idx_info_stats_from_train_only(tmp_path, idx_dir):
    info = data.get_info(_cfg(tmp_path, path=str(idx_dir), normalize="train_stats"))
    assert info.num_examples == {"train": N_TRAIN, "test": N_TEST}
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.class_names[0] == "T-shirt/top"
    train = _id_images(N_TRAIN, 2) / 255.0
    assert info.mean[0] == pytest.approx(train.mean(), abs=1e-9)
    assert info.std[0] == pytest.approx(train.std(), abs=1e-9)
    assert data.num_train_examples(info) == N_TRAIN
    assert data.steps_per_epoch(info, 64) == N_TRAIN // 64


def test_stats_are_cached_and_reused(tmp_path, idx_dir):
    cfg = _cfg(tmp_path, path=str(idx_dir), normalize="train_stats")
    data.get_info(cfg)
    files = list((tmp_path / "cache").glob("stats-*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    cached["mean"], cached["std"] = [0.125], [0.5]
    files[0].write_text(json.dumps(cached))
    info = data.get_info(cfg)
    assert info.mean == (0.125,) and info.std == (0.5,)


def test_cache_beside_data_writes_nothing_else(tmp_path, idx_dir):
    before = sorted(os.listdir(idx_dir))
    data.get_info(_cfg(tmp_path, path=str(idx_dir), normalize="train_stats", cache_dir=""))
    after = sorted(os.listdir(idx_dir))
    assert set(after) - set(before) == {cache.CACHE_SUBDIR}
    assert [p.name.startswith("stats-") for p in (idx_dir / cache.CACHE_SUBDIR).iterdir()] == [True]


def test_cache_falls_back_to_home_when_data_dir_not_writable(tmp_path, monkeypatch):
    data_dir = tmp_path / "readonly"
    data_dir.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real = cache._writable_dir
    monkeypatch.setattr(cache, "_writable_dir",
                        lambda p: False if str(p).startswith(str(data_dir)) else real(p))
    got = cache.resolve_cache_dir(data_dir)
    assert str(got).startswith(str(tmp_path / "home" / ".cache" / "cnn_jax"))
    assert not (data_dir / cache.CACHE_SUBDIR).exists()


def test_published_and_none_normalisation(tmp_path, idx_dir):
    info = data.get_info(_cfg(tmp_path, path=str(idx_dir), normalize="published"))
    assert info.mean == (0.2860,) and info.std == (0.3530,)
    info = data.get_info(_cfg(tmp_path, path=str(idx_dir), normalize="none"))
    assert info.mean == (0.0,) and info.std == (1.0,)
    with pytest.raises(ValueError, match=r"data.normalize='mean'.*train_stats"):
        data.get_info(_cfg(tmp_path, path=str(idx_dir), normalize="mean"))


def test_normalised_eval_batches_have_zero_mean_unit_std(tmp_path, idx_dir):
    cfg = _cfg(tmp_path, path=str(idx_dir), normalize="train_stats", eval_split="train")
    images = np.concatenate([b["image"][b["mask"] > 0] for b in
                             data.create_eval_iterator(cfg, "train", global_batch_size=64)])
    assert len(images) == N_TRAIN
    assert images.mean() == pytest.approx(0.0, abs=1e-4)
    assert images.std() == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------- training batches

def test_train_batches_shapes_and_epoch_permutation(tmp_path, idx_dir):
    cfg = _cfg(tmp_path, path=str(idx_dir))
    B = 64
    spe = N_TRAIN // B
    batches = _take(data.create_train_iterator(cfg, global_batch_size=B, seed=3), 2 * spe)
    assert batches[0]["image"].shape == (B, 28, 28, 1) and batches[0]["image"].dtype == np.float32
    assert batches[0]["label"].dtype == np.int32 and "targets" not in batches[0]
    epochs = [np.concatenate([_ids(b["image"]) for b in batches[e * spe:(e + 1) * spe]]) for e in range(2)]
    for ids in epochs:
        assert len(set(ids.tolist())) == spe * B  # no repeats within an epoch (remainder dropped)
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(batches[0]["label"], _labels("train")[_ids(batches[0]["image"])])


def test_same_seed_same_batches_and_resume_equals_uninterrupted(tmp_path, idx_dir):
    cfg = _cfg(tmp_path, path=str(idx_dir), crop_padding=2, flip=True, mixup_alpha=0.4,
               cutmix_alpha=1.0, normalize="train_stats")
    run = lambda **kw: _take(data.create_train_iterator(cfg, global_batch_size=32, seed=7, **kw), 12)
    a, b = run(), run()
    resumed = _take(data.create_train_iterator(cfg, global_batch_size=32, seed=7, start_step=7), 5)
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    for x, y in zip(a[7:], resumed):  # crosses the epoch boundary at step 9
        assert all(np.array_equal(x[k], y[k]) for k in x)
    other = _take(data.create_train_iterator(cfg, global_batch_size=32, seed=8), 1)[0]
    assert not np.array_equal(other["image"], a[0]["image"])


def test_processes_get_disjoint_shards_of_the_global_batch(tmp_path, idx_dir):
    cfg = _cfg(tmp_path, path=str(idx_dir), crop_padding=2, flip=True)
    whole = _take(data.create_train_iterator(cfg, global_batch_size=48, seed=1), 3)
    shards = [_take(data.create_train_iterator(cfg, global_batch_size=48, seed=1, process_index=p,
                                               process_count=3), 3) for p in range(3)]
    for step in range(3):
        parts = [s[step] for s in shards]
        assert all(p["image"].shape[0] == 16 for p in parts)
        np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole[step]["image"])
        np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole[step]["label"])
    plain = _cfg(tmp_path, path=str(idx_dir))
    ids = [_ids(next(data.create_train_iterator(plain, global_batch_size=48, seed=1, process_index=p,
                                                process_count=3))["image"]) for p in range(3)]
    assert len(set(np.concatenate(ids).tolist())) == 48


def test_batch_not_divisible_by_processes_is_an_error(tmp_path, idx_dir):
    with pytest.raises(ValueError, match=r"batch_size=50 .*multiple of the process count 3"):
        data.create_train_iterator(_cfg(tmp_path, path=str(idx_dir)), global_batch_size=50, seed=0,
                                   process_index=0, process_count=3)


def test_batch_larger_than_split_is_an_error(tmp_path, idx_dir):
    with pytest.raises(ValueError, match=r"has 300 examples, fewer than one global batch of 512"):
        data.create_train_iterator(_cfg(tmp_path, path=str(idx_dir)), global_batch_size=512, seed=0)


def test_crop_and_flip_are_crops_and_flips_of_the_source(tmp_path, idx_dir):
    cfg = _cfg(tmp_path, path=str(idx_dir), crop_padding=3, flip=True)
    batch = next(data.create_train_iterator(cfg, global_batch_size=64, seed=0))
    plain_cfg = _cfg(tmp_path, path=str(idx_dir))
    plain = next(data.create_train_iterator(plain_cfg, global_batch_size=64, seed=0))
    flipped = 0
    for aug, src in zip(batch["image"][:16, ..., 0], plain["image"][:16, ..., 0]):
        padded = np.pad(src, 3)
        candidates = {(dy, dx, f): (padded[dy:dy + 28, dx:dx + 28][:, ::-1] if f else padded[dy:dy + 28, dx:dx + 28])
                      for dy in range(7) for dx in range(7) for f in (0, 1)}
        matches = [k for k, c in candidates.items() if np.array_equal(c, aug)]
        assert matches, "augmented image is not a padded crop/flip of its source"
        flipped += matches[0][2]
    assert 0 < flipped < 16


def test_mixup_and_cutmix_targets(tmp_path, idx_dir):
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.2, 1.0)):
        cfg = _cfg(tmp_path, path=str(idx_dir), mixup_alpha=mixup, cutmix_alpha=cutmix)
        for batch in _take(data.create_train_iterator(cfg, global_batch_size=32, seed=0), 4):
            t = batch["targets"]
            assert t.shape == (32, 10) and t.dtype == np.float32
            np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)
            assert (t >= 0).all()
            assert (t[np.arange(32), batch["label"]] > 0).all()
    with pytest.raises(ValueError, match=r"data.mixup_alpha=-1"):
        data.get_info(_cfg(tmp_path, path=str(idx_dir), mixup_alpha=-1.0))


# ---------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("processes", [1, 2, 4])
def test_eval_counts_every_example_exactly_once(tmp_path, idx_dir, processes):
    cfg = _cfg(tmp_path, path=str(idx_dir))
    B = 16  # 70 examples: 5 global batches, the last padded with 10
    seen = []
    for p in range(processes):
        batches = list(data.create_eval_iterator(cfg, "test", global_batch_size=B, process_index=p,
                                                 process_count=processes))
        assert len(batches) == 5
        for b in batches:
            assert b["image"].shape == (B // processes, 28, 28, 1) and b["mask"].shape == (B // processes,)
            assert not b["image"][b["mask"] == 0].any()
            seen.extend(_ids(b["image"][b["mask"] > 0]).tolist())
    assert sorted(seen) == list(range(N_TEST))


def test_eval_of_a_sliced_split(tmp_path, idx_dir):
    cfg = _cfg(tmp_path, path=str(idx_dir), train_split="train[:80%]", val_split="train[80%:]")
    info = data.get_info(cfg)
    assert info.num_examples["train[:80%]"] == 240 and info.num_examples["train[80%:]"] == 60
    val = [b for b in data.create_eval_iterator(cfg, "train[80%:]", global_batch_size=32)]
    ids = np.concatenate([_ids(b["image"][b["mask"] > 0]) for b in val])
    assert sorted(ids.tolist()) == list(range(240, 300))
    assert data.num_eval_batches(info, "train[80%:]", 32) == len(val) == 2


def test_overlapping_validation_split_warns(tmp_path, idx_dir):
    with pytest.warns(UserWarning, match=r"val_split='train\[90%:\]' overlaps data.train_split='train'"):
        data.get_info(_cfg(tmp_path, path=str(idx_dir), val_split="train[90%:]"))


# ------------------------------------------------------------------------- IDX bad input

def test_idx_wrong_magic_names_the_file(tmp_path, idx_dir):
    labels = np.zeros(N_TRAIN, np.uint8)
    _write_idx(idx_dir / "train-images-idx3-ubyte.gz", labels)  # a labels file in the images' place
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz has magic number 0x00000801; expected 0x00000803"):
        data.create_train_iterator(_cfg(tmp_path, path=str(idx_dir)), global_batch_size=32, seed=0)


def test_idx_truncated_data_names_the_file(tmp_path, idx_dir):
    raw = _idx_bytes(_id_images(N_TRAIN, 2))
    (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is truncated: header says \(300, 28, 28\)"):
        data.get_info(_cfg(tmp_path, path=str(idx_dir), normalize="train_stats"))


def test_idx_truncated_gzip_names_the_file(tmp_path, idx_dir):
    path = idx_dir / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz is truncated or not valid gzip"):
        list(data.create_eval_iterator(_cfg(tmp_path, path=str(idx_dir)), "test", global_batch_size=32))


def test_idx_label_outside_num_classes(tmp_path, idx_dir):
    labels = np.zeros(N_TEST, np.uint8)
    labels[5] = 12
    _write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz has label 12 at index 5 .*outside \[0, 10\)"):
        list(data.create_eval_iterator(_cfg(tmp_path, path=str(idx_dir)), "test", global_batch_size=32))


def test_idx_count_mismatch(tmp_path, idx_dir):
    _write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(N_TEST - 1, np.uint8))
    with pytest.raises(ValueError, match=r"holds 70 images but .*t10k-labels-idx1-ubyte.gz holds 69 labels"):
        list(data.create_eval_iterator(_cfg(tmp_path, path=str(idx_dir)), "test", global_batch_size=32))


def test_split_that_does_not_exist(tmp_path, idx_dir):
    with pytest.raises(ValueError, match=r"Split 'validation' .*available splits: \['test', 'train'\]"):
        data.get_info(_cfg(tmp_path, path=str(idx_dir), eval_split="validation"))


# ----------------------------------------------------------------------------- resolution

def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"data.name='fashion_mnst'.*Did you mean 'fashion_mnist'"):
        data.get_info(_cfg(tmp_path, name="fashion_mnst"))


def test_nothing_found_is_one_error_with_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEFAULT_LOCAL_DIRS", {"fashion_mnist": str(tmp_path / "absent")})
    with pytest.raises(FileNotFoundError) as e:
        data.get_info(_cfg(tmp_path))
    msg = str(e.value)
    for part in ("prepared tfds data: none in", f"local files: none at {tmp_path / 'absent'}",
                 "tfds download: disabled", "apt-get install dataset-fashion-mnist",
                 "--config.data.path="):
        assert part in msg


def test_download_is_skipped_fast_when_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_online", lambda *a, **k: False)
    with pytest.raises(FileNotFoundError, match=r"tfds download: skipped, no network"):
        data.get_info(_cfg(tmp_path, name="mnist", download=True))


def test_explicit_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path='.*nowhere' for data set 'fashion_mnist' does not exist"):
        data.get_info(_cfg(tmp_path, path=str(tmp_path / "nowhere")))


# ----------------------------------------------------------------------------- image trees

def test_tree_classes_test_split_and_stratified_slices(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"cat": 10, "dog": 20, "eel": 30}, "test": {"dog": 3, "eel": 2}})
    cfg = _cfg(tmp_path, name="image_folder", path=str(root), train_split="train[:50%]",
               val_split="train[50%:]")
    info = data.get_info(cfg)
    assert info.class_names == ["cat", "dog", "eel"] and info.image_shape == (8, 8, 3)
    assert info.num_examples == {"train[:50%]": 30, "test": 5, "train[50%:]": 30}
    source = sources.resolve_source(cfg)
    first, second = source.load("train[:50%]"), source.load("train[50%:]")
    assert np.bincount(first.labels).tolist() == [5, 10, 15] == np.bincount(second.labels).tolist()
    whole = source.load("train").images.reshape(60, -1)
    halves = np.concatenate([first.images, second.images]).reshape(60, -1)
    assert sorted(map(bytes, whole)) == sorted(map(bytes, halves))  # disjoint and covering
    assert np.bincount(source.load("test").labels, minlength=3).tolist() == [0, 3, 2]


def test_tree_corrupt_files_skipped_with_a_warning(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 10, "b": 10}})
    (root / "train" / "a" / "bad.jpg").write_bytes(b"not an image")
    cfg = _cfg(tmp_path, name="image_folder", path=str(root), eval_split="", max_bad_fraction=0.1)
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable or corrupt image file\(s\) of 21 .*bad.jpg"):
        info = data.get_info(cfg)
    assert info.num_examples["train"] == 20
    with pytest.warns(UserWarning, match=r"Skipped 1"):  # the cached decode still reports it
        data.get_info(cfg)


def test_tree_too_many_corrupt_files_is_an_error(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 5, "b": 5}})
    for i in range(2):
        (root / "train" / "b" / f"bad{i}.png").write_bytes(b"")
    cfg = _cfg(tmp_path, name="image_folder", path=str(root), eval_split="", max_bad_fraction=0.1)
    with pytest.raises(ValueError, match=r"2 of 12 image files \(16.67%\) .*max_bad_fraction=0.1"):
        data.get_info(cfg)


def test_tree_empty_class_folder(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 3}})
    (root / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"Class folder '.*train/empty' has no image files"):
        data.get_info(_cfg(tmp_path, name="image_folder", path=str(root), eval_split=""))


def test_tree_empty_split(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 3}})
    (root / "test").mkdir()
    with pytest.raises(ValueError, match=r"Split folder '.*test' has no class folders"):
        data.get_info(_cfg(tmp_path, name="image_folder", path=str(root)))


def test_tree_missing_split(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 3}})
    with pytest.raises(ValueError, match=r"Split 'test' .*does not exist in image tree .*available splits: \['train'\]"):
        list(data.create_eval_iterator(_cfg(tmp_path, name="image_folder", path=str(root), eval_split=""),
                                       "test", global_batch_size=2))


def test_tree_given_class_folders_instead_of_root(tmp_path):
    root = tmp_path / "tree"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / cls / "0.png")
    with pytest.raises(ValueError, match=r"look like class folders: move them into .*/train/"):
        data.get_info(_cfg(tmp_path, name="image_folder", path=str(root), eval_split=""))


def test_tree_eval_class_not_in_training_classes(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "zebra": 1}})
    with pytest.raises(ValueError, match=r"class folder\(s\) \['zebra'\] .*outside num_classes"):
        data.get_info(_cfg(tmp_path, name="image_folder", path=str(root)))


def test_tree_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 3}}, size=(8, 8))
    _write_tree(root, {"train": {"b": 3}}, size=(12, 10))
    cfg = _cfg(tmp_path, name="image_folder", path=str(root), eval_split="")
    with pytest.raises(ValueError, match=r"2 different sizes .*is 8x8.*is 12x10.*data.image_size=N"):
        data.get_info(cfg)
    cfg = _cfg(tmp_path, name="cifar10", path=str(root), eval_split="", image_size=6)
    assert data.get_info(cfg).image_shape == (6, 6, 3)
    batch = next(data.create_train_iterator(cfg, global_batch_size=4, seed=0))
    assert batch["image"].shape == (4, 6, 6, 3)


def test_tree_decode_is_cached(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 4, "b": 4}}, ext=".jpg")
    cfg = _cfg(tmp_path, name="cifar10", path=str(root), eval_split="")
    first = data.get_info(cfg)

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(image_tree, "_decode_all", fail)
    assert data.get_info(cfg) == first
    assert list((tmp_path / "cache").glob("train-decoded-*.npz"))


def test_streamed_image_folder_batches(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 9, "b": 7}, "val": {"a": 3, "b": 2}}, size=(20, 14), ext=".jpg")
    _write_tree(root, {"train": {"b": 2}}, size=(11, 17), ext=".png", seed=5)
    cfg = _cfg(tmp_path, name="image_folder", path=str(root), eval_split="val", image_size=12,
               random_resized_crop=True, flip=True, crop_padding=1, normalize="train_stats")
    info = data.get_info(cfg)
    assert info.image_shape == (12, 12, 3) and info.num_examples == {"train": 18, "val": 5}
    a = _take(data.create_train_iterator(cfg, global_batch_size=4, seed=2), 6)
    b = _take(data.create_train_iterator(cfg, global_batch_size=4, seed=2, start_step=4), 2)
    assert a[0]["image"].shape == (4, 12, 12, 3) and a[0]["image"].dtype == np.float32
    for x, y in zip(a[4:], b):  # step 4 is in the second epoch (4 steps per epoch)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    counts = 0
    for p in range(2):
        for batch in data.create_eval_iterator(cfg, "val", global_batch_size=4, process_index=p,
                                               process_count=2):
            assert batch["image"].shape == (2, 12, 12, 3)
            counts += batch["mask"].sum()
    assert counts == 5


def test_streamed_image_that_fails_to_decode_keeps_every_position(tmp_path):
    """A file whose header parses but whose data is broken: a zero image of weight 0 in its
    place, with a warning; every other example stays where it was (no shift)."""
    import shutil
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    _write_tree(clean, {"train": {"a": 6, "b": 6}}, size=(10, 10))
    shutil.copytree(clean, broken)
    bad = broken / "train" / "a" / "002.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated: header still parses

    def batches(root, n):
        cfg = _cfg(tmp_path, name="image_folder", path=str(root), eval_split="", image_size=8,
                   flip=True, crop_padding=1, cache_dir=str(root / ".cache"))
        return _take(data.create_train_iterator(cfg, global_batch_size=4, seed=3), n)

    want = batches(clean, 6)  # two epochs of 3 steps
    with pytest.warns(UserWarning, match=r"1 training image\(s\) of .* failed to decode .*weight 0"):
        got = batches(broken, 6)
    placeholders = 0
    for x, y in zip(want, got):
        assert (x["weight"] == 1).all()
        np.testing.assert_array_equal(x["label"], y["label"])
        good = y["weight"] == 1
        np.testing.assert_array_equal(x["image"][good], y["image"][good])
        assert (y["image"][~good] == 0).all()
        placeholders += int((~good).sum())
    assert placeholders == 2  # once per epoch

    # Evaluation: not scored (mask 0) and counted, every other example in place.
    _write_tree(broken, {"val": {"a": 3, "b": 2}}, size=(10, 10), seed=1)
    bad = broken / "val" / "b" / "001.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    cfg = _cfg(tmp_path, name="image_folder", path=str(broken), eval_split="val", image_size=8,
               cache_dir=str(broken / ".cache"))
    for processes in (1, 2):
        with pytest.warns(UserWarning, match=r"image\(s\) of split 'val' .*failed to decode"):
            got = [b for q in range(processes) for b in data.create_eval_iterator(
                cfg, "val", global_batch_size=4, process_index=q, process_count=processes)]
        assert sum(b["mask"].sum() for b in got) == 4
        assert sum(b["undecodable"].sum() for b in got) == 1


@pytest.mark.parametrize("rrc,fraction", [(False, 1.0), (True, 0.875)])
def test_streamed_eval_crop_fits_small_images(tmp_path, rrc, fraction):
    """Without random-resized crops training sees the whole image, and so does evaluation (the
    old image_size / (image_size + 32) kept half of a 32 px image); with them, 0.875."""
    import tensorflow as tf
    from cnn_jax.data import augment
    assert augment.eval_crop_fraction(rrc) == fraction
    root = tmp_path / "tree"
    _write_tree(root, {"train": {"a": 2}, "val": {"a": 1}}, size=(32, 32))
    cfg = _cfg(tmp_path, name="image_folder", path=str(root), eval_split="val", image_size=32,
               random_resized_crop=rrc)
    image = next(data.create_eval_iterator(cfg, "val", global_batch_size=1))["image"][0]
    pixels = np.asarray(Image.open(root / "val" / "a" / "000.png"), np.float32) / 255
    side = int(32 * fraction)
    lo = (32 - side) // 2
    crop = tf.image.resize(pixels[lo:lo + side, lo:lo + side] * 255, [32, 32], antialias=True)
    np.testing.assert_allclose(image, np.clip(crop.numpy(), 0, 255) / 255, atol=1e-5)
    if not rrc:
        np.testing.assert_allclose(image, pixels, atol=1e-5)  # the stored image, uncropped


# ------------------------------------------------------------------------------ synthetic

def test_synthetic_data(tmp_path):
    cfg = _cfg(tmp_path, name="synthetic", normalize="train_stats", image_size=4)
    info = data.get_info(cfg)
    assert info.image_shape == (4, 4, 3) and info.num_classes == 5
    assert info.num_examples == {"train": 64, "test": 16}
    a = next(data.create_train_iterator(cfg, global_batch_size=8, seed=0))
    b = next(data.create_train_iterator(cfg, global_batch_size=8, seed=0))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (8, 4, 4, 3) and a["label"].max() < 5


# ----------------------------------------------------------------------------------- CLI

def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "cnn_jax.data", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_json_and_table(tmp_path, idx_dir):
    out = _cli("fashion_mnist", f"--path={idx_dir}", "--split=test", "--json",
               f"--cache_dir={tmp_path / 'c'}")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    for key in ("num_examples", "image_shape", "num_classes", "class_names", "mean", "std",
                "label_histogram"):
        assert key in facts
    assert facts["num_examples"] == N_TEST and facts["image_shape"] == [28, 28, 1]
    assert facts["label_histogram"] == np.bincount(_labels("test"), minlength=10).tolist()
    assert facts["mean"][0] == pytest.approx((_id_images(N_TEST, 3) / 255).mean(), abs=1e-9)
    table = _cli("fashion_mnist", f"--path={idx_dir}", f"--cache_dir={tmp_path / 'c'}")
    assert table.returncode == 0 and "num_examples  300" in table.stdout and "Ankle boot" in table.stdout


def test_cli_error_is_one_line_not_a_traceback(tmp_path, idx_dir):
    out = _cli("fashion_mnist", f"--path={idx_dir}", "--split=valid", f"--cache_dir={tmp_path / 'c'}")
    assert out.returncode == 1
    assert out.stderr.startswith("error: Split 'valid'") and "Traceback" not in out.stderr


def test_cifar10_tree_reads_a_test_split_the_same_way(tmp_path):
    root = tmp_path / "cifar"
    _write_tree(root, {"train": {"airplane": 6, "cat": 6}, "test": {"airplane": 2, "cat": 3}},
                size=(32, 32), ext=".jpg")
    cfg = _cfg(tmp_path, name="cifar10", path=str(root), eval_split="test", normalize="published")
    info = data.get_info(cfg)
    assert info.num_examples == {"train": 12, "test": 5} and info.mean == (0.4914, 0.4822, 0.4465)
    batches = list(data.create_eval_iterator(cfg, "test", global_batch_size=4))
    assert [b["image"].shape for b in batches] == [(4, 32, 32, 3)] * 2
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 1]
