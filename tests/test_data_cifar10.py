"""Acceptance check of the input pipeline on CIFAR-10 (issue 3): the JPEG training tree,
extracted from ../shared/datasets/cifar10-jpeg-train.tar.gz into a temporary directory.
"""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import sources

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests/
from tests.helpers import data_config, image_hashes  # noqa: E402

CIFAR_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg-train.tar.gz"


# -------------------------------------------------------------------------------- CIFAR-10

@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive absent: {CIFAR_ARCHIVE}")
    root = tmp_path_factory.mktemp("cifar10_jpeg")
    if shutil.which("tar"):  # GNU tar extracts the 50,000 files about 4x faster than tarfile
        subprocess.run(["tar", "xzf", str(CIFAR_ARCHIVE), "-C", str(root)], check=True)
    else:
        with tarfile.open(CIFAR_ARCHIVE) as tar:
            tar.extractall(root, filter="data")
    return root


def test_cifar10_from_the_jpeg_tree(cifar_root, tmp_path):
    cfg = data_config(tmp_path, name="cifar10", path=str(cifar_root), eval_split="",
                      val_split="train[90%:]", train_split="train[:90%]")
    info = data.get_info(cfg)
    assert info.num_examples == {"train[:90%]": 45_000, "train[90%:]": 5_000}
    assert info.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                "horse", "ship", "truck"]
    assert info.image_shape == (32, 32, 3)

    full = data_config(tmp_path, name="cifar10", path=str(cifar_root), eval_split="")
    info_full = data.get_info(full)
    assert info_full.num_examples == {"train": 50_000}
    np.testing.assert_allclose(info_full.mean, (0.491, 0.482, 0.447), atol=0.003)

    source = sources.resolve_source(full)
    whole = source.load("train")
    assert np.bincount(whole.labels).tolist() == [5000] * 10
    first, rest = source.load("train[:90%]"), source.load("train[90%:]")
    assert len(first.labels) + len(rest.labels) == 50_000
    assert np.bincount(rest.labels).tolist() == [500] * 10
    assert image_hashes(np.concatenate([first.images, rest.images])) == image_hashes(whole.images)

    # 45,000 // 256 = 175 steps per epoch: resuming at step 175 starts epoch 1 exactly.
    resumed = next(data.create_train_iterator(cfg, global_batch_size=256, seed=0, start_step=175))
    it = data.create_train_iterator(cfg, global_batch_size=256, seed=0)
    uninterrupted = [next(it) for _ in range(176)][-1]
    np.testing.assert_array_equal(resumed["image"], uninterrupted["image"])
    np.testing.assert_array_equal(resumed["label"], uninterrupted["label"])
