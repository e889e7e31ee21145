"""Data parallelism on 8 CPU devices: jit (mesh), pmap with synchronised BN and one device agree.

Runs in a subprocess because the device count is fixed when JAX starts.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import functools, json, sys
import jax, numpy as np
sys.path.insert(0, __REPO__)
from experiments.default import get_default_config
from cnn_jax import data as data_lib
from cnn_jax.train import checkpoint as ckpt, loop, steps
from cnn_jax.train.state import host_tree

def config(parallel, **kw):
    c = get_default_config()
    c.model.name = "resnet20"
    c.model.depth = 8            # the ResNet-20 family at its smallest: 3 basic blocks, BN
    c.model.widths = (4, 8, 8)
    c.data.name = "synthetic"
    c.data.synthetic_shape = (8, 8, 3)
    c.data.synthetic_num_examples = 64
    c.batch_size = 16
    c.total_steps = 3
    c.parallel = parallel
    c.optim.schedule = "constant"
    c.optim.weight_decay = 1e-4
    c.compilation_cache = True   # a fresh cache: the loops below reuse the programs above
    c.update_from_flattened_dict(kw)
    return c

def batches(c, n):
    it = data_lib.create_train_iterator(c.data, global_batch_size=c.batch_size, seed=0)
    return [{k: b[k] for k in ("image", "label")} for b, _ in zip(it, range(n))]

def run(parallel, **kw):
    c = config(parallel, **kw)
    loop.configure_jax(c)
    setup = loop.Setup(c)
    s = setup.strategy
    state = s.create_state(setup.init_fn)
    losses = []
    for b in batches(c, 3):
        state, m = s.train(state, s.place_batch(b))
        losses.append(float(s.fetch(m)["loss"]))
    state = s.sync_state(state)
    return losses, s.host_state(state)

def single_device():
    c = config("jit")
    loop.configure_jax(c)
    setup = loop.Setup(c)
    state = jax.jit(setup.init_fn)()
    step = jax.jit(functools.partial(steps.train_step, cfg=setup.step_cfg))
    losses = []
    for b in batches(c, 3):
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    assert len(state.params["fc"]["kernel"].devices()) == 1
    return losses, host_tree(state)

def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

out = {"devices": jax.device_count()}
ref_losses, ref = single_device()
for name, kw in [("jit", {}), ("pmap", {"model.bn_sync": True})]:
    losses, state = run("pmap" if name == "pmap" else "jit", **kw)
    out[name] = {"losses": losses, "ref_losses": ref_losses,
                 "params": max_diff(state.params, ref.params),
                 "batch_stats": max_diff(state.batch_stats, ref.batch_stats),
                 "opt_state": max_diff(state.opt_state, ref.opt_state)}

try:
    loop.Setup(config("jit", batch_size=12))
except ValueError as e:
    out["indivisible"] = str(e)

# The whole loop under both strategies on 8 devices: evaluation counts every example once.
# pmap with per-device BN: statistics differ per device and are averaged for eval/checkpoints.
for parallel, bn_sync in (("jit", True), ("pmap", False)):
    c = config(parallel, **{"model.bn_sync": bn_sync, "eval_batch_size": 8,
                            "checkpoint_every_steps": 2, "eval_every_steps": 2})
    wd = f"{__WORKDIR__}/{parallel}"
    r = loop.train_and_evaluate(c, wd)
    e = loop.evaluate_checkpoint(c, wd)
    variables, _, _ = ckpt.load_latest(wd)
    out[f"loop_{parallel}"] = {"status": r["status"], "test_n": r["final"]["test"]["num_examples"],
                               "eval_n": e["num_examples"], "final_loss": r["final"]["train"]["loss"],
                               "eval_top1": e["top1"], "final_top1": r["final"]["test"]["top1"],
                               "params_vs_ref": max_diff(variables["params"], ref.params)}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multidevice")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               CNN_JAX_CACHE=str(tmp_path_factory.mktemp("jax_cache")))
    script = SCRIPT.replace("__REPO__", repr(str(REPO))).replace("__WORKDIR__", repr(str(workdir)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_eight_devices(result):
    assert result["devices"] == 8


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_same_loss_and_params_as_one_device(result, mode):
    r = result[mode]
    assert r["losses"] == pytest.approx(r["ref_losses"], rel=1e-5, abs=1e-6)
    assert r["params"] < 1e-5 and r["batch_stats"] < 1e-5 and r["opt_state"] < 1e-5


def test_per_device_bn_trains_differently_from_global_bn(result):
    local, glob = result["loop_pmap"], result["loop_jit"]
    assert math.isfinite(local["final_loss"])  # neither NaN nor inf
    assert local["params_vs_ref"] > 1e-6  # each device normalised with its own 2 examples
    assert glob["params_vs_ref"] < 1e-5   # the jit loop trained exactly like the reference


def test_batch_not_divisible_by_devices_is_a_clear_error(result):
    msg = result["indivisible"]
    assert "batch_size=12" in msg and "8 devices" in msg


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_loop_on_eight_devices_counts_every_example(result, mode):
    r = result[f"loop_{mode}"]
    assert r["status"] == "finished"
    assert r["test_n"] == r["eval_n"] == 16  # synthetic test split: 64 // 4
    assert r["eval_top1"] == pytest.approx(r["final_top1"])
