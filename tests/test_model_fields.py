"""Every model field takes `--config.model.FIELD=V` (issue 14 item 1): config.model is filled from
the registry's defaults before the flags apply, without changing what a run builds or breaking the
resume of a run whose config lacks them; GoogLeNet's naive Inception; CIFAR ResNet depths that
count the real layers; models registered from the user's own module."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # experiments/

from cnn_jax import models  # noqa: E402
from cnn_jax.model_config import define_config_flag, fill_model_fields  # noqa: E402
from cnn_jax.models.googlenet import INCEPTION  # noqa: E402
from cnn_jax.train import checkpoint as ckpt  # noqa: E402
from cnn_jax.train.setup import config_to_dict  # noqa: E402
from tests import tiny_run  # noqa: E402
USER_MODULE = '''
import flax.linen as nn
from cnn_jax.models.common import ModelBase
from cnn_jax.models.registry import register


@register("{name}", input_shape=(8, 8, 3), num_classes=10, width=3)
class TinyUserNet(ModelBase):
    width: int = 5
    gain: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.width, (3, 3), name="conv")(x)) * self.gain
        return nn.Dense(self.num_classes, name="fc")(x.mean(axis=(1, 2)))
'''


def parse(experiment: str, *overrides: str):
    """The config the launcher's --config flag yields for `experiment` and `overrides`."""
    argv = ["launch.py", f"--config={experiment}", *overrides]
    values = flags.FlagValues()
    define_config_flag("config", None, "experiment", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def experiment_file(tmp_path, model: str) -> str:
    path = tmp_path / f"exp_{model}.py"
    path.write_text("from experiments.default import get_default_config\n\n\n"
                    f"def get_config():\n    c = get_default_config()\n"
                    f"    c.model.name = {model!r}\n    return c\n")
    return str(path)


def changed(value):
    """A command-line value for a field, different from `value` where the type allows."""
    if isinstance(value, bool):
        return str(not value), (not value)
    if isinstance(value, int):
        return str(value + 1), value + 1
    if isinstance(value, float):
        return str(value / 2), value / 2
    if isinstance(value, tuple):
        return repr(value), value
    return value, value


@pytest.mark.parametrize("name", models.list_models())
def test_every_field_of_every_model_takes_a_flag(tmp_path, name):
    defaults = models.field_defaults(name)
    assert defaults, name
    flags_, want = [], {}
    for field, value in defaults.items():
        text, want[field] = changed(value)
        flags_.append(f"--config.model.{field}={text}")
    config = parse(experiment_file(tmp_path, name), *flags_)
    assert {k: config.model[k] for k in want} == want


@pytest.mark.parametrize("experiment,flag,field,value", [
    ("imagenet_resnet18.py:runlocal", "--config.model.width=32", "width", 32),
    ("resnet_cifar10.py:runlocal", "--config.model.widths=16,32,64,128", "widths",
     (16, 32, 64, 128)),
    ("lenet5_fashion_mnist.py:runlocal", "--config.model.norm=batch", "norm", "batch"),
])
def test_issue_examples_parse(experiment, flag, field, value):
    assert parse(str(REPO / "experiments" / experiment), flag).model[field] == value


def test_unknown_model_field_is_refused_with_the_closest_name(tmp_path):
    with pytest.raises(flags.IllegalFlagValueError, match="unknown config field 'model.widht'. "
                       "Did you mean 'width'"):
        parse(str(REPO / "experiments/imagenet_resnet18.py:runlocal"), "--config.model.widht=8")


def test_the_model_named_on_the_command_line_is_filled(tmp_path):
    config = parse(experiment_file(tmp_path, "lenet5"), "--config.model.name=mlp",
                   "--config.model.hidden_sizes=(7,)")
    assert config.model.hidden_sizes == (7,) and "pool" not in config.model  # no lenet5 field


@pytest.mark.parametrize("name", models.list_models())
def test_filled_defaults_build_the_same_model(name):
    def fields(m):
        return {f: getattr(m, f) for f in m.__dataclass_fields__ if f not in ("parent", "name")}
    assert fields(models.build(name, 10, **models.field_defaults(name))) == fields(
        models.build(name, 10))


def test_a_run_without_the_filled_fields_resumes(tmp_path):
    from cnn_jax import train
    old = tiny_run.config(total_steps=4)  # as written before config.model was filled
    assert train.train_and_evaluate(old, str(tmp_path))["status"] == "finished"
    stored = ckpt.CheckpointStore(str(tmp_path), read_only=True)
    meta = stored.read_meta(stored.steps()[-1])
    stored.close()
    assert "bn_momentum" not in meta["config"]["model"]
    new = tiny_run.config(total_steps=4)
    assert fill_model_fields(new) and new.model.bn_momentum == 0.9 and new.model.module == ""
    assert ckpt.config_differences(meta["config"], config_to_dict(new)) == []
    assert train.train_and_evaluate(new, str(tmp_path))["status"] == "finished"  # resumed
    new.model.bn_momentum = 0.8  # a filled field set to another value is a difference
    assert ckpt.config_differences(meta["config"], config_to_dict(new)) == [
        ("model.bn_momentum", "<absent>", 0.8)]


# --------------------------------------------------------------------- GoogLeNet, naive Inception

def hand_count(naive: bool, classes: int = 1000) -> int:
    """GoogLeNet's parameters counted by hand: conv kernels (no bias, BN follows) and BN's scale
    and bias per conv, Table 1's blocks, the fc; a naive block's pool branch passes its input."""
    def conv(cin, cout, k):
        return k * k * cin * cout + 2 * cout
    total = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    c = 192
    for f1, r3, f3, r5, f5, pp in INCEPTION.values():
        if naive:
            total += conv(c, f1, 1) + conv(c, f3, 3) + conv(c, f5, 5)
            c = f1 + f3 + f5 + c
        else:
            total += (conv(c, f1, 1) + conv(c, r3, 1) + conv(r3, f3, 3) + conv(c, r5, 1)
                      + conv(r5, f5, 5) + conv(c, pp, 1))
            c = f1 + f3 + f5 + pp
    return total + c * classes + classes


def param_count(**fields) -> int:
    model = models.build("googlenet", 1000, **fields)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               np.zeros((1, 224, 224, 3), np.float32)))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))


