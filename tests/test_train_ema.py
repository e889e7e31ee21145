"""The EMA of the weights: BatchNorm statistics averaged with them, both figures reported.

A tiny MLP with BatchNorm on synthetic data: the EMA weights are evaluated with the EMA of the
running statistics (not with statistics measured under the live weights), results name the
weights they score, and the EMA statistics resume bit for bit.
"""

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import loop, steps
from cnn_jax.train.metrics import read_jsonl
from cnn_jax.train.state import state_to_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests/
from tests.faults.tiny_config import tiny_mlp_config  # noqa: E402
from tests.helpers import assert_bitwise_equal  # noqa: E402

STEPS = 12


def ema_config(**fields):
    return tiny_mlp_config(**{
        "total_steps": STEPS, "log_every_steps": 3, "eval_every_steps": 6,
        "checkpoint_every_steps": 6, "ema_decay": 0.8, "optim.lr": 0.05,
        "async_checkpoints": False, "compilation_cache": False, **fields})


def full_tree(workdir) -> tuple[dict, int]:
    """The newest checkpoint's whole state tree (params, stats, optimizer, EMA) and its step."""
    store = ckpt.CheckpointStore(str(workdir), read_only=True)
    try:
        tree, _, step, _ = ckpt.newest_readable(store, None)
    finally:
        store.close()
    return tree, step


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ema")
    results = loop.train_and_evaluate(ema_config(), str(workdir))
    return workdir, results


def _eval(setup, tree, params_key, stats_key, split="test") -> dict:
    """Loss/top-1/top-5 of `split` for the tree's `params_key` weights with `stats_key` stats."""
    state = setup.state_from_tree(dict(tree))
    state = state.replace(params=getattr(state, params_key), batch_stats=getattr(state, stats_key),
                          ema_params=None, ema_batch_stats=None)
    m = loop.evaluate(setup, state, split)
    assert m["weights"] == "raw"  # a state without an EMA scores its own weights only
    return m


def test_train_step_averages_the_batch_statistics_with_the_weights(run):
    workdir, _ = run
    setup = loop.Setup(ema_config())
    state = setup.strategy.create_state(setup.init_fn)
    assert jax.tree.structure(state.ema_batch_stats) == jax.tree.structure(state.batch_stats)
    batch = {"image": np.random.default_rng(0).normal(size=(16, 6, 6, 3)).astype(np.float32),
             "label": np.arange(16, dtype=np.int32) % 5}
    new, _ = jax.jit(lambda s, b: steps.train_step(s, b, setup.step_cfg))(state, batch)
    for key in ("mean", "var"):
        got = np.asarray(new.ema_batch_stats["norm1"][key])
        want = 0.2 * np.asarray(new.batch_stats["norm1"][key]) + 0.8 * np.asarray(
            state.ema_batch_stats["norm1"][key])
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert not np.allclose(np.asarray(new.batch_stats["norm1"][key]),
                               np.asarray(state.batch_stats["norm1"][key]))  # the test can fail


