"""Divergence caught before it is saved (issue 13 item 2): a finite but exploded training loss or
parameter norm stops the run like a NaN, no checkpoint holding diverged parameters is kept as
good, and the advice names the checkpoint a re-run really resumes from."""

import gzip
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import divergence, loop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: experiments/
from experiments.default import get_default_config  # noqa: E402
from experiments.lenet5_fashion_mnist import get_config as lenet5_config  # noqa: E402


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """Fashion-MNIST-shaped IDX files (1024 train, 512 test): a binary pattern per class with
    10% of its pixels flipped, so LeNet-5 learns (the real files are not needed)."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    protos = (rng.random((10, 28, 28)) < 0.3) * 255
    for prefix, n in (("train", 1024), ("t10k", 512)):
        y = rng.integers(0, 10, n)
        x = np.where(rng.random((n, 28, 28)) < 0.1, 255 - protos[y], protos[y])
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


def _lenet5_sgd(idx_dir, lr, **fields):
    """The runlocal LeNet-5 with plain SGD at `lr`, no warm-up, logging every step and
    checkpointing every 2 steps (so that a checkpoint lies just before the blow-up)."""
    c = lenet5_config("runlocal")
    c.data.path = str(idx_dir)
    c.data.cache_dir = str(idx_dir / "cache")
    c.optim.name = "sgd"
    c.optim.lr = lr
    c.optim.warmup_epochs = 0.0
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.async_checkpoints = False
    c.compilation_cache = False
    c.update_from_flattened_dict(fields)
    return c


def _train_losses(workdir):
    return {r["step"]: r["loss"] for r in
            map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"}


def _good_step(message):
    m = re.search(r"Last good checkpoint: (step (\d+)|none)", message)
    assert m, message
    return int(m.group(2)) if m.group(2) else None


def test_sgd_lr3_lenet5_explodes_and_no_exploded_checkpoint_is_kept(idx_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLossError) as e:
        loop.train_and_evaluate(_lenet5_sgd(idx_dir, 3.0), str(run))
    msg = str(e.value)
    bound = 20 * 2.3  # the default factor x at least ln(10)
    assert "above the divergence bound" in msg, msg  # finite: it is the bound that stopped it
    bad = int(re.search(r" at step (\d+)", msg).group(1))
    losses = _train_losses(run)
    kept = ckpt.checkpoint_steps(str(run))
    # Every kept checkpoint's parameters scored a sane loss at the next step, and every loss
    # up to it was sane; the one whose parameters gave the exploded loss is set aside, not lost.
    assert kept and all(s < bad - 1 for s in kept), (kept, bad, msg)
    assert all(losses[t] <= bound for s in kept for t in range(1, s + 2) if t in losses)
    assert _good_step(msg) == kept[-1]
    if (bad - 1) % 2 == 0:  # a checkpoint was written at bad - 1: set aside, not deleted
        assert (run / "checkpoints_diverged" / str(bad - 1)).is_dir()
    assert not (run / "results.json").exists()
    # The advice works: a lower lr with --force resumes the good checkpoint and finishes.
    results = loop.train_and_evaluate(_lenet5_sgd(idx_dir, 0.05), str(run), force=True)
    assert results["status"] == "finished"
    assert all(v <= bound for v in _train_losses(run).values())


def test_sgd_lr1e38_never_checkpoints_the_blown_up_parameters(idx_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLossError) as e:
        loop.train_and_evaluate(_lenet5_sgd(idx_dir, 1e38, checkpoint_every_steps=1), str(run))
    msg = str(e.value)
    good = _good_step(msg)
    kept = ckpt.checkpoint_steps(str(run))
    assert good == (kept[-1] if kept else None)
    if kept:  # the parameters were around 8e36 in the "good" checkpoint before
        variables, _, _ = ckpt.load_latest(str(run), use_ema=False)
        assert divergence.global_norm(variables["params"]) < 1e3


def test_bound_tolerates_a_deep_nets_early_spike():
    """ResNet-56 at lr 0.1 goes from 2.3 to about 6 in its first steps and recovers: no alarm.
    Ten times less than the bound away, an exploded loss is caught at its step."""
    guard = divergence.Guard(get_default_config(), num_classes=10)
    assert guard.first_bad(np.array([2.30, 3.1, 6.2, 5.0, 3.4, 2.2]), 6) is None
    assert guard.loss_bound() == pytest.approx(20 * math.log(10))
    step, what = guard.first_bad(np.array([2.0, 80.0, 1e14]), 9)
    assert step == 8 and "above the divergence bound" in what
    step, what = guard.first_bad(np.array([2.0, np.nan]), 11)
    assert step == 11 and "Non-finite" in what
    # A fine-tuning run that starts at a low loss keeps ln(K) as its floor.
    low = divergence.Guard(get_default_config(), num_classes=10)
    assert low.first_bad(np.array([0.05, 0.6, 1.5]), 3) is None
    off = get_default_config()
    off.divergence_factor = 0.0
    assert divergence.Guard(off, 10).first_bad(np.array([2.3, 1e30]), 2) is None


def test_divergence_factors_are_checked_by_name(tmp_path):
    c = get_default_config()
    c.divergence_factor = -1.0
    with pytest.raises(ValueError, match="divergence_factor"):
        loop.validate_config(c)
