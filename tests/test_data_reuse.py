"""A run resolves its data set once (sources.reuse_sources); split slices are views of the base
arrays with the values a copy had."""

from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax import data, train
from cnn_jax.data import image_tree, sources
from tests import tiny_run


def _tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, classes in {"train": {"a": 6, "b": 6}, "test": {"a": 3, "b": 3}}.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png")


def _cfg(tmp_path: Path, **fields) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        name="image_folder", path=str(tmp_path / "tree"), train_split="train[:75%]",
        eval_split="test", val_split="train[75%:]", normalize="train_stats", on_device=False,
        image_size=-1, crop_padding=0, flip=False, random_resized_crop=False, mixup_alpha=0.0,
        cutmix_alpha=0.0, shuffle_buffer=100, max_bad_fraction=0.0, cache_dir=str(tmp_path / "c"),
        tfds_data_dir=str(tmp_path / "tfds"), download=False, stats_max_examples=100))
    c.update(fields)
    return c


@pytest.fixture
def listings(tmp_path, monkeypatch):
    """Counts image_tree.list_files calls per split."""
    _tree(tmp_path / "tree")
    calls: dict[str, int] = {}
    real = image_tree.list_files

    def counted(root, split, class_names):
        calls[split] = calls.get(split, 0) + 1
        return real(root, split, class_names)
    monkeypatch.setattr(image_tree, "list_files", counted)
    return calls


def _everything(cfg) -> list[np.ndarray]:
    """What a run asks of its data: facts, training batches, evaluation batches."""
    info = data.get_info(cfg)
    train_batch = next(data.create_train_iterator(cfg, global_batch_size=4, seed=0))
    eval_batch = next(data.create_eval_iterator(cfg, "test", global_batch_size=4))
    return [np.asarray(info.mean), train_batch["image"], train_batch["label"],
            eval_batch["image"], eval_batch["label"]]


def test_inside_reuse_sources_a_tree_is_listed_once_with_the_same_batches(tmp_path, listings):
    cfg = _cfg(tmp_path)
    fresh = _everything(cfg)
    assert listings == {"train": 3, "test": 3}  # each call lists both splits again
    listings.clear()
    with sources.reuse_sources():
        reused = _everything(cfg)
    assert listings == {"train": 1, "test": 1}
    for a, b in zip(fresh, reused):
        np.testing.assert_array_equal(a, b)


def test_reuse_is_per_config_bounded_and_ends_with_the_block(tmp_path, listings):
    cfgs = [_cfg(tmp_path, train_split=spec) for spec in ("train", "train[:50%]", "train[50%:]")]
    with sources.reuse_sources():
        first = sources.resolve_source(cfgs[0])
        assert sources.resolve_source(_cfg(tmp_path, train_split="train")) is first  # equal config
        assert sources.resolve_source(cfgs[1]) is not first  # another config: resolved anew
        with sources.reuse_sources():  # a nested block shares the outer one's sources
            assert sources.resolve_source(cfgs[0]) is first
        sources.resolve_source(cfgs[2])  # a third config pushes out the least recently used...
        assert sources.resolve_source(cfgs[1]) is not first
        assert sources.resolve_source(cfgs[0]) is not first  # ...which was cfgs[0]
    assert sources.REUSED_SOURCES == 2
    after = sources.resolve_source(cfgs[0])
    assert after is not first and sources.resolve_source(cfgs[0]) is not after  # nothing kept


@pytest.mark.parametrize("spec, expect_view", [
    ("train", True), ("train[:50%]", True), ("train[25%:75%]", True), ("train[-3:]", True),
    ("train[:25%]+train[50%:75%]", False), ("train+test", False)])
def test_split_slices_are_views_with_the_values_of_a_copy(tmp_path, spec, expect_view):
    _tree(tmp_path / "tree")
    source = sources.resolve_source(_cfg(tmp_path))
    split = source.load(spec)
    base = {name: source._base(name) for name in ("train", "test")}
    want_images, want_labels = [], []
    for name, index in data.splits.select(spec, source.sizes, source.origin):
        want_images.append(base[name][0][index])
        want_labels.append(base[name][1][index])
    np.testing.assert_array_equal(split.images, np.concatenate(want_images))
    np.testing.assert_array_equal(split.labels, np.concatenate(want_labels))
    assert np.shares_memory(split.images, base["train"][0]) == expect_view


def _count_resolves(monkeypatch) -> list[str]:
    names: list[str] = []
    real = sources._resolve

    def counted(cfg):
        names.append(str(cfg.name))
        return real(cfg)
    monkeypatch.setattr(sources, "_resolve", counted)
    return names


def test_a_training_run_and_an_evaluation_resolve_their_data_set_once(tmp_path, monkeypatch):
    resolved = _count_resolves(monkeypatch)
    cfg = tiny_run.config()
    results = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert results["status"] == "finished"
    assert resolved == ["synthetic"]  # facts, batches and the final evaluation share one
    resolved.clear()
    train.evaluate_checkpoint(cfg, str(tmp_path / "run"))
    assert resolved == ["synthetic"]
    assert sources._reused is None  # nothing kept after the run
