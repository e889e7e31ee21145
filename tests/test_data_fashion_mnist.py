"""Acceptance checks of the input pipeline on Fashion-MNIST (issue 3): the Debian package's IDX
files (CI installs dataset-fashion-mnist), and exact evaluation on one and on eight devices.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import sources

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests/
from tests.helpers import data_config, image_hashes  # noqa: E402

needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST IDX files absent from {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")


# --------------------------------------------------------------------------- Fashion-MNIST

@needs_fmnist
def test_fashion_mnist_from_debian_files(tmp_path):
    cfg = data_config(tmp_path)
    info = data.get_info(cfg)
    assert info.origin == f"IDX files in {FMNIST_DIR}"
    assert info.num_examples == {"train": 60_000, "test": 10_000}
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.mean[0] == pytest.approx(0.2860, abs=5e-5)
    assert info.std[0] == pytest.approx(0.3530, abs=5e-5)
    train = sources.resolve_source(cfg).load("train")
    assert np.bincount(train.labels).tolist() == [6000] * 10


@needs_fmnist
def test_fashion_mnist_eval_counts_each_example_once_one_device(tmp_path):
    import jax
    import jax.numpy as jnp

    cfg = data_config(tmp_path, normalize="none")
    test = sources.resolve_source(cfg).load("test")
    count = jax.jit(lambda m, y: (m.sum(), (m[:, None] * jax.nn.one_hot(y, 10)).sum(0)))
    total, per_class, seen = 0.0, np.zeros(10), []
    batches = list(data.create_eval_iterator(cfg, "test", global_batch_size=384))
    assert len(batches) == 27  # ceil(10,000 / 384); the last holds 16 real examples
    for b in batches:
        assert b["image"].shape == (384, 28, 28, 1)
        n, c = count(jnp.asarray(b["mask"]), jnp.asarray(b["label"]))
        total, per_class = total + float(n), per_class + np.asarray(c)
        seen.append(np.round(b["image"][b["mask"] > 0] * 255).astype(np.uint8))
    assert total == 10_000
    assert per_class.tolist() == np.bincount(test.labels, minlength=10).tolist()
    assert image_hashes(np.concatenate(seen)) == image_hashes(test.images)


_EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from cnn_jax import data
    assert jax.device_count() == 8, jax.devices()
    cfg = ml_collections.ConfigDict(json.loads(sys.argv[1]))

    @jax.jit
    def sums(batch):
        m = batch["mask"]
        return {"count": m.sum(), "per_class": (m[:, None] * jax.nn.one_hot(batch["label"], 10)).sum(0),
                "pixels": (m * batch["image"].reshape(m.shape[0], -1).sum(1)).sum()}

    def run(devices, process_index, process_count):
        mesh = Mesh(np.asarray(devices), ("data",))
        shard = NamedSharding(mesh, P("data"))
        total = None
        for b in data.create_eval_iterator(cfg, "test", global_batch_size=384,
                                           process_index=process_index, process_count=process_count):
            out = sums(jax.device_put(b, shard))
            total = out if total is None else jax.tree.map(jnp.add, total, out)
        return jax.tree.map(lambda x: np.asarray(x).tolist(), total)

    whole = run(jax.devices(), 0, 1)
    # Two simulated processes with four devices each.
    halves = [run(jax.devices()[4 * p: 4 * p + 4], p, 2) for p in range(2)]
    print(json.dumps({"whole": whole, "halves": halves}))
""")


@needs_fmnist
def test_fashion_mnist_eval_counts_each_example_once_eight_devices(tmp_path):
    cfg = data_config(tmp_path, normalize="none")
    test = sources.resolve_source(cfg).load("test")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, json.dumps(cfg.to_dict())],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    truth_classes = np.bincount(test.labels, minlength=10).tolist()
    truth_pixels = float(test.images.astype(np.float64).sum() / 255)
    whole, halves = result["whole"], result["halves"]
    assert whole["count"] == 10_000 and whole["per_class"] == truth_classes
    assert whole["pixels"] == pytest.approx(truth_pixels, rel=1e-5)
    assert halves[0]["count"] + halves[1]["count"] == 10_000
    assert (np.add(halves[0]["per_class"], halves[1]["per_class"])).tolist() == truth_classes
    assert halves[0]["pixels"] + halves[1]["pixels"] == pytest.approx(truth_pixels, rel=1e-5)
