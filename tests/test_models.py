"""Every registered model trains on a small input; the registry rejects bad names and fields.

Exact parameter counts of the default architectures live in test_summary.py; here the big
families run with reduced widths (never reduced depth) so that one forward/backward of every
registered name fits the CPU budget.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models

# Every program here runs once, so compile time dominates: unoptimised XLA CPU code without the
# fusion emitters compiles several times faster (GoogLeNet: 23 s -> 11 s of CPU).
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
BATCH = 2


def small_setup(name: str) -> tuple[tuple[int, int, int], dict]:
    """(input shape, overrides) small enough for CPU. Every normalised layer keeps >= 8 values
    per channel (a BatchNorm over 2 values is constant in its input and would pass no gradient)."""
    if name in ("mlp", "lenet5"):
        return (28, 28, 1), {}
    if name == "alexnet":
        return (67, 67, 3), {"classifier_width": 64}  # smallest input its three pools allow
    if name == "alexnet_tv":
        return (63, 63, 3), {"classifier_width": 64}
    if name.startswith("vgg"):
        return (32, 32, 3), {"widths": (8, 16, 16, 32, 32), "classifier_width": 32}
    if name == "googlenet":
        return (64, 64, 3), {"aux_logits": True}
    if models.default_input_shape(name) == (32, 32, 3):  # CIFAR ResNets and plain nets
        return (16, 16, 3), {}
    if name.startswith(("resnet", "plain")):  # stages 1-3 shaped as the CIFAR nets' (shared ops)
        return (64, 64, 3), {"width": 16}
    raise AssertionError(f"no small test setup for registered model {name!r}; add one")


def _analytically_zero(name: str, path: str) -> bool:
    """Leaves whose gradient is zero by construction: a conv bias feeding a batch-statistics BN
    (vgg*_bn keep torchvision's conv bias; the BN subtracts the batch mean, so it cancels)."""
    return name.endswith("_bn") and path.endswith("conv/bias")


def host_init(model, x) -> dict:
    """Variables with the model's structure, filled on the host: He-normal kernels, unit scales
    and variances, zero biases and means (flax's own initialisers are exercised by the engine and
    test_layers; compiling them for every model would dominate this file's run time)."""
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    shapes = jax.eval_shape(functools.partial(model.init, train=True), rngs, x)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) * std).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _eval_and_grads(model, variables, x, labels):
    """Eval-mode logits, and train-mode outputs and parameter gradients of the cross-entropy."""
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    eval_out = model.apply(variables, x, train=False)

    def loss_fn(p):
        out, _ = model.apply({"params": p, **state}, x, train=True,
                             rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(optax.softmax_cross_entropy_with_integer_labels(o, labels).mean()
                   for o in outs)
        return loss, out

    grads, train_out = jax.grad(loss_fn, has_aux=True)(params)
    return eval_out, train_out, grads


def _jit(name: str) -> bool:
    """One compiled program suits networks without repeated blocks; the ResNets run op by op,
    where the primitives of repeated blocks (and of sibling models) are compiled only once."""
    return not name.startswith(("resnet", "plain"))


DEEPEST = ("resnet101", "resnet152", "plain101", "plain152", "resnet110", "plain110")
# The 1202-layer CIFAR nets are resnet110's blocks at n = 200 instead of 18 (nothing else differs);
# 600 blocks op by op would take minutes. test_summary counts their parameters (19.4M) exactly.
SAME_BLOCKS_AS_110 = ("resnet1202", "plain1202")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in DEEPEST else n
    for n in models.list_models() if n not in SAME_BLOCKS_AS_110])
def test_every_model_forward_backward(name):
    """Full depth for every name (but the 1202-layer twins of the 110s); `-m "not slow"` skips the
    six deepest (about a third of the file's time) for a quick local run."""
    shape, overrides = small_setup(name)
    num_classes = 7
    model = models.build(name, num_classes=num_classes, **overrides)
    x = np.random.default_rng(0).normal(size=(BATCH, *shape)).astype(np.float32)
    labels = np.arange(BATCH) % num_classes
    variables = host_init(model, x)
    run = functools.partial(_eval_and_grads, model)
    if _jit(name):
        run = jax.jit(run, compiler_options=FAST)
    eval_out, train_out, grads = jax.tree.map(np.asarray, run(variables, x, labels))

    assert eval_out.shape == (BATCH, num_classes) and np.isfinite(eval_out).all()
    train_outs = train_out if isinstance(train_out, tuple) else (train_out,)
    assert len(train_outs) == (3 if overrides.get("aux_logits") else 1)
    for out in train_outs:
        assert out.shape == (BATCH, num_classes) and np.isfinite(out).all()
    if "batch_stats" in variables:  # batch statistics in training, running averages in eval
        assert not np.allclose(train_outs[0], eval_out)

    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == len(jax.tree.leaves(variables["params"]))
    zero = []
    for path, g in leaves:
        key = jax.tree_util.keystr(path, simple=True, separator="/")
        assert np.isfinite(g).all(), f"{name}: non-finite gradient at {key}"
        if not np.any(g) and not _analytically_zero(name, key):
            zero.append(key)
    assert not zero, f"{name}: zero gradient for {zero}"


