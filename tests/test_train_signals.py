"""Preemption through launch.py: SIGKILL mid-run then the same command again gives bitwise the
parameters of an uninterrupted run; SIGTERM saves a checkpoint at the step it stopped."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import loop
from cnn_jax.train.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests/
from tests.helpers import assert_bitwise_equal, checkpoint_params  # noqa: E402

TOTAL = 40

EXPERIMENT = f'''
from tests.faults.tiny_config import tiny_mlp_config


def get_config():
    c = tiny_mlp_config(total_steps={TOTAL}, ema_decay=0.9, log_every_steps=1, eval_every_steps=20)
    c.checkpoint_every_steps = 1   # a save every step: slow enough to be killed mid-run
    return c
'''


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "tiny_signals.py"
    path.write_text(EXPERIMENT)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                CNN_JAX_CACHE=str(tmp_path_factory.mktemp("jax_cache")))


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory):
    """The uninterrupted run, in this process, from the same experiment file."""
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("tiny_signals", experiment)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.compilation_cache = False
    workdir = tmp_path_factory.mktemp("reference")
    loop.train_and_evaluate(config, str(workdir))
    return workdir


def launch(experiment, workdir, env):
    return subprocess.Popen(
        [sys.executable, "launch.py", f"--config={experiment}", f"--workdir={workdir}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(proc, workdir, at_least, timeout=300):
    """Polls until a checkpoint >= `at_least` is complete; fails if the run ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        if steps and max(steps) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def test_sigkill_then_rerun_is_bitwise_equal_to_uninterrupted(experiment, env, reference,
                                                                tmp_path):
    workdir = tmp_path / "run"
    proc = launch(experiment, workdir, env)
    wait_for_checkpoint(proc, workdir, at_least=10)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()
    killed_at = max(ckpt.checkpoint_steps(str(workdir)))
    assert killed_at < TOTAL

    proc = launch(experiment, workdir, env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "Resuming from checkpoint step" in out
    leaves, step = checkpoint_params(workdir)
    assert step == TOTAL
    assert_bitwise_equal(leaves, checkpoint_params(reference)[0])
    train_steps = [r["step"] for r in read_jsonl(str(workdir / "metrics.jsonl"))
                   if r["split"] == "train"]
    assert train_steps == list(range(1, TOTAL + 1))  # nothing duplicated, nothing missing
    assert json.loads((workdir / "results.json").read_text())["status"] == "finished"


def test_sigterm_saves_at_the_step_it_stopped(experiment, env, reference, tmp_path):
    workdir = tmp_path / "run"
    proc = launch(experiment, workdir, env)
    wait_for_checkpoint(proc, workdir, at_least=5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "Stopped by SIGTERM at step" in out
    stopped = int(out.split("Stopped by SIGTERM at step ")[1].split(":")[0])
    assert 5 <= stopped < TOTAL
    assert max(ckpt.checkpoint_steps(str(workdir))) == stopped
    preempted = json.loads((workdir / "results.json").read_text())
    assert preempted == {"status": "preempted", "step": stopped, "signal": "SIGTERM"}
    records = read_jsonl(str(workdir / "metrics.jsonl"))
    assert max(r["step"] for r in records) == stopped
