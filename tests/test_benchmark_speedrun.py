"""The CIFAR-10 speed-run config: valid for the registry and the engine, and its runlocal trains."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from cnn_jax import models
from cnn_jax.sweep import load_experiment

cifar10_speedrun = load_experiment(
    str(Path(__file__).resolve().parents[1] / "experiments" / "cifar10_speedrun.py"))


def _model(config):
    fields = {k: tuple(v) if isinstance(v, list) else v
              for k, v in config.model.to_dict().items() if k not in ("name", "bn_sync")}
    return models.build(config.model.name, num_classes=10, dtype=config.dtype, **fields)


@pytest.mark.parametrize("arg", [None, "dev", "runlocal", "epochs=3,batch=256,bf16=false"])
def test_config_builds_a_valid_model_and_schedule(arg):
    c = cifar10_speedrun.get_config(arg)
    assert c.data.on_device and c.data.flip and c.data.crop_padding == 4
    assert c.total_steps > 0 and c.total_steps % c.steps_per_dispatch == 0
    assert 0 <= c.label_smoothing < 1 and c.optim.lr > 0
    shapes = jax.eval_shape(lambda: _model(c).init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 32, 32, 3)), train=False))
    n = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    assert n > 0
    if arg == "runlocal":
        assert c.total_steps <= 10 and c.dtype == "float32" and n < 100_000
    elif arg is None:
        assert c.dtype == "bfloat16" and n > 1_000_000
    if arg == "epochs=3,batch=256,bf16=false":
        assert c.batch_size == 256 and c.dtype == "float32"
        assert c.total_steps == 3 * -(-c_train_examples(c) // 256)


def c_train_examples(c):
    return 50_000 if c.data.train_split == "train" else 45_000


def test_bad_args_are_clear():
    with pytest.raises(ValueError, match="epochs"):
        cifar10_speedrun.get_config("epochs=0")
    with pytest.raises(ValueError, match="runlocal"):
        cifar10_speedrun.get_config("runloacl")
    with pytest.raises(ValueError, match="smoothing=1.0"):
        cifar10_speedrun.get_config("smoothing=1.0")


@pytest.mark.slow
def test_runlocal_trains_through_the_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_JAX_CIFAR10", str(tmp_path / "no_tree"))  # synthetic images
    from cnn_jax.train import train_and_evaluate

    c = cifar10_speedrun.get_config("runlocal")
    assert c.data.name == "synthetic"
    train_and_evaluate(c, str(tmp_path / "run"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x.get("split") == "train"]
    assert train and train[-1]["step"] == c.total_steps
    assert all(jnp.isfinite(x["loss"]) for x in train)


@pytest.mark.slow
def test_speedrun_timer_runs_seeds_on_one_compilation(tmp_path, monkeypatch):
    """benchmarks/speedrun.py on the runlocal recipe: two seeds, different runs, exact eval count."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, CNN_JAX_CIFAR10=str(tmp_path / "no_tree"), JAX_PLATFORMS="cpu",
               CNN_JAX_CACHE=str(tmp_path / "jax_cache"))
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "speedrun.py"),
         "--config=" + str(root / "experiments" / "cifar10_speedrun.py") + ":runlocal",
         "--seeds=2", "--json", f"--config.data.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    runs = summary["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0]["last_loss"] != runs[1]["last_loss"]  # the seed reached the data and init
    assert all(r["train_s"] > 0 and 0 <= r["top1"] <= 1 and 0 <= r["top1_tta"] <= 1 for r in runs)
    monkeypatch.setenv("CNN_JAX_CIFAR10", str(tmp_path / "no_tree"))
    c = cifar10_speedrun.get_config("runlocal")
    assert summary["eval_examples"] > 0 and summary["eval_split"] == c.data.eval_split
    assert all(r["steps"] == c.total_steps for r in runs)
