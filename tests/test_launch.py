"""launch.py end to end (train, eval, predict on real Fashion-MNIST at runlocal size) and the
experiment files' arguments."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def run(*args, env=None, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def load_experiment(name):
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_experiment_file_lists_experiments_with_closest_match(tmp_path):
    p = run("--config=experiments/lenet5_fashion_mnst.py", f"--workdir={tmp_path}")
    assert p.returncode != 0
    assert "lenet5_fashion_mnst.py" in p.stderr and "not found" in p.stderr
    assert "Did you mean 'experiments/lenet5_fashion_mnist.py'" in p.stderr
    assert "resnet_cifar10.py" in p.stderr


@pytest.mark.parametrize("args,expect", [
    (["--config.batch_sise=16"], "unknown config field 'batch_sise'"),
    (["--config.batch_size=abc"], "--config.batch_size=abc"),
    (["--mode=bogus"], "--mode=bogus"),
])
def test_flag_errors_are_one_error_line(tmp_path, args, expect):
    p = run("--config=experiments/resnet_cifar10.py:runlocal,data=synthetic",
            f"--workdir={tmp_path}", *args)
    assert p.returncode == 1
    assert p.stderr.startswith("ERROR: ") and expect in p.stderr
    assert "Traceback" not in p.stderr


def test_bad_experiment_arg_is_one_error_line(tmp_path):
    p = run("--config=experiments/resnet_cifar10.py:depht=20", f"--workdir={tmp_path}")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "Unknown experiment arg 'depht'" in p.stderr and "depth" in p.stderr


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (dataset-fashion-mnist) missing")
def test_train_eval_predict_on_fashion_mnist(tmp_path):
    from PIL import Image
    workdir = tmp_path / "run"
    cache = {"CNN_JAX_CACHE": str(tmp_path / "jax_cache")}
    p = run("--config=experiments/lenet5_fashion_mnist.py:runlocal", f"--workdir={workdir}",
            "--config.log_every_steps=8", env=cache)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Final test top-1" in p.stdout
    config = json.loads((workdir / "config.json").read_text())
    assert config["log_every_steps"] == 8 and config["model"]["name"] == "lenet5"
    results = json.loads((workdir / "results.json").read_text())
    assert results["status"] == "finished" and results["final"]["test"]["num_examples"] == 512
    assert results["params"] == 61_706  # LeNet-5 for 10 classes
    assert list((workdir / "tensorboard").rglob("events.out.tfevents.*"))

    p = run("--config=experiments/lenet5_fashion_mnist.py:runlocal", f"--workdir={workdir}",
            "--mode=eval", "--config.data.eval_split=test[:300]", env=cache)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    metrics = json.loads((workdir / "eval_metrics.json").read_text())
    assert metrics["num_examples"] == 300 and metrics["split"] == "test[:300]"
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and metrics["loss"] > 0

    image = tmp_path / "noise.png"  # RGB, 40x30: converted to grey and resized to 28x28
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)).save(image)
    p = run("--config=experiments/lenet5_fashion_mnist.py:runlocal", f"--workdir={workdir}",
            "--mode=predict", f"--images={image}", env=cache)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    line = [l for l in p.stdout.splitlines() if l.startswith(str(image))][0]
    assert line.count("%") == 5
    class_names = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "boot")
    assert sum(name.lower() in line.lower() for name in class_names) >= 4

    p = run("--config=experiments/lenet5_fashion_mnist.py:runlocal", f"--workdir={workdir}",
            "--config.optim.name=sgdd", "--config.total_steps=20", env=cache)
    assert p.returncode == 1
    assert "Unknown optim.name 'sgdd'" in p.stderr and "Did you mean 'sgd'" in p.stderr


def test_resnet_cifar10_args():
    exp = load_experiment("resnet_cifar10")
    c = exp.get_config("depth=56,plain,norm=group")
    assert c.model.name == "plain56" and c.model.norm == "group"
    assert (c.total_steps, tuple(c.optim.milestones), c.optim.milestone_unit) == \
        (64_000, (32_000, 48_000), "steps")
    assert (c.batch_size, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == \
        (128, 0.1, 0.9, 1e-4)
    assert c.data.name == "cifar10" and c.data.crop_padding == 4 and c.data.flip
    assert c.data.val_split == "train[90%:]" and c.data.train_split == "train[:90%]"
    c = exp.get_config("depth=20,shortcut=B")
    assert c.model.name == "resnet20" and c.model.shortcut == "B"
    small = exp.get_config("runlocal,data=synthetic")
    assert small.total_steps < 100 and small.data.name == "synthetic"
    with pytest.raises(ValueError, match="6n\\+2"):
        exp.get_config("depth=21")
    with pytest.raises(ValueError, match="shortcut"):
        exp.get_config("shortcut=D")


def test_lenet5_experiment_is_the_documented_default_job():
    exp = load_experiment("lenet5_fashion_mnist")
    assert exp.__doc__.lstrip().startswith("LeNet-5 on Fashion-MNIST")
    assert "python launch.py --config=experiments/lenet5_fashion_mnist.py" in exp.__doc__
    c = exp.get_config()
    assert (c.model.name, c.data.name, c.data.eval_split) == ("lenet5", "fashion_mnist", "test")


def test_help_prints_usage_not_the_missing_config_error():
    out = subprocess.run([sys.executable, "launch.py", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "--workdir" in out.stdout + out.stderr
    assert "is required" not in out.stdout + out.stderr