def test_zero_init_last_bn_zeroes_exactly_the_expected_gradients():
    # Real flax init here. A zero last-BN scale makes every residual branch output 0, so at the
    # first step nothing before that scale in the branch gets a gradient (conv1, its BN, conv2);
    # the last BN's scale and bias, the stem and the classifier still do.
    model = models.build("resnet20", num_classes=10, zero_init_last_bn=True)
    x = np.random.default_rng(1).normal(size=(BATCH, 16, 16, 3)).astype(np.float32)
    init = jax.jit(functools.partial(model.init, train=True), compiler_options=FAST)
    variables = init({"params": jax.random.key(0)}, x)
    grads = _eval_and_grads(model, variables, x, np.array([1, 2]))[2]
    zero = {jax.tree_util.keystr(p, simple=True, separator="/")
            for p, g in jax.tree_util.tree_leaves_with_path(grads) if not np.any(np.asarray(g))}
    branch = ("conv1/conv/kernel", "conv1/norm/scale", "conv1/norm/bias", "conv2/conv/kernel")
    expected = {f"stage{s}_block{b}/{leaf}" for s in (1, 2, 3) for b in (1, 2, 3)
                for leaf in branch}
    assert zero == expected
    assert not np.any(np.asarray(variables["params"]["stage2_block1"]["conv2"]["norm"]["scale"]))


def test_googlenet_without_aux_returns_only_logits_in_train_mode():
    # (With aux_logits=True the registry test above checks the (logits, aux1, aux2) triple.)
    model = models.build("googlenet", num_classes=5)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    out, variables = jax.eval_shape(functools.partial(model.init_with_output, train=True), rngs, x)
    assert out.shape == (1, 5) and not any("aux" in k for k in variables["params"])


def test_input_too_small_fails_before_compute_naming_layer_and_size():
    model = models.build("alexnet", num_classes=10)
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    with pytest.raises(ValueError) as err:
        jax.eval_shape(model.init, jax.random.key(0), x)
    msg = str(err.value)
    assert "pool2" in msg and "input size 2" in msg and "= 0 < 1" in msg, msg


def test_default_input_shapes():
    # Every model at its designed input is traced by test_summary (params of each name).
    assert models.default_input_shape("lenet5") == (28, 28, 1)
    assert models.default_input_shape("alexnet") == (227, 227, 3)
    assert models.default_input_shape("resnet50") == (224, 224, 3)
    assert models.default_input_shape("resnet20") == (32, 32, 3)
    assert models.default_num_classes("resnet20") == 10
    assert models.default_num_classes("vgg16_bn") == 1000


def test_registry_names():
    names = set(models.list_models())
    expected = {"mlp", "lenet5", "alexnet", "alexnet_tv", "googlenet"}
    expected |= {f"vgg{d}{s}" for d in (11, 13, 16, 19) for s in ("", "_bn")}
    expected |= {f"{k}{d}" for k in ("resnet", "plain") for d in (18, 34, 50, 101, 152)}
    expected |= {f"{k}{d}" for k in ("resnet", "plain") for d in (20, 32, 44, 56, 110, 1202)}
    assert names == expected


def test_unknown_name_lists_valid_names_and_closest_match():
    with pytest.raises(ValueError) as err:
        models.build("resnt50")
    msg = str(err.value)
    assert "'resnt50'" in msg and "Did you mean 'resnet50'" in msg and "vgg16_bn" in msg
    with pytest.raises(ValueError, match="Did you mean 'lenet5'"):
        models.default_input_shape("lenet")


def test_unknown_override_lists_fields():
    with pytest.raises(ValueError) as err:
        models.build("resnet18", stride_on_1x2=True)
    msg = str(err.value)
    assert "'stride_on_1x2'" in msg and "Did you mean 'stride_on_1x1'" in msg
    assert "small_stem" in msg and "bn_axis_name" in msg


@pytest.mark.parametrize("field,value", [("norm", "bn"), ("shortcut", "D")])
def test_bad_field_values_are_rejected_at_build(field, value):
    with pytest.raises(ValueError, match=f"{field}='{value}'"):
        models.build("resnet20", **{field: value})


