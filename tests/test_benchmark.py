"""Smoke tests of the benchmark CLIs' output shape (no timing is asserted anywhere)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_jax import benchmark

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(batch=2, steps=2, warmup=0, repeats=1)


def test_run_reports_train_and_infer_keys():
    r = benchmark.run(benchmark.BenchConfig(model="lenet5", **TINY))
    for key in ("train_img_per_s", "infer_img_per_s", "first_step_s", "train_compile_s",
                "infer_compile_s", "train_cpu_ms_per_step", "backend", "jax"):
        assert key in r, key
    assert r["train_img_per_s"] > 0 and r["infer_img_per_s"] > 0
    assert r["params"] == 61_706
    assert r["input_shape"] == [28, 28, 1]
    assert r["first_loss_finite"]
    assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] > 0


@pytest.mark.parametrize("data", ["synthetic", "on_device"])
def test_scan_dispatch_overrides_and_on_device_data(data):
    r = benchmark.run(benchmark.BenchConfig(model="mlp", mode="train", steps_per_dispatch=2,
                                            image_size=8, channels=3, num_classes=7,
                                            data=data, data_examples=16,
                                            overrides=(("hidden_sizes", (16,)),), **TINY))
    assert r["steps_per_dispatch"] == 2 and r["input_shape"] == [8, 8, 3]
    assert r["num_classes"] == 7 and "infer_img_per_s" not in r
    assert r["params"] == 8 * 8 * 3 * 16 + 16 + 16 * 7 + 7
    assert r["data"] == data and r["first_loss_finite"]


@pytest.mark.parametrize("cfg, match", [
    (dict(model="lenet5", batch=0), "--batch"),
    (dict(model="lenet5", steps=3, steps_per_dispatch=2), "multiple"),
    (dict(model="lenet6"), "lenet5"),
    (dict(model="lenet5", data="on_device", data_examples=1), "data_examples"),
])
def test_bad_values_raise_clear_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        benchmark.run(benchmark.BenchConfig(**{**TINY, **cfg}))


def test_xla_flags_merge_keeps_user_setting(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    merged = benchmark.apply_xla_flags("auto --xla_cpu_enable_fast_math=false")
    assert merged.split() == ["--xla_cpu_experimental_ynn_fusion_type=",
                              "--xla_cpu_enable_fast_math=false"]
    assert benchmark.parse_overrides(["a=1", "b=0.5", "c=true", "d=x", "e=(1, 2)"]) == (
        ("a", 1), ("b", 0.5), ("c", True), ("d", "x"), ("e", (1, 2)))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        benchmark.parse_overrides(["oops"])


def test_cli_prints_one_json_object():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("CNN_JAX_GC", None)
    out = subprocess.run(
        [sys.executable, "-m", "cnn_jax.benchmark", "--model=mlp", "--batch=2", "--steps=1",
         "--repeats=1", "--warmup=0", "--mode=infer", "--set=hidden_sizes=(16,)", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout)
    assert result["model"] == "mlp" and result["infer_img_per_s"] > 0
    assert result["overrides"] == {"hidden_sizes": [16]}
    assert "train_img_per_s" not in result
    assert benchmark.RECOMMENDED_CPU_XLA_FLAGS in result["xla_flags"]
    assert result["python_gc_settled"] is True  # settled after its imports (cnn_jax.python_gc)


def test_torch_baseline_json_shape():
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import torch_baseline
    finally:
        sys.path.pop(0)
    for name, params in (("lenet5", 61_706), ("resnet20", 269_722)):
        args = torch_baseline.parse_args([f"--model={name}", "--batch=2", "--steps=1",
                                          "--repeats=1", "--warmup=0"])
        r = torch_baseline.run(args)
        assert r["params"] == params
        assert r["train_img_per_s"] > 0 and r["infer_img_per_s"] > 0 and r["first_loss_finite"]
    with pytest.raises(ValueError, match="lenet5"):
        torch_baseline.run(torch_baseline.parse_args(["--model=lenet4"]))