def test_ema_weights_are_scored_with_ema_statistics_and_raw_figures_reported(run):
    workdir, results = run
    tree, step = full_tree(workdir)
    assert step == STEPS and set(tree) >= {"ema_params", "ema_batch_stats"}
    setup = loop.Setup(ema_config())
    ema = _eval(setup, tree, "ema_params", "ema_batch_stats")
    live = _eval(setup, tree, "params", "batch_stats")
    old_way = _eval(setup, tree, "ema_params", "batch_stats")  # what eval did before
    assert old_way["loss"] != pytest.approx(ema["loss"], rel=1e-6)  # the statistics matter here

    final = results["final"]["test"]
    assert final["weights"] == "ema"
    assert final["loss"] == pytest.approx(ema["loss"], rel=1e-5)
    assert final["top1"] == pytest.approx(ema["top1"])
    assert final["raw_loss"] == pytest.approx(live["loss"], rel=1e-5)
    assert (final["raw_top1"], final["raw_top5"]) == pytest.approx((live["top1"], live["top5"]))
    saved = json.loads((workdir / "results.json").read_text())
    scores = ("weights", "loss", "top1", "top5", "raw_loss", "raw_top1", "raw_top5")
    assert {k: saved["final"]["test"][k] for k in scores} == {k: final[k] for k in scores}

    evals = [r for r in read_jsonl(str(workdir / "metrics.jsonl")) if r["split"] == "test"]
    assert [r["step"] for r in evals] == [6, 12]
    assert all(r["weights"] == "ema" and {"raw_loss", "raw_top1", "raw_top5"} <= set(r)
               for r in evals)
    assert evals[-1]["raw_loss"] == pytest.approx(live["loss"], rel=1e-5)

    out = loop.evaluate_checkpoint(ema_config(), str(workdir))
    assert out["weights"] == "ema" and out["loss"] == pytest.approx(ema["loss"], rel=1e-5)
    assert out["raw_loss"] == pytest.approx(live["loss"], rel=1e-5)
    variables, _, _ = ckpt.load_latest(str(workdir))  # tools get the EMA weights and statistics
    assert_bitwise_equal(jax.tree.leaves(variables["batch_stats"]),
                         jax.tree.leaves(tree["ema_batch_stats"]))
    variables, _, _ = ckpt.load_latest(str(workdir), use_ema=False)
    assert_bitwise_equal(jax.tree.leaves(variables["batch_stats"]),
                         jax.tree.leaves(tree["batch_stats"]))


def test_without_ema_the_live_weights_are_scored_and_labelled(tmp_path):
    results = loop.train_and_evaluate(ema_config(ema_decay=0.0, total_steps=6), str(tmp_path))
    final = results["final"]["test"]
    assert final["weights"] == "raw" and not any(k.startswith("raw_") for k in final)
    tree, _ = full_tree(tmp_path)
    assert "ema_params" not in tree and "ema_batch_stats" not in tree


def test_resume_restores_the_ema_statistics_bitwise(run, tmp_path):
    ref_dir, _ = run
    shutil.copytree(ref_dir, tmp_path / "run")
    work = tmp_path / "run"
    shutil.rmtree(work / "checkpoints" / str(STEPS))  # killed between checkpoints 6 and 12
    (work / "results.json").unlink()
    loop.train_and_evaluate(ema_config(), str(work))
    got, ref = full_tree(work)[0], full_tree(ref_dir)[0]
    assert_bitwise_equal(jax.tree.leaves(got["ema_batch_stats"]),
                         jax.tree.leaves(ref["ema_batch_stats"]))
    assert_bitwise_equal(jax.tree.leaves(got), jax.tree.leaves(ref))


def test_a_checkpoint_from_before_the_ema_statistics_still_resumes(run, capsys):
    workdir, _ = run
    tree, _ = full_tree(workdir)
    del tree["ema_batch_stats"]  # as written before the EMA of the statistics existed
    setup = loop.Setup(ema_config())
    state = setup.state_from_tree(tree)
    assert "predates the EMA of the BatchNorm statistics" in capsys.readouterr().out
    host = state_to_tree(setup.strategy.host_state(state))
    assert_bitwise_equal(jax.tree.leaves(host["ema_batch_stats"]),
                         jax.tree.leaves(host["batch_stats"]))


def test_fine_tuning_starts_the_ema_from_the_restored_weights_and_statistics(run):
    from cnn_jax.train import finetune

    workdir, _ = run
    setup = loop.Setup(ema_config(init_from=str(workdir)))
    state = setup.strategy.create_state(setup.init_fn)
    tuned = setup.strategy.host_state(finetune.init_from_checkpoint(setup, state))
    assert_bitwise_equal(jax.tree.leaves(tuned.ema_params), jax.tree.leaves(tuned.params))
    assert_bitwise_equal(jax.tree.leaves(tuned.ema_batch_stats),
                         jax.tree.leaves(tuned.batch_stats))
    source, _ = full_tree(workdir)
    assert_bitwise_equal(jax.tree.leaves(tuned.batch_stats), jax.tree.leaves(source["batch_stats"]))