@pytest.mark.parametrize("name,field,value,fragment", [
    ("mlp", "hidden_sizes", (0,), "integers >= 1"),
    ("mlp", "hidden_sizes", (16, -4), "integers >= 1"),
    ("mlp", "hidden_sizes", ("wide",), "integers >= 1"),
    ("mlp", "hidden_sizes", 16.5, "tuple"),
    ("mlp", "dropout", 1.0, "[0, 1)"),
    ("mlp", "dropout", -0.1, "[0, 1)"),
    ("mlp", "dropout", "fast", "[0, 1)"),
    ("mlp", "bn_momentum", float("nan"), "[0, 1]"),
    ("mlp", "bn_epsilon", 0.0, "(0, inf)"),
    ("googlenet", "aux_dropout", 1.5, "[0, 1)"),
    ("resnet20", "widths", (), "at least one entry"),
    ("resnet20", "widths", (16, 0, 64), "integers >= 1"),
    ("resnet18", "stage_sizes", (2, -1, 2, 2), "integers >= 1"),
    ("resnet18", "width", 0, "integer >= 1"),
    ("resnet18", "small_stem", "yes", "True or False"),
    ("vgg11", "classifier_width", 2.5, "integer >= 1"),
    ("alexnet", "adaptive_pool", -1, "integer >= 0"),
    ("alexnet", "conv_layers", ((64, 3, 0, 1, False),), "has stride 0"),
    ("alexnet", "conv_layers", ((64, 0, 1, 1, False),), "has kernel 0"),
    ("alexnet", "conv_layers", ((0, 3, 1, 1, False),), "has features 0"),
    ("alexnet", "conv_layers", ((8, 3, 1, -3, False),), "has padding -3"),
    ("alexnet", "conv_layers", ((8, 3),), "has 2 values instead of 5"),
    ("alexnet", "conv_layers", ((8, 3, 1, 1, "no"),), "has pool 'no'"),
    ("alexnet", "conv_layers", (), "non-empty"),
])
def test_bad_numeric_fields_are_rejected_at_build_naming_field_and_value(name, field, value,
                                                                        fragment):
    with pytest.raises(ValueError) as err:
        models.build(name, num_classes=10, **{field: value})
    msg = str(err.value)
    assert f"{field}={value!r}" in msg and fragment in msg and f"--config.model.{field}" in msg


def test_edge_values_that_are_valid_still_build():
    # An MLP without hidden layers is logistic regression; lists arrive from JSON configs.
    x = jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32)
    for name, fields in [("mlp", {"hidden_sizes": (), "dropout": 0}),
                         ("mlp", {"hidden_sizes": [4, 4], "dropout": 0.99}),
                         ("alexnet", {"conv_layers": [[4, 3, 1, 0, False]], "adaptive_pool": 0,
                                      "classifier_width": 4})]:
        model = models.build(name, num_classes=np.int64(3), **fields)
        out = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0]
        assert out.shape == (1, 3), (name, fields)


@pytest.mark.parametrize("value", [0, 2.5, "10", True])
def test_num_classes_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=f"num_classes={value!r} must be an integer >= 1"):
        models.build("mlp", num_classes=value)


@pytest.mark.parametrize("name,shape", [("mlp", (0, 4, 1)), ("lenet5", (28, 0, 1)),
                                        ("resnet20", (8, 8, 0))])
def test_empty_input_is_rejected_naming_the_shape(name, shape):
    model = models.build(name, num_classes=10)
    with pytest.raises(ValueError, match=r"input of shape \(.*\) per example is empty"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *shape),
                                                                            jnp.float32))


