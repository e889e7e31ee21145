"""--mode=predict scores an image exactly as --mode=eval does (same preprocessing, flip TTA), and
eval/predict run from the workdir alone (its config.json), quietly.

A tiny MLP trained on an image tree of non-square images of three classes; three one-image
splits `probe_<class>` hold the same image under each class, so the losses of evaluating them
give evaluation's whole probability vector for that image.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_jax.train import loop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root: experiments/
from tests.tiny_run import config  # noqa: E402

CLASSES = ("a", "b", "c")


def probe_image() -> np.ndarray:
    """24x12 (tall): a crop of its central square and a stretch of the whole differ a lot."""
    x = np.zeros((24, 12, 3), np.uint8)
    x[:6], x[6:18], x[18:] = (250, 30, 30), (30, 200, 60), (20, 40, 250)
    x[6:18, :, 2] = np.arange(12, dtype=np.uint8)[None, :] * 20  # not mirror-symmetric
    return x


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(8):
            h, w = ((14, 22), (20, 11))[i % 2]
            x = rng.integers(0, 120, (h, w, 3)).astype(np.uint8)
            x[..., k] += 120  # a class is a colour
            Image.fromarray(x).save(d / f"{i}.png")
        probe = root / f"probe_{name}" / name
        probe.mkdir(parents=True)
        Image.fromarray(probe_image()).save(probe / "x.png")
    return root


def tree_config(root, data_name, tta=False, **fields):
    return config(**{"data.name": data_name, "data.path": str(root), "data.image_size": 8,
                     "data.train_split": "train", "data.eval_split": "probe_a",
                     "data.cache_dir": str(root.parent / f"{root.name}_cache"),
                     "eval_flip_tta": tta, **fields})


@pytest.fixture(scope="module", params=["image_folder", "cifar10"])
def run(request, tree, tmp_path_factory):
    """image_folder at image_size 8 is streamed (tf.data), cifar10 from a local tree is held in
    memory (decoded, cropped and resized once): both eval paths."""
    workdir = tmp_path_factory.mktemp(f"run_{request.param}")
    results = loop.train_and_evaluate(tree_config(tree, request.param), str(workdir))
    assert results["status"] == "finished"
    return request.param, workdir


def eval_probs(tree, data_name, workdir, tta):
    """Evaluation's class probabilities of the probe image: exp(-loss) of each probe split."""
    return np.array([math.exp(-loop.evaluate_checkpoint(
        tree_config(tree, data_name, tta, **{"data.eval_split": f"probe_{k}"}),
        str(workdir))["loss"]) for k in CLASSES])


def predict_probs(tree, data_name, workdir, tta):
    (out,) = loop.predict(tree_config(tree, data_name, tta), str(workdir),
                          [str(tree / "probe_a" / "a" / "x.png")])
    by_class = {t["class"]: t["prob"] for t in out["top"]}
    return np.array([by_class[k] for k in CLASSES])


def test_predict_probabilities_equal_evals_on_the_same_image(tree, run):
    data_name, workdir = run
    plain = eval_probs(tree, data_name, workdir, tta=False)
    tta = eval_probs(tree, data_name, workdir, tta=True)
    assert plain.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(plain - tta).max() > 1e-4  # TTA matters for this image: the test can fail
    np.testing.assert_allclose(predict_probs(tree, data_name, workdir, False), plain,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_probs(tree, data_name, workdir, True), tta,
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# From the workdir alone, through launch.py; quiet by default.

ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)  # an absl log record on stderr


def launch(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "launch.py", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """A finished tiny run (mlp, 5 synthetic classes; 24 test images), trained in process."""
    workdir = tmp_path_factory.mktemp("tiny")
    assert loop.train_and_evaluate(config(), str(workdir))["status"] == "finished"
    return workdir


def test_eval_from_the_workdir_alone_is_quiet_and_writes_diagnostics(tiny_workdir):
    metrics = tiny_workdir / "eval_metrics.json"
    p = launch(f"--workdir={tiny_workdir}", "--mode=eval")  # no --config: W/config.json
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (line,) = p.stdout.splitlines()  # the result line only
    assert line.startswith("Eval of step 6 on test: top-1 ")
    assert "orbax" not in p.stderr.lower() and not ABSL_LINE.search(p.stderr), p.stderr[-2000:]
    out = json.loads(metrics.read_text())
    assert (out["model"], out["num_examples"], out["step"]) == ("mlp", 24, 6)
    assert len(out["per_class_top1"]) == 5
    assert np.asarray(out["confusion_matrix"]).shape == (5, 5)
    assert np.asarray(out["confusion_matrix"]).sum() == 24
    # Overrides apply on top of config.json; --verbosity shows Orbax's records again.
    p = launch(f"--workdir={tiny_workdir}", "--mode=eval", "--config.data.eval_split=test[:10]",
               "--verbosity=0")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert json.loads(metrics.read_text())["num_examples"] == 10
    assert "checkpoint_manager.py" in p.stderr


def test_predict_from_the_workdir_alone(tiny_workdir, tmp_path):
    from PIL import Image
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 6, 3), np.uint8)).save(image)
    p = launch(f"--workdir={tiny_workdir}", "--mode=predict", f"--images={image}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (line,) = p.stdout.splitlines()
    assert line.startswith(f"{image}: class_") and line.count("%") == 5
    assert "orbax" not in p.stderr.lower() and not ABSL_LINE.search(p.stderr), p.stderr[-2000:]


def test_an_explicit_config_still_wins(tiny_workdir):
    p = launch(f"--workdir={tiny_workdir}", "--mode=eval",
               "--config=experiments/lenet5_fashion_mnist.py:runlocal",
               "--config.data.name=synthetic", "--config.data.train_split=train",
               "--config.data.eval_split=test")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "The checkpoint does not fit the configured model" in p.stderr  # lenet5, not mlp


def test_eval_without_config_json_or_checkpoints_is_one_line(tiny_workdir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for workdir, what in ((tmp_path / "nowhere", "does not exist"),
                          (empty, "holds no config.json")):
        p = launch(f"--workdir={workdir}", "--mode=eval")
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("ERROR: --mode=eval without "
                                                                 "--config reads the run's config")
        assert f"{workdir} {what}" in p.stderr and "--config=experiments/NAME.py" in p.stderr
    no_checkpoints = tmp_path / "no_checkpoints"
    no_checkpoints.mkdir()
    shutil.copy(tiny_workdir / "config.json", no_checkpoints / "config.json")
    p = launch(f"--workdir={no_checkpoints}", "--mode=eval")
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert p.stderr.startswith(f"ERROR: FileNotFoundError: No checkpoint in "
                               f"{no_checkpoints / 'checkpoints'}: nothing to evaluate yet. "
                               f"Train first")
