"""Named validation of config.data fields (cnn_jax/validate.py) and the IDX image size."""

import gzip

import ml_collections
import numpy as np
import pytest

from cnn_jax import data
from cnn_jax import validate
from cnn_jax.data import idx


def _cfg(**fields) -> ml_collections.ConfigDict:
    base = dict(name="synthetic", synthetic_shape=(6, 6, 3), synthetic_num_classes=3,
                synthetic_num_examples=16, normalize="none", train_split="train",
                eval_split="test", val_split="", image_size=-1)
    return ml_collections.ConfigDict({**base, **fields})


@pytest.mark.parametrize("field,value,fragment", [
    ("mixup_alpha", "fast", "a number >= 0"),
    ("mixup_alpha", float("nan"), "a number >= 0"),
    ("cutmix_alpha", -1.0, "a number >= 0"),
    ("max_bad_fraction", "0.1", "a number in [0, 1]"),
    ("max_bad_fraction", 1.5, "a number in [0, 1]"),
    ("image_size", "big", "an integer"),
    ("image_size", 2.5, "an integer"),
    ("crop_padding", 1.5, "an integer >= 0"),
    ("shuffle_buffer", 0, "an integer >= 1"),
    ("flip", "yes", "True or False"),
    ("stats_max_examples", True, "an integer >= 1"),
    ("synthetic_num_classes", 1.5, "an integer >= 1"),
    ("synthetic_num_examples", "16", "an integer >= 1"),
    ("synthetic_shape", (6, 6), "three integers >= 1"),
    ("synthetic_shape", (6, 2.5, 3), "three integers >= 1"),
])
def test_bad_data_field_names_field_value_and_fix(field, value, fragment):
    with pytest.raises(ValueError) as err:
        data.get_info(_cfg(**{field: value}))
    msg = str(err.value)
    assert f"data.{field}={value!r}" in msg and fragment in msg, msg
    assert f"--config.data.{field}=" in msg


def test_valid_values_pass_and_synthetic_fields_only_matter_for_synthetic():
    validate.check_data_config(_cfg(mixup_alpha=0, cutmix_alpha=1.0, image_size=0, crop_padding=2,
                               max_bad_fraction=1, synthetic_shape=[6, 6, 3]))
    validate.check_data_config(_cfg(name="cifar10", synthetic_num_classes=1.5))
    with pytest.raises(ValueError, match="synthetic_num_classes"):
        validate.check_data_config(_cfg(synthetic_num_classes=1.5))
    info = data.get_info(_cfg(mixup_alpha=0.2))
    assert info.image_shape == (6, 6, 3) and info.num_classes == 3


def _write_idx_dir(directory, hw):
    directory.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 4)):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, *hw))),
                            ("labels-idx1", rng.integers(0, 10, n))):
            array = array.astype(np.uint8)
            header = bytes([0, 0, 8, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape)
            (directory / f"{split}-{kind}-ubyte.gz").write_bytes(
                gzip.compress(header + array.tobytes()))
    return directory


@pytest.mark.parametrize("normalize", ["none", "train_stats"])
def test_fashion_mnist_idx_of_another_image_size_is_refused(tmp_path, normalize):
    d = _write_idx_dir(tmp_path / "idx", (5, 7))
    cfg = ml_collections.ConfigDict(dict(name="fashion_mnist", path=str(d), normalize=normalize,
                                         train_split="train", eval_split="test",
                                         cache_dir=str(tmp_path / "cache")))
    with pytest.raises(ValueError) as err:
        data.get_info(cfg)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "5x7" in msg and "28x28" in msg, msg


def test_idx_reader_names_the_file_and_reads_other_sizes_when_asked(tmp_path):
    d = _write_idx_dir(tmp_path / "idx", (5, 7))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz holds 5x7 images"):
        idx.read_split(d, "test", 10)
    images, labels = idx.read_split(d, "test", 10, image_hw=None)
    assert images.shape == (4, 5, 7, 1) and labels.shape == (4,)
    d28 = _write_idx_dir(tmp_path / "idx28", (28, 28))
    assert idx.read_split(d28, "train", 10)[0].shape == (12, 28, 28, 1)
