"""Summary: published parameter and MAC counts, per-layer rows, CLI contract, no compilation.

Reference figures: parameter counts of torchvision's models and of He et al. 2016 (CIFAR ResNets,
Table 6 gives 0.27M/0.46M/0.66M/0.85M/1.7M/19.4M), MACs ("GFLOPS") from torchvision's model table, and
the ResNet paper's Table 1 FLOPs for v1 (stride on the first 1x1).
"""

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.monitoring
import pytest

from cnn_jax import models, summary

PARAMS = {
    ("lenet5", ()): 61_706,
    ("alexnet", ()): 62_378_344,
    ("alexnet_tv", ()): 61_100_840,
    ("vgg11", ()): 132_863_336,
    ("vgg13", ()): 133_047_848,
    ("vgg16", ()): 138_357_544,
    ("vgg19", ()): 143_667_240,
    ("vgg16_bn", ()): 138_365_992,
    ("googlenet", ()): 7_005_832,
    ("googlenet", ("torchvision_compat=True",)): 6_624_904,
    ("resnet18", ()): 11_689_512,
    ("resnet34", ()): 21_797_672,
    ("resnet50", ()): 25_557_032,
    ("resnet101", ()): 44_549_160,
    ("resnet152", ()): 60_192_808,
    ("resnet20", ()): 269_722,
    ("resnet32", ()): 464_154,
    ("resnet44", ()): 658_586,
    ("resnet56", ()): 853_018,
    ("resnet110", ()): 1_727_962,
    ("resnet1202", ()): 19_421_274,  # Table 6: 19.4M
}

# (name, --set options, published GMACs, tolerance)
MACS = [
    ("resnet18", (), 1.81, 0.01),
    ("resnet34", (), 3.66, 0.01),
    ("resnet50", (), 4.09, 0.01),
    ("resnet101", (), 7.80, 0.01),
    ("resnet152", (), 11.51, 0.01),
    ("googlenet", ("torchvision_compat=True",), 1.50, 0.01),
    ("vgg16", (), 15.47, 0.01),
    ("resnet50", ("stride_on_1x1=True",), 3.8, 0.02),
    ("resnet101", ("stride_on_1x1=True",), 7.6, 0.02),
    ("resnet152", ("stride_on_1x1=True",), 11.3, 0.02),
]


