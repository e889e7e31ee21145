"""Two processes on localhost (jax.distributed, CPU collectives over gloo) train like one.

Each process feeds its own half of every global batch; both end with the same parameters,
equal (to float32 tolerance) to a one-process run with the same global batch, in both parallel
modes: `jit` over the global mesh and `pmap` over every process's devices. The pmap reference is
one process with two devices (pmap's dropout masks depend on the device index).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import loop

REPO = Path(__file__).resolve().parents[1]

EXPERIMENT = '''
from tests.faults.tiny_config import tiny_mlp_config


def get_config():
    c = tiny_mlp_config(total_steps=8, log_every_steps=2, eval_every_steps=4,
                        checkpoint_every_steps=4)
    c.eval_batch_size = 10   # the 24 test examples = 10 + 10 + 4 padded: every one counts once
    return c
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_config(path):
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("tiny_multihost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module", params=["jit", "pmap"])
def runs(request, tmp_path_factory):
    mode = request.param
    root = tmp_path_factory.mktemp(f"multihost_{mode}")
    experiment = root / "tiny_multihost.py"
    experiment.write_text(EXPERIMENT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               CNN_JAX_CACHE=str(root / "jax_cache"))
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    port = free_port()
    args = [sys.executable, "launch.py", f"--config={experiment}", f"--config.parallel={mode}"]
    procs = [subprocess.Popen(
        args + [f"--workdir={root / 'two'}", "--multihost",
                f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]

    if mode == "jit":
        config = load_config(experiment)
        config.compilation_cache = False
        loop.train_and_evaluate(config, str(root / "one"))
    else:  # one process with the same two devices
        one = subprocess.run(
            args + [f"--workdir={root / 'one'}"], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=600,
            env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
        assert one.returncode == 0, one.stdout[-4000:]
    return root, outs


def crc_line(out, i):
    lines = [l for l in out.splitlines() if l.startswith(f"[process {i}] final params crc32")]
    assert lines, out[-2000:]
    return lines[-1].split()[-1]


def test_both_processes_saw_two_processes(runs):
    _, outs = runs
    for i, out in enumerate(outs):
        assert f"jax.distributed: process {i}/2" in out


def test_both_processes_end_with_identical_params(runs):
    _, outs = runs
    assert crc_line(outs[0], 0) == crc_line(outs[1], 1)


def test_two_processes_equal_one_process(runs):
    root, _ = runs
    two, _, step2 = ckpt.load_latest(str(root / "two"), use_ema=False)
    one, _, step1 = ckpt.load_latest(str(root / "one"), use_ema=False)
    assert step1 == step2 == 8
    flat_two, flat_one = jax.tree.leaves(two), jax.tree.leaves(one)
    assert len(flat_two) == len(flat_one)
    for a, b in zip(flat_two, flat_one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(two) == jax.tree.structure(one)


def test_only_process_zero_writes_and_eval_counts_every_example(runs):
    root, _ = runs
    results = json.loads((root / "two" / "results.json").read_text())
    assert results["num_processes"] == 2 and results["num_devices"] == 2
    assert results["final"]["test"]["num_examples"] == 24
    reference = json.loads((root / "one" / "results.json").read_text())
    assert results["parallel"] == reference["parallel"]
    for key in ("top1", "loss"):
        assert results["final"]["test"][key] == pytest.approx(reference["final"]["test"][key],
                                                              rel=1e-5)
    evals = [json.loads(l) for l in (root / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_examples"] for r in evals if r["split"] == "test"] == [24, 24]
    lines = (root / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))  # one writer: no line twice
