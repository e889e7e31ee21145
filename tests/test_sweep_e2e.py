"""Sweeps through the real engine: a runlocal sweep end to end, and kill + re-run resuming it.

Tiny on purpose (synthetic 32x32 data, MLP and LeNet-5, a few hundred steps at most), but every
point is a real `launch.py` process that trains, checkpoints and writes results.json.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnn_jax import rundir

REPO = Path(__file__).resolve().parent.parent
CONFIG = "--config=experiments/mlp_vs_cnn_cifar10.py:runlocal,data=synthetic,cnn=lenet5"
pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _launch(args):
    return [sys.executable, str(REPO / "launch.py"), *args]


def test_runlocal_sweep_runs_end_to_end_and_writes_the_report(tmp_path):
    workdir = tmp_path / "sweep"
    proc = subprocess.run(_launch([CONFIG, f"--workdir={workdir}", "--sweep",
                                   "--sweep_parallel=2"]),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for point in ("mlp", "cnn"):
        assert rundir.is_finished(workdir / point)
        config = json.loads((workdir / point / "config.json").read_text())
        assert config["model"]["name"] == ("mlp" if point == "mlp" else "lenet5")
    rows = {r["point"]: r for r in csv.DictReader(open(workdir / "summary.csv"))}
    assert set(rows) == {"mlp", "cnn"}
    for row in rows.values():
        assert row["status"] == "finished"
        assert 0.0 <= float(row["val_top1_err"]) <= 100.0
        assert 0.0 <= float(row["test_top1_err"]) <= 100.0
        assert int(row["params"]) > 0
    assert (workdir / "curves.png").stat().st_size > 1000
    md = (workdir / "summary.md").read_text()
    assert "| mlp |" in md and "| cnn |" in md and "curves.png" in md

    # Filters and feature maps of the CNN's newest checkpoint (LeNet-5: conv 6@5x5, conv 16@5x5).
    import numpy as np
    from PIL import Image

    from cnn_jax import report
    from cnn_jax.train import checkpoint

    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(image)
    variables, _, _ = checkpoint.load_latest(str(workdir / "cnn"))
    name, kernel = report.first_conv_kernel(variables["params"])
    assert name.startswith("conv1/") and kernel.shape == (5, 5, 3, 6)
    assert report.plot_filters(workdir / "cnn").stat().st_size > 1000
    acts = report.first_layer_activations(workdir / "cnn", image, num_layers=4)
    assert [(p, a.shape) for p, a in acts["layers"]] == [("conv1", (32, 32, 6)),
                                                         ("conv2", (12, 12, 16))]
    assert all(a.min() >= 0 for _, a in acts["layers"])  # after the ReLU
    assert report.plot_feature_maps(workdir / "cnn", image).stat().st_size > 1000


def _complete_checkpoints(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def test_killed_sweep_reruns_only_the_missing_points(tmp_path):
    workdir = tmp_path / "sweep"
    # Long enough (150 steps, a checkpoint every 50) to be killed between checkpoints.
    args = [CONFIG, f"--workdir={workdir}", "--sweep", "--config.total_steps=150",
            "--config.checkpoint_every_steps=50", "--config.log_every_steps=25",
            "--config.eval_every_steps=150"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_launch(args), cwd=REPO, env=_env(), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    try:
        # Kill the whole sweep (its process group: the sweep and the running point) as soon as
        # the first point has finished and the second has a checkpoint but no results.
        while time.time() < deadline and first.poll() is None:
            if rundir.is_finished(workdir / "mlp") and _complete_checkpoints(workdir / "cnn"):
                break
            time.sleep(0.02)
        assert first.poll() is None, "the sweep ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        log.close()
    assert rundir.is_finished(workdir / "mlp")
    assert not rundir.is_finished(workdir / "cnn"), "cnn finished before the kill"
    killed_at = _complete_checkpoints(workdir / "cnn")[-1]
    finished = {f: (workdir / "mlp" / f).stat().st_mtime_ns
                for f in ("results.json", "metrics.jsonl", "config.json")}

    second = subprocess.run(_launch(args), cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "mlp: already finished, skipped" in second.stdout
    assert "1 of 2 points to run" in second.stdout
    # The finished point was not touched; the killed one resumed from its checkpoint and finished.
    assert finished == {f: (workdir / "mlp" / f).stat().st_mtime_ns for f in finished}
    assert (workdir / "mlp" / rundir.LOG_FILE).read_text().count("\n=== ") == 1
    cnn_log = (workdir / "cnn" / rundir.LOG_FILE).read_text()
    assert cnn_log.count("\n=== ") == 2
    assert f"Resuming from checkpoint step {killed_at}" in cnn_log.split("\n=== ")[-1]
    assert rundir.is_finished(workdir / "cnn")
    assert json.loads((workdir / "cnn" / "results.json").read_text())["step"] == 150
    rows = {r["point"]: r for r in csv.DictReader(open(workdir / "summary.csv"))}
    assert [rows[p]["status"] for p in ("mlp", "cnn")] == ["finished", "finished"]