@functools.lru_cache(maxsize=None)
def cli_json(name: str, sets: tuple[str, ...] = ()) -> dict:
    """`python -m cnn_jax.summary NAME [--set ...] --json`, run in-process (cached)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = summary.main([name, *(f"--set={s}" for s in sets), "--json"])
    assert code == 0
    text = out.getvalue().strip()
    assert text.count("\n") == 0  # exactly one JSON object
    return json.loads(text)


@pytest.mark.parametrize("name,sets", list(PARAMS))
def test_published_parameter_counts(name, sets):
    result = cli_json(name, sets)
    assert result["params"] == PARAMS[(name, sets)]
    assert sum(row["params"] for row in result["layers"]) == result["params"]


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_summarises_at_its_designed_input(name):
    result = cli_json(name)
    assert result["input_shape"] == list(models.default_input_shape(name))
    assert result["output_shape"] == [1, models.default_num_classes(name)]
    assert result["params"] > 0 and result["macs"] > 0


def test_cifar_and_lenet_defaults_are_ten_classes_on_their_inputs():
    for name, shape in (("lenet5", [28, 28, 1]), ("resnet20", [32, 32, 3])):
        result = cli_json(name)
        assert result["num_classes"] == 10 and result["input_shape"] == shape
    assert cli_json("resnet50")["num_classes"] == 1000


@pytest.mark.parametrize("name,sets,gmacs,tol", MACS)
def test_published_macs(name, sets, gmacs, tol):
    result = cli_json(name, sets)
    assert result["input_shape"] == [224, 224, 3]
    assert abs(result["macs"] / 1e9 - gmacs) <= tol * gmacs, result["macs"]
    assert sum(row["macs"] for row in result["layers"]) == result["macs"]


def test_lenet5_rows_follow_the_formulas():
    rows = {r["name"]: r for r in cli_json("lenet5")["layers"]}
    conv1, conv2 = rows["conv1/conv"], rows["conv2/conv"]
    assert conv1["output_shape"] == [1, 28, 28, 6]  # pad 2 keeps 28x28
    assert conv1["params"] == 5 * 5 * 1 * 6 + 6
    assert conv1["macs"] == 28 * 28 * 6 * 5 * 5 * 1
    assert rows["pool1"]["output_shape"] == [1, 14, 14, 6] and rows["pool1"]["macs"] == 0
    assert conv2["output_shape"] == [1, 10, 10, 16]
    assert conv2["macs"] == 10 * 10 * 16 * 5 * 5 * 6
    assert [rows[f"fc{i}"]["params"] for i in (1, 2, 3)] == [400 * 120 + 120, 120 * 84 + 84,
                                                             84 * 10 + 10]
    assert rows["fc1"]["macs"] == 400 * 120


def test_batchnorm_statistics_are_not_params():
    result = cli_json("resnet20")
    bn_rows = [r for r in result["layers"] if r["type"] == "BatchNorm"]
    assert bn_rows and all(r["params"] == 2 * r["output_shape"][-1] for r in bn_rows)
    assert result["non_trainable"] == sum(r["params"] for r in bn_rows)  # mean and var


def test_depth_rows_aggregate_their_subtrees():
    model = models.build("resnet18", num_classes=1000)
    leaves = summary.summarize(model, (224, 224, 3))
    blocks = summary.summarize(model, (224, 224, 3), depth=1)
    names = [r["name"] for r in blocks["layers"]]
    assert names[:3] == ["stem", "stem_pool", "stage1_block1"] and names[-1] == "fc"
    for key in ("params", "macs"):
        assert sum(r[key] for r in blocks["layers"]) == leaves[key] == blocks[key]
    block = next(r for r in blocks["layers"] if r["name"] == "stage2_block1")
    assert block["output_shape"] == [1, 28, 28, 128]
    # conv1 3x3/2 64->128, conv2 3x3 128->128, shortcut 1x1/2 64->128, at 28x28 output
    assert block["macs"] == 28 * 28 * 128 * (9 * 64 + 9 * 128 + 64)


def test_summary_compiles_nothing():
    events = []

    def listener(event, duration, **kwargs):
        events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        result = summary.summarize(models.build("vgg19"), (224, 224, 3))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert result["params"] == 143_667_240
    assert not [e for e in events if "backend_compile" in e]


def test_set_values_are_parsed():
    assert summary.parse_sets(["a=3", "b=0.5", "c=True", "d=false", "e=group", "f=1,2,3",
                               "g=(4, 5)", "h=None", "i=[1, 2]", "j=1e-3"]) == {
        "a": 3, "b": 0.5, "c": True, "d": False, "e": "group", "f": (1, 2, 3), "g": (4, 5),
        "h": None, "i": (1, 2), "j": 1e-3}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        summary.parse_sets(["norm"])
    assert summary.parse_shape("32,32,3") == (32, 32, 3)
    with pytest.raises(ValueError, match="H,W,C"):
        summary.parse_shape("32,32")


def test_cli_options_change_the_model(capsys):
    group = cli_json("resnet20", ("norm=group", "norm_groups=8"))
    assert group["params"] == PARAMS[("resnet20", ())]  # GroupNorm: same scale+bias per channel
    assert group["non_trainable"] == 0
    assert summary.main(["resnet20", "--num_classes=100", "--input_shape=64,64,3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == PARAMS[("resnet20", ())] + 90 * 65
    assert result["macs"] == pytest.approx(4 * cli_json("resnet20")["macs"], rel=1e-3)


@pytest.mark.parametrize("argv,message", [
    (["resnt50"], "Did you mean 'resnet50'"),
    (["resnet20", "--set", "widht=3"], "Did you mean 'width"),
    (["alexnet", "--input_shape=28,28,1"], "input size 2"),
    (["lenet5", "--input_shape=28,28"], "H,W,C"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    assert summary.main(argv) == 2
    assert message in capsys.readouterr().err


def test_table_output(capsys):
    assert summary.main(["lenet5"]) == 0
    out = capsys.readouterr().out
    assert "conv1/conv" in out and "28x28x6" in out and "61,706" in out


def test_module_entry_point():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "cnn_jax.summary", "lenet5", "--json"],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    result = json.loads(proc.stdout)
    assert result["params"] == 61_706 and result["macs"] > 0 and result["layers"]
    assert math.isclose(result["macs"], sum(r["macs"] for r in result["layers"]))
