"""The training loop end to end, in process: outputs, exact resume, evaluation, bad input.

Tiny MLP (with BN, dropout and an EMA, so every part of the state matters) on synthetic data.
"""

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import loop, steps
from cnn_jax.train.metrics import read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: experiments/
from tests.faults.tiny_config import tiny_mlp_config  # noqa: E402
from tests.helpers import assert_bitwise_equal, checkpoint_params  # noqa: E402

STEPS = 12  # 6 steps per epoch: 96 training examples, batch 16


def tiny_config(**fields):
    return tiny_mlp_config(**{
        "total_steps": STEPS, "log_every_steps": 3, "eval_every_steps": 6,
        "checkpoint_every_steps": 6, "ema_decay": 0.9, "optim.lr": 0.05,
        "async_checkpoints": True, "compilation_cache": False, **fields})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run that several tests compare against."""
    workdir = tmp_path_factory.mktemp("reference")
    results = loop.train_and_evaluate(tiny_config(), str(workdir))
    return workdir, results


def test_outputs_of_a_run(reference):
    workdir, results = reference
    for name in ("config.json", "metrics.jsonl", "results.json"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert ckpt.checkpoint_steps(str(workdir)) == [6, 12]
    assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "mlp"

    records = read_jsonl(str(workdir / "metrics.jsonl"))
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [3, 6, 9, 12]
    for r in train:
        assert {"step", "epoch", "split", "loss", "top1", "top5", "lr", "img_per_s",
                "wall_time", "grad_norm"} <= set(r)
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    assert train[-1]["epoch"] == pytest.approx(2.0)
    test = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in test] == [6, 12]
    assert all(r["num_examples"] == 24 for r in test)

    saved = json.loads((workdir / "results.json").read_text())
    assert saved["status"] == "finished" and saved["step"] == STEPS
    assert saved["final"]["test"]["num_examples"] == 24
    assert saved["final"]["test"]["top1"] == pytest.approx(test[-1]["top1"])
    assert saved["final"]["train"]["loss"] == pytest.approx(train[-1]["loss"])
    assert saved["params"] == sum(np.size(x) for x in checkpoint_params(workdir)[0]) - 2 * 16
    assert saved["config"]["batch_size"] == 16 and saved["wall_time_s"] > 0
    assert results["final"] == saved["final"]


def test_same_seed_same_bits_and_crash_resume_is_exact(reference, tmp_path):
    ref_dir, _ = reference
    run = tmp_path / "run"
    loop.train_and_evaluate(tiny_config(), str(run))
    assert_bitwise_equal(checkpoint_params(run)[0], checkpoint_params(ref_dir)[0])

    # A crash after step 9 was logged but before checkpoint 12 was written.
    shutil.rmtree(run / "checkpoints" / "12")
    (run / "results.json").unlink()
    loop.train_and_evaluate(tiny_config(), str(run))
    leaves, step = checkpoint_params(run)
    assert step == STEPS
    assert_bitwise_equal(leaves, checkpoint_params(ref_dir)[0])
    steps = [(r["split"], r["step"]) for r in read_jsonl(str(run / "metrics.jsonl"))]
    assert steps == [(r["split"], r["step"]) for r in read_jsonl(str(ref_dir / "metrics.jsonl"))]

    # Re-running a finished run does no work and reports the same results.
    again = loop.train_and_evaluate(tiny_config(), str(run))
    assert again["status"] == "finished" and again["step"] == STEPS


def test_eval_mode_counts_every_example_once(reference):
    workdir, _ = reference
    out = loop.evaluate_checkpoint(tiny_config(eval_batch_size=10), str(workdir))  # 24 = 10+10+4
    saved = json.loads((workdir / "eval_metrics.json").read_text())
    assert saved["num_examples"] == out["num_examples"] == 24
    assert {"top1", "top5", "loss"} <= set(saved) and 0 <= saved["top1"] <= saved["top5"] <= 1
    final = json.loads((workdir / "results.json").read_text())["final"]["test"]
    assert saved["top1"] == pytest.approx(final["top1"])
    assert saved["loss"] == pytest.approx(final["loss"], rel=1e-5)


def test_predict_prints_top5_with_probabilities(reference, tmp_path, capsys):
    from PIL import Image
    workdir, _ = reference
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (9, 7, 3), np.uint8)).save(path)
        paths.append(str(path))
    out = loop.predict(tiny_config(), str(workdir), paths)
    assert [o["image"] for o in out] == paths
    for o in out:
        probs = [t["prob"] for t in o["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # 5 classes: top-5 is everything
        assert all(t["class"].startswith("class_") for t in o["top"])
    printed = capsys.readouterr().out
    assert "img0.png" in printed and "%" in printed
    with pytest.raises(FileNotFoundError, match="missing.png"):
        loop.predict(tiny_config(), str(workdir), [str(tmp_path / "missing.png")])


def test_changed_config_is_refused_unless_forced(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    with pytest.raises(ckpt.CheckpointError) as e:
        loop.train_and_evaluate(tiny_config(**{"optim.lr": 0.5, "model.hidden_sizes": (8,)}),
                                str(run))
    assert "optim.lr" in str(e.value) and "model.hidden_sizes" in str(e.value)
    assert "--force" in str(e.value)
    # Fields that only drive the run (cadence, length) may change; the run continues.
    results = loop.train_and_evaluate(tiny_config(**{"optim.lr": 0.5, "total_steps": 15}),
                                      str(run), force=True)
    assert results["step"] == 15
    assert "optim.lr" in capsys.readouterr().out
    # A model change cannot be forced into the old arrays: a clear error, not a crash.
    with pytest.raises(ValueError, match="does not fit"):
        loop.train_and_evaluate(tiny_config(**{"model.hidden_sizes": (8,), "total_steps": 18}),
                                str(run), force=True)


def test_changed_run_length_or_parallel_is_refused_and_extend_is_explicit(reference, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for field, value in [("total_steps", 15), ("num_epochs", 3), ("parallel", "pmap"),
                         ("data.shuffle_buffer", 7), ("seed", 1), ("batch_size", 8)]:
        with pytest.raises(ckpt.CheckpointError) as e:
            loop.train_and_evaluate(tiny_config(**{field: value}), str(run))
        assert f"  {field}: stored " in str(e.value) and "--force" in str(e.value)
    assert "--extend" in str(_refusal(run, total_steps=15))
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written
    # Shorter than the checkpoint's step: refused even with --force.
    with pytest.raises(ckpt.CheckpointError, match="past this config's run length of 6"):
        loop.train_and_evaluate(tiny_config(total_steps=6), str(run), force=True)
    # --extend: a longer run from the finished one; its results are kept beside.
    results = loop.train_and_evaluate(tiny_config(total_steps=15), str(run), extend=True)
    assert results["status"] == "finished" and results["step"] == results["total_steps"] == 15
    assert "--extend: continuing from step 12 to 15 steps" in capsys.readouterr().out
    assert json.loads((run / "results_step12.json").read_text())["step"] == STEPS
    # --extend lets only the length change.
    with pytest.raises(ckpt.CheckpointError, match="optim.lr"):
        loop.train_and_evaluate(tiny_config(total_steps=18, **{"optim.lr": 0.1}), str(run),
                                extend=True)


def _refusal(run, **fields):
    with pytest.raises(ckpt.CheckpointError) as e:
        loop.train_and_evaluate(tiny_config(**fields), str(run))
    return e.value


def _write_image_tree(root, counts, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for c in range(5):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            start = len(list(d.iterdir()))
            for i in range(start, start + n):
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8)).save(d / f"{i:03d}.png")


def test_changed_image_folder_is_refused_unless_forced(tmp_path, capsys):
    tree = tmp_path / "tree"
    _write_image_tree(tree, {"train": 8, "test": 2})
    config = tiny_config(total_steps=4, checkpoint_every_steps=2, eval_every_steps=2, **{
        "data.name": "image_folder", "data.path": str(tree),
        "data.cache_dir": str(tmp_path / "cache")})
    run = tmp_path / "run"
    loop.train_and_evaluate(config, str(run))
    _write_image_tree(tree, {"train": 4}, seed=1)  # 20 more training images
    with pytest.raises(ckpt.CheckpointError) as e:
        loop.train_and_evaluate(config, str(run))
    msg = str(e.value)
    assert "training data fingerprint: stored " in msg and "--force" in msg
    assert "training data num_train_examples: stored 40 -> new 60" in msg
    shutil.rmtree(run / "checkpoints" / "4")  # as if stopped after step 2
    (run / "results.json").unlink()
    results = loop.train_and_evaluate(config, str(run), force=True)
    assert results["status"] == "finished" and results["step"] == 4
    out = capsys.readouterr().out
    assert "WARNING: --force: resuming step 2" in out and "Resuming from checkpoint step 2" in out


def test_zero_weight_examples_do_not_move_the_step():
    """A training row of weight 0 (an image that failed to decode) counts in neither the loss,
    the gradient nor the metrics: whatever it holds, the step is the same (no BN, no dropout:
    nothing else sees the row)."""
    setup = loop.Setup(tiny_config(**{"model.norm": "none", "model.dropout": 0.0}))
    state = jax.jit(setup.init_fn)()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 6, 6, 3)).astype(np.float32)
    label = rng.integers(0, 5, 16).astype(np.int32)
    weight = np.ones(16, np.float32)
    weight[3] = 0.0
    step = jax.jit(functools.partial(steps.train_step, cfg=setup.step_cfg))
    outs = []
    for fill in (0.0, 1e3):
        image[3] = fill
        outs.append(step(state, {"image": image, "label": label, "weight": weight}))
    kept = {"image": np.delete(image, 3, 0), "label": np.delete(label, 3)}
    outs.append(step(state, kept))  # the same step without the row
    (a, ma), (b, mb), (c, mc) = outs
    for x, y, z in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params),
                       jax.tree.leaves(c.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(x, z, rtol=1e-5, atol=1e-6)
    for key in ("loss", "top1", "top5"):
        assert float(ma[key]) == pytest.approx(float(mb[key])) == pytest.approx(float(mc[key]))


def test_streamed_folder_with_an_undecodable_image_trains_and_resumes_exactly(tmp_path):
    tree = tmp_path / "tree"
    _write_image_tree(tree, {"train": 8, "test": 2})
    for bad in (tree / "train" / "class_1" / "003.png", tree / "test" / "class_0" / "001.png"):
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # the header still parses
    config = tiny_config(total_steps=6, batch_size=8, checkpoint_every_steps=3,
                         eval_every_steps=6, **{  # epoch 1 (steps 0-4) visits every image
                             "data.name": "image_folder", "data.path": str(tree),
                             "data.image_size": 6, "data.cache_dir": str(tmp_path / "cache")})
    full, run = tmp_path / "full", tmp_path / "run"
    def warned(record):
        messages = [str(w.message) for w in record]
        assert any("failed to decode in the batch of step 4" in m for m in messages), messages
        assert any("of split 'test'" in m and "not scored" in m for m in messages), messages

    with pytest.warns(UserWarning) as record:
        results = loop.train_and_evaluate(config, str(full))
    warned(record)
    assert results["status"] == "finished" and np.isfinite(results["final"]["train"]["loss"])
    assert results["final"]["test"]["num_examples"] == 9  # of 10: one does not decode
    with pytest.warns(UserWarning, match="failed to decode: not scored"):
        out = loop.evaluate_checkpoint(config, str(full))
    assert out["num_examples"] == 9 and out["num_undecodable"] == 1
    with pytest.warns(UserWarning) as record:
        loop.train_and_evaluate(config, str(run))
    warned(record)
    shutil.rmtree(run / "checkpoints" / "6")
    (run / "results.json").unlink()
    with pytest.warns(UserWarning) as record:
        loop.train_and_evaluate(config, str(run))  # resumes at step 3: the same batches follow
    warned(record)
    assert_bitwise_equal(checkpoint_params(run)[0], checkpoint_params(full)[0])


def _data_files(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    assert files, f"no array files under {step_dir}"
    return files


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax asyncio
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_newest_checkpoint_falls_back_with_warning(reference, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    (run / "results.json").unlink()
    for path in _data_files(run / "checkpoints" / "12"):
        data = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif damage == "flip":
            path.write_bytes(data[:-20] + bytes(b ^ 0xFF for b in data[-20:]))
        else:
            path.unlink()
    results = loop.train_and_evaluate(tiny_config(), str(run))
    out = capsys.readouterr().out
    assert "checkpoint step 12" in out and "unreadable" in out
    assert "Resuming from checkpoint step 6" in out
    assert (run / "checkpoints_corrupt" / "12").is_dir()
    assert results["step"] == STEPS
    assert_bitwise_equal(checkpoint_params(run)[0], checkpoint_params(reference[0])[0])


def test_no_readable_checkpoint_never_starts_from_scratch(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    for step in (6, 12):
        (run / "checkpoints" / str(step) / "meta" / "metadata").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="none could be read"):
        loop.train_and_evaluate(tiny_config(), str(run))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Warm-up: step 1 trains at lr 0, so its checkpoint is good; lr 1e35 at step 1 would leave
    # blown-up parameters that are (now) never checkpointed (test_divergence.py).
    config = tiny_config(**{"optim.lr": 1e35, "optim.schedule": "constant", "ema_decay": 0.0,
                            "log_every_steps": 1, "checkpoint_every_steps": 1,
                            "optim.weight_decay": 0.0, "optim.warmup_epochs": 0.5})
    with pytest.raises(loop.NonFiniteLossError) as e:
        loop.train_and_evaluate(config, str(tmp_path))
    steps = ckpt.checkpoint_steps(str(tmp_path))
    assert steps, "the good checkpoints before the blow-up are kept"
    assert f"Last good checkpoint: step {steps[-1]}" in str(e.value)
    bad_step = int(str(e.value).split(" at step ")[1].split()[0])
    assert steps[-1] < bad_step
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("field,value,expect", [
    ("model.name", "lenet", "lenet5"),
    ("data.name", "fashion_mnst", "fashion_mnist"),
    ("optim.name", "sgdd", "sgd"),
    ("parallel", "pmapp", "pmap"),
])
def test_unknown_names_list_the_closest_match(tmp_path, field, value, expect):
    with pytest.raises(ValueError) as e:
        loop.train_and_evaluate(tiny_config(**{field: value}), str(tmp_path))
    assert value in str(e.value) and expect in str(e.value)
    assert not ckpt.checkpoint_steps(str(tmp_path))


def test_bad_numbers_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        loop.train_and_evaluate(tiny_config(batch_size=0), str(tmp_path))
    with pytest.raises(ValueError, match="fewer than one batch"):
        loop.train_and_evaluate(tiny_config(batch_size=128), str(tmp_path))
    with pytest.raises(ValueError, match="keep_best_metric"):
        loop.train_and_evaluate(tiny_config(keep_best_metric="acc"), str(tmp_path))


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_several_steps_per_dispatch_train_like_single_steps(reference, tmp_path, parallel):
    run = tmp_path / "run"
    loop.train_and_evaluate(tiny_config(steps_per_dispatch=3, parallel=parallel), str(run))
    base = reference[0]
    if parallel == "pmap":  # per-device dropout masks differ from jit's: its own baseline
        base = tmp_path / "base"
        loop.train_and_evaluate(tiny_config(parallel=parallel), str(base))
    for a, b in zip(checkpoint_params(run)[0], checkpoint_params(base)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    steps = [(r["split"], r["step"]) for r in read_jsonl(str(run / "metrics.jsonl"))]
    assert steps == [(r["split"], r["step"]) for r in read_jsonl(str(reference[0] /
                                                                     "metrics.jsonl"))]


def test_on_device_data_trains_and_resumes_exactly(tmp_path):
    config = tiny_config(**{"data.on_device": True, "steps_per_dispatch": 2,
                            "data.flip": True, "data.crop_padding": 1})
    full, run = tmp_path / "full", tmp_path / "run"
    results = loop.train_and_evaluate(config, str(full))
    assert results["status"] == "finished" and results["final"]["test"]["num_examples"] == 24
    loop.train_and_evaluate(config, str(run))
    shutil.rmtree(run / "checkpoints" / "12")
    (run / "results.json").unlink()
    loop.train_and_evaluate(config, str(run))
    assert_bitwise_equal(checkpoint_params(run)[0], checkpoint_params(full)[0])


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state(tmp_path):
    results = loop.train_and_evaluate(tiny_config(dtype="bfloat16", total_steps=6), str(tmp_path))
    assert np.isfinite(results["final"]["train"]["loss"])
    store = ckpt.CheckpointStore(str(tmp_path), read_only=True)
    meta = store.read_meta(6)
    tree = store.read_state(6, meta, None)
    store.close()
    dtypes = {np.asarray(x).dtype for x in jax.tree.leaves((tree["params"], tree["opt_state"]))
              if np.asarray(x).dtype.kind == "f"}
    assert dtypes == {np.dtype(np.float32)}


def test_keeps_the_last_checkpoints_plus_the_best(tmp_path):
    config = tiny_config(keep_checkpoints=1, eval_every_steps=2, checkpoint_every_steps=2,
                         async_checkpoints=False, **{"optim.lr": 0.3})
    loop.train_and_evaluate(config, str(tmp_path))
    evals = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["split"] == "test"]
    best = max(evals, key=lambda r: (r["top1"], r["step"]))["step"]
    assert ckpt.checkpoint_steps(str(tmp_path)) == sorted({best, STEPS})


@pytest.mark.parametrize("field,value", [
    ("eval_batch_size", "16"), ("eval_batch_size", 7.75), ("num_epochs", None),
    ("ema_decay", "0.1x"), ("label_smoothing", 1.0), ("seed", -1), ("async_checkpoints", "no"),
])
def test_engine_fields_are_checked_with_their_name(tmp_path, field, value):
    config = tiny_config(total_steps=-1) if field == "num_epochs" else tiny_config()
    with config.ignore_type():
        config[field] = value
    with pytest.raises(ValueError, match=field):
        loop.validate_config(config)


def test_non_finite_gradient_norm_counts_as_divergence():
    """A step whose loss is finite but whose gradient norm is NaN must still stop the run."""

    class Identity:
        @staticmethod
        def fetch(m):
            return m

    window = [(1, {"loss": np.array(2.3), "top1": np.array(0.1), "top5": np.array(0.5),
                   "grad_norm": np.array(1.0), "lr": np.array(0.1)}),
              (1, {"loss": np.array(2.3), "top1": np.array(0.1), "top5": np.array(0.5),
                   "grad_norm": np.array(np.nan), "lr": np.array(0.1)})]
    _, losses = loop._mean_train_metrics(window, Identity())
    assert np.isfinite(losses[0]) and not np.isfinite(losses[1])
