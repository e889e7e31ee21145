"""Recipes train what their docstrings say: AlexNet's input, GoogLeNet's auxiliary heads, the
1202-layer CIFAR nets, GroupNorm's group count, and float16 refused rather than half-trained."""

import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from cnn_jax import models
from cnn_jax.train import loop, steps
from cnn_jax.train.state import init_variables

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # experiments/ and tests/
from tests.faults.tiny_config import tiny_mlp_config  # noqa: E402

# Every program here runs once: unoptimised XLA CPU code compiles several times faster.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_recipe_{name}",
                                                  REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _param_count(config, num_classes, shape) -> int:
    model = loop.build_model(config, num_classes)
    params = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), shape))[0]
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("arg", [None, "data=imagenette", "data=synthetic"])
def test_imagenet_alexnet_builds_the_lecture_net_at_its_input_size(arg):
    c = _load("imagenet_alexnet").get_config(arg)
    assert c.model.name == "alexnet"
    streamed = types.SimpleNamespace(image_shape=(256, 256, 3))  # any decoded size: cropped
    shape = loop.input_shape(c, streamed) if c.data.image_size > 0 else tuple(
        c.data.synthetic_shape)
    assert shape == (227, 227, 3)
    assert _param_count(c, 1000, shape) == 62_378_344
    assert _param_count(c, 1000, (224, 224, 3)) == 50_844_008  # what 224 would have trained


def test_imagenet_googlenet_builds_and_trains_the_auxiliary_heads():
    c = _load("imagenet_googlenet").get_config("runlocal")  # 64x64 synthetic images, batch 4
    full = _load("imagenet_googlenet").get_config()
    assert full.model.aux_logits is True and full.aux_loss_weight == 0.3
    assert c.model.aux_logits is True
    setup = loop.Setup(c)
    assert setup.step_cfg.aux_loss_weight == 0.3
    state = jax.jit(setup.init_fn)()
    assert {"aux1", "aux2"} <= set(state.params)
    # Plain SGD with lr 1: the update is minus the gradient. The heads do not feed the main
    # logits, so they move only through their weighted losses.
    tx = optax.sgd(1.0)
    cfg = dataclasses.replace(setup.step_cfg, tx=tx)
    state = state.replace(opt_state=tx.init(state.params))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(4, *setup.input_shape)).astype(np.float32),
             "label": np.arange(4, dtype=np.int32)}
    new, metrics = jax.jit(lambda s, b: steps.train_step(s, b, cfg), compiler_options=FAST)(
        state, batch)
    assert np.isfinite(float(metrics["loss"]))
    for head in ("aux1", "aux2"):
        moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
                 for a, b in zip(jax.tree.leaves(new.params[head]),
                                 jax.tree.leaves(state.params[head]))]
        assert min(moved) > 0, f"{head}: a parameter got no gradient ({moved})"


@pytest.mark.parametrize("plain", [False, True])
def test_resnet_cifar10_depth_1202_builds(plain):
    arg = "depth=1202,data=synthetic" + (",plain" if plain else "")
    c = _load("resnet_cifar10").get_config(arg)
    assert c.model.name == ("plain1202" if plain else "resnet1202")
    model = loop.build_model(c, 10)  # was "unknown model 'resnet1202'"
    assert model.depth == 1202 and model.residual is not plain
    # Its parameter count (19,421,274: the paper's 19.4M) is checked by test_summary.
    with pytest.raises(ValueError, match="depth=1000: the CIFAR ResNets have depth 6n\\+2"):
        _load("resnet_cifar10").get_config("depth=1000")


@pytest.mark.parametrize("name,arg", [("ablation_norm", "norm=group,data=synthetic"),
                                      ("ablation_norm", "norm=group,residual=False,depth=32,"
                                                        "data=synthetic"),
                                      ("resnet_cifar10", "norm=group,data=synthetic")])
def test_cifar_group_norm_uses_eight_groups_of_several_channels(name, arg):
    c = _load(name).get_config(arg)
    assert (c.model.norm, c.model.norm_groups) == ("group", 8)
    model = loop.build_model(c, 10)
    params = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (32, 32, 3)))[0]
    widths = {x.shape[-1] for p, x in jax.tree_util.tree_leaves_with_path(params)
              if "norm" in jax.tree_util.keystr(p)}
    assert widths == {16, 32, 64}
    assert all(w // c.model.norm_groups >= 2 for w in widths)  # not InstanceNorm anywhere
    assert _load(name).get_config(arg + ",groups=16").model.norm_groups == 16


def test_ablation_norm_points_without_group_norm_keep_their_config():
    # Only the GroupNorm points gained a field: the other points' configs (and their resumes)
    # are unchanged.
    for norm in ("batch", "layer", "none"):
        c = _load("ablation_norm").get_config(f"norm={norm},data=synthetic")
        assert "norm_groups" not in c.model


def test_float16_is_refused_naming_the_value_and_the_fix(tmp_path):
    config = tiny_mlp_config(total_steps=2, dtype="float16")
    with pytest.raises(ValueError) as err:
        loop.validate_config(config)
    msg = str(err.value)
    assert "config.dtype='float16'" in msg and "--config.dtype=bfloat16" in msg
    assert "loss scaling" in msg and "\n" not in msg
    # Refused before the workdir is touched: a finished run in it keeps its checkpoint and result.
    workdir = tmp_path / "run"
    loop.train_and_evaluate(tiny_mlp_config(total_steps=2, compilation_cache=False,
                                            async_checkpoints=False), str(workdir))
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="float16"):
        loop.train_and_evaluate(config, str(workdir))
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == before
    assert json.loads((workdir / "results.json").read_text())["status"] == "finished"
    assert "bfloat16" in loop.DTYPES and "float16" not in loop.DTYPES