def test_naive_inception_googlenet_matches_the_hand_count():
    assert hand_count(naive=False) == 7_005_832 == param_count()  # the method, on the paper's net
    naive = param_count(inception="naive")
    assert naive == hand_count(naive=True) == 97_531_080  # 14 times the reduced net
    with pytest.raises(ValueError, match="inception='naiv' is not valid"):
        models.build("googlenet", 10, inception="naiv")


# --------------------------------------------------------------- CIFAR ResNets: the real depth

def weighted_layers(name: str, **fields) -> int:
    model = models.build(name, 10, **fields)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               np.zeros((1, 32, 32, 3), np.float32)))
    return sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(shapes["params"])
               if str(p[-1].key) == "kernel")


def test_cifar_resnet_depth_counts_the_real_layers():
    assert weighted_layers("resnet20") == 20
    assert weighted_layers("resnet20", widths=(8, 8, 16, 16), depth=26) == 26
    with pytest.raises(ValueError, match=r"depth=20 must be 8n\+2 with 4 stage.*10, 18, 26"):
        weighted_layers("resnet20", widths=(16, 32, 64, 128))
    assert models.describe("resnet20", {"depth": 26, "widths": [16, 32, 64, 128],
                                        "shortcut": "A"}) == \
        "resnet20 (depth=26, widths=(16, 32, 64, 128))"


# ------------------------------------------------------------- models from the user's own module

def test_a_model_registered_in_a_user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_t14.py").write_text(USER_MODULE.format(name="tiny_user_t14"))
    monkeypatch.syspath_prepend(str(tmp_path))
    from cnn_jax.models import registry
    # The user's entry lives in the process-wide registry: leave it as it was for later tests.
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    monkeypatch.delitem(sys.modules, "my_models_t14", raising=False)
    config = tiny_run.config()
    config.model = type(config.model)({"name": "tiny_user_t14", "module": "my_models_t14"})
    assert {"width", "gain", "norm", "bn_momentum"} <= set(fill_model_fields(config))
    assert config.model.width == 3 and config.model.gain == 1.0  # the variant's fixed width
    from cnn_jax.train.setup import build_model
    assert build_model(config, 10).width == 3
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny_user_t14", input_shape=(8, 8, 3))(type("Other", (), {}))


def test_launch_trains_a_user_model_named_on_the_command_line(tmp_path):
    (tmp_path / "my_models_t14b.py").write_text(USER_MODULE.format(name="tiny_user_t14b"))
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    experiment = tmp_path / "exp_synthetic.py"  # a LeNet-5 experiment on 8x8 synthetic images
    experiment.write_text(textwrap.dedent("""
        from experiments.default import get_default_config

        def get_config():
            c = get_default_config()
            c.data.name, c.data.synthetic_shape = "synthetic", (8, 8, 3)
            c.data.synthetic_num_examples = 64
            c.batch_size, c.total_steps, c.log_every_steps = 8, 2, 1
            c.compilation_cache, c.async_checkpoints = False, False
            return c
        """))
    p = subprocess.run(
        [sys.executable, "launch.py", f"--config={experiment}",
         "--config.model.module=my_models_t14b", "--config.model.name=tiny_user_t14b",
         "--config.model.width=4", f"--workdir={workdir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Training tiny_user_t14b (width=4) on synthetic" in p.stdout
    model = json.loads((workdir / "config.json").read_text())["model"]
    assert model["width"] == 4 and model["gain"] == 1.0 and model["module"] == "my_models_t14b"


def test_acceptance_imagenet_resnet18_width_8(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run(
        [sys.executable, "launch.py", "--config=experiments/imagenet_resnet18.py:runlocal",
         "--config.data.name=synthetic", "--config.model.width=8", "--config.total_steps=2",
         f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert json.loads((tmp_path / "config.json").read_text())["model"]["width"] == 8