def test_cifar_depth_must_be_6n_plus_2():
    model = models.build("resnet20", depth=21)
    with pytest.raises(ValueError, match="depth=21 must be 6n\\+2"):
        jax.eval_shape(model.init, jax.random.key(0),
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def test_engine_style_fields_and_bfloat16():
    # The engine passes config values: lists, dtype objects or strings, bn_axis_name, norm.
    model = models.build("vgg11", num_classes=10, widths=[8, 8, 8, 8, 8], classifier_width=16,
                         dtype="bfloat16", bn_axis_name=None, norm="group", norm_groups=4)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    assert variables["params"]["conv1_1"]["norm"]["scale"].shape == (8,)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (2, 10) and out.dtype == jnp.float32


# norm="group": a group count dividing every normalised width of the small set-ups (LeNet-5: 6, 16;
# the small VGG: 8-32; ResNet-18 at width 16: 16-128; ResNet-20: 16-64; the others: >= 64).
GROUPS = {"lenet5": 2, "vgg11": 8, "resnet18": 8, "resnet20": 8}


@pytest.mark.parametrize("name", ["mlp", "lenet5", "alexnet", "vgg11", "resnet18", "resnet20"])
@pytest.mark.parametrize("norm", ["batch", "group", "layer", "none"])
def test_norm_factory_usable_by_every_net(name, norm):
    shape, overrides = small_setup(name)
    if norm == "group":
        overrides = {**overrides, "norm_groups": GROUPS.get(name, 32)}
    model = models.build(name, num_classes=4, norm=norm, **overrides)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert ("batch_stats" in variables) == (norm == "batch")
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert out.shape == (2, 4)


def test_group_norm_count_is_the_model_field_and_checked_against_every_width():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    model = models.build("resnet20", num_classes=10, norm="group", norm_groups=8)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert params["stem"]["norm"]["scale"].shape == (16,) and "batch_stats" not in params
    assert models.build("resnet20", norm="group").norm_groups == 32  # Wu & He's default
    with pytest.raises(ValueError) as err:  # 32 groups of 16 channels: refused, not 16 groups
        jax.eval_shape(models.build("resnet20", num_classes=10, norm="group").init,
                       jax.random.key(0), x)
    msg = str(err.value)
    assert "stem/norm" in msg and "16 channels" in msg and "norm_groups=32" in msg, msg
    with pytest.raises(ValueError) as err:  # 16 fits conv2's 16 channels, not conv1's 6
        jax.eval_shape(models.build("lenet5", norm="group", norm_groups=16).init,
                       jax.random.key(0), jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
    assert "conv1/norm" in str(err.value) and "6 channels" in str(err.value)
    with pytest.raises(ValueError, match=r"norm_groups=0 is not valid: it must be an integer"):
        models.build("resnet20", norm="group", norm_groups=0)


def test_small_stem_and_plain_variants():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)

    def params(name, **kw):
        v = jax.eval_shape(models.build(name, 10, **kw).init, jax.random.key(0), x)
        return v["params"]

    small = params("resnet18", small_stem=True)
    assert small["stem"]["conv"]["kernel"].shape == (3, 3, 3, 64)
    assert params("resnet18")["stem"]["conv"]["kernel"].shape == (7, 7, 3, 64)
    assert "shortcut" in params("resnet18")["stage2_block1"]
    assert "shortcut" not in params("plain18")["stage2_block1"]
    assert "shortcut" not in params("resnet20")["stage2_block1"]  # option A: parameter-free
    assert "shortcut" in params("resnet20", shortcut="B")["stage2_block1"]


CROSS_DEVICE_BN = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, __REPO__)
from cnn_jax import models

n = jax.local_device_count()
rng = np.random.default_rng(2)
# Every device's share has its own mean, so per-device statistics differ from the global ones.
x = (rng.normal(size=(n, 4, 28, 28, 1)) + np.arange(n)[:, None, None, None, None]).astype(
    np.float32)

def run(model, xs, shards):
    variables = model.init(jax.random.key(0), xs.reshape(-1, 28, 28, 1)[:1])
    def step(v, xs):
        out, upd = model.apply(v, xs, train=True, mutable=["batch_stats"])
        return out, upd["batch_stats"]
    if not shards:
        return jax.jit(step)(variables, xs.reshape(-1, 28, 28, 1))
    stacked = jax.tree.map(lambda v: np.stack([v] * n), variables)
    return jax.pmap(step, axis_name="batch")(stacked, xs)

synced = models.build("lenet5", num_classes=10, norm="batch", bn_axis_name="batch")
local = models.build("lenet5", num_classes=10, norm="batch")
out_sync, st_sync = run(synced, x, True)
out_local, st_local = run(local, x, True)
out_glob, st_glob = run(local, x, False)  # one device, the whole global batch
mean = lambda st: np.asarray(st["conv1"]["norm"]["mean"])
print("RESULT " + json.dumps({
    "devices": n,
    "sync_spread": float(np.ptp(mean(st_sync), axis=0).max()),
    "local_spread": float(np.ptp(mean(st_local), axis=0).max()),
    "sync_vs_global": float(np.abs(mean(st_sync) - mean(st_glob)[None]).max()),
    "out_sync_vs_global": float(np.abs(np.asarray(out_sync).reshape(-1, 10)
                                       - np.asarray(out_glob)).max()),
    "out_local_vs_global": float(np.abs(np.asarray(out_local).reshape(-1, 10)
                                        - np.asarray(out_glob)).max()),
    "finite": bool(np.isfinite(np.asarray(out_sync)).all())}))
"""


def test_pmap_with_cross_device_batchnorm_on_eight_devices(tmp_path):
    """pmap over 8 CPU devices (a subprocess: the device count is fixed when JAX starts). With
    bn_axis_name the statistics are those of the global batch on every device; without it each
    device normalises its own share."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c",
                           CROSS_DEVICE_BN.replace("__REPO__", repr(str(repo)))],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["devices"] == 8 and r["finite"]
    assert r["sync_spread"] < 1e-6                       # one set of statistics on all devices
    assert r["sync_vs_global"] < 1e-5                    # ... the global batch's
    assert r["out_sync_vs_global"] < 1e-4                # so the outputs are the global batch's
    assert r["local_spread"] > 0.1 and r["out_local_vs_global"] > 1e-2  # the test can fail
