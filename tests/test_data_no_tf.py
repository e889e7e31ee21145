"""The input pipeline where TensorFlow / tensorflow-datasets are not installed (e.g. a GPU image
with only JAX): the fallbacks must select and decode exactly what the tf/tfds paths do."""

import itertools

import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import image_tree, splits

SPECS = ["train", "test", "train+test", "all", "train[:90%]", "train[90%:]", "train[10%:35%]",
         "train[:7]", "train[7:]", "train[-3:]", "train[-10%:]", "train[:-10%]", "train[3:-2]",
         "train[:0]", "train[:33%]+test[50%:]", "train[ : 50% ]", "test[1:1000]", "train[50%:10%]"]


@pytest.mark.parametrize("n_train,n_test", [(1, 1), (7, 3), (45, 10), (50_000, 10_000), (999, 1)])
def test_split_parser_matches_tfds(n_train, n_test):
    sizes = {"train": n_train, "test": n_test}
    refused = 0
    for spec in SPECS:
        try:
            want = splits.resolve(spec, sizes, "here")
        except ValueError:  # tfds refuses e.g. [:7] of a 1-example split: so must the fallback
            refused += 1
            with pytest.raises(ValueError, match="Cannot read split spec"):
                splits._resolve_without_tfds(spec, sizes, "here")
            continue
        assert splits._resolve_without_tfds(spec, sizes, "here") == want, spec
    assert refused < len(SPECS) // 2


def _block_imports(monkeypatch, prefix: str) -> None:
    """Makes `import <prefix>...` fail for the rest of the test, as if not installed."""
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name.startswith(prefix):
            raise ImportError(f"{name} blocked for this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)


def test_split_parser_used_without_tfds_and_refuses_other_forms(monkeypatch):
    _block_imports(monkeypatch, "tensorflow_datasets")
    assert splits.resolve("train[:90%]", {"train": 50_000}, "here") == [("train", 0, 45_000)]
    with pytest.raises(ValueError, match=r"'train\[::2\]'.*not of the form"):
        splits.resolve("train[::2]", {"train": 10}, "here")


def _write_images(root, rng):
    files = []
    for i, (size, mode) in enumerate(itertools.product([(32, 32), (17, 23)],
                                                       ["RGB", "L", "RGBA", "LA"])):
        h, w = size
        channels = {"RGB": 3, "L": 1, "RGBA": 4, "LA": 2}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze(-1) \
            if channels == 1 else rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        image = Image.fromarray(pixels, mode)
        if mode in ("RGB", "L"):
            path = root / f"{i}.jpg"
            image.save(path, quality=90)
        else:
            path = root / f"{i}.png"
            image.save(path)
        files.append(str(path))
    bad = root / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    return files + [str(bad)]


@pytest.mark.parametrize("image_size", [-1, 16])
def test_pil_decode_matches_tf_decode(tmp_path, image_size):
    files = _write_images(tmp_path, np.random.default_rng(0))
    tf_images, tf_bad = image_tree._decode_all(files, image_size)
    pil_images, pil_bad = image_tree._decode_all_pil(files, image_size)
    assert tf_bad == pil_bad == [len(files) - 1]
    assert sorted(tf_images) == sorted(pil_images)
    for i in tf_images:
        a = image_tree._to_channels(tf_images[i], 3)
        b = image_tree._to_channels(pil_images[i], 3)
        assert a.shape == b.shape, files[i]
        if image_size < 0:  # same libjpeg accurate IDCT / lossless PNG: identical pixels
            np.testing.assert_array_equal(a, b, err_msg=files[i])
        else:  # both antialiased bilinear resizes of the same centre square, rounded
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 3.0, files[i]


def test_metrics_module_imports_without_clu():
    import subprocess
    import sys

    code = ("import sys\n"
            "class B:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('clu', 'tensorflow', 'tensorflow_datasets'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, B())\n"
            "import cnn_jax.train, cnn_jax.data.on_device\n"
            "from cnn_jax.train import metrics\n"
            "print('ok', 'clu' in sys.modules, 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "False", "False"]


def test_metrics_without_tensorboard_go_to_jsonl_only(tmp_path, monkeypatch):
    import json

    from cnn_jax.train import metrics

    _block_imports(monkeypatch, "tensorboard")
    logger = metrics.MetricsLogger(str(tmp_path), hparams={"seed": 0})
    logger.write({"step": 1, "split": "train", "loss": 0.5})
    logger.write({"step": 2, "split": "train", "loss": 0.25})
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / metrics.METRICS_FILE).read_text().splitlines()]
    assert [x["loss"] for x in lines] == [0.5, 0.25]
    assert not (tmp_path / metrics.TENSORBOARD_SUBDIR).exists()
