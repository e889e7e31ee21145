"""Per-class accuracy, the confusion matrix, its PNG, and TensorBoard scalars and hparams.

The confusion matrix is counted on the device inside the eval step; these tests count the same
predictions with numpy (one device in process, eight CPU devices in a subprocess).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import report_confusion
from cnn_jax.train import loop, metrics, steps
from cnn_jax.train.state import create_train_state

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root: experiments/
from tests.tiny_run import config as tiny_config  # noqa: E402

CLASSES = 10


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


def numpy_confusion(logits, labels, mask, num_classes):
    counts = np.zeros((num_classes, num_classes), np.int64)
    real = np.asarray(mask) > 0
    np.add.at(counts, (np.asarray(labels)[real], np.argmax(np.asarray(logits), -1)[real]), 1)
    return counts


def test_eval_step_confusion_matches_numpy_and_skips_padding():
    model = TinyNet()
    state = create_train_state(model, optax.sgd(0.1), 0, (6, 6, 2), ema=False)
    cfg = steps.StepConfig(apply_fn=model.apply, tx=optax.sgd(0.1),
                           schedule=optax.constant_schedule(0.1), num_classes=CLASSES)
    r = np.random.default_rng(0)
    images = r.normal(size=(32, 6, 6, 2)).astype(np.float32)
    labels = r.integers(0, CLASSES, 32).astype(np.int32)
    mask = np.ones(32, np.float32)
    mask[27:] = 0
    images[27:] = np.nan  # padding may hold anything
    sums = jax.jit(lambda s, b: steps.eval_step(s, b, cfg))(
        state, {"image": images, "label": labels, "mask": mask})
    logits = model.apply({"params": state.params}, images[:27])
    want = numpy_confusion(logits, labels[:27], mask[:27], CLASSES)
    got = np.asarray(sums["confusion"])
    assert got.dtype == np.int32 and got.shape == (CLASSES, CLASSES)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(np.argmax(np.asarray(logits), -1))) > 1  # not a one-class predictor
    assert got.sum() == 27 and np.trace(got) == float(sums["top1"])


def test_per_class_from_counts():
    counts = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    out = metrics.per_class(counts)
    assert out["per_class_top1"] == [0.75, None, 0.5]  # class 1 has no example
    assert out["confusion_matrix"] == counts.tolist()


def _accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(path))
    acc.Reload()
    return acc


def _hparams(tb_root):
    from tensorboard.plugins.hparams import metadata
    content = _accumulator(tb_root).PluginTagToContent(metadata.PLUGIN_NAME)
    info = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG])
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def test_tensorboard_scalars_and_hparams_are_readable(tmp_path):
    logger = metrics.MetricsLogger(str(tmp_path), hparams={
        "seed": 3, "optim": {"lr": 0.1, "nesterov": True}, "model": {"widths": [4, 8]}})
    logger.write({"step": 1, "split": "train", "loss": 0.5, "top1": 0.25})
    logger.write({"step": 2, "split": "train", "loss": 0.25, "top1": 0.5})
    logger.write({"step": 2, "split": "test", "loss": 0.75, "note": "x"})
    logger.close()
    train = _accumulator(tmp_path / "tensorboard" / "train")
    assert [(e.step, e.value) for e in train.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    assert [e.value for e in train.Scalars("top1")] == [0.25, 0.5]
    test = _accumulator(tmp_path / "tensorboard" / "test")
    assert [e.value for e in test.Scalars("loss")] == [0.75]
    assert _hparams(tmp_path / "tensorboard") == {
        "seed": 3.0, "optim.lr": 0.1, "optim.nesterov": True, "model.widths": "[4, 8]"}


def test_local_tensorboard_files_do_not_import_tensorflow(tmp_path):
    """TensorBoard's own writer imports TensorFlow (2.4 s at every launch) when it is installed;
    the local-file writer must not, and its events must read back."""
    pytest.importorskip("tensorflow")  # without TensorFlow there is nothing to avoid
    code = (
        "import sys\n"
        "from cnn_jax.train import metrics\n"
        f"logger = metrics.MetricsLogger({str(tmp_path)!r}, hparams={{'seed': 1}})\n"
        "logger.write({'step': 1, 'split': 'train', 'loss': 0.5})\n"
        "logger.close()\n"
        "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"
    assert [e.value for e in _accumulator(tmp_path / "tensorboard" / "train").Scalars("loss")] == [0.5]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny finished run with 10 classes, evaluated again with --mode=eval."""
    workdir = tmp_path_factory.mktemp("diagnostics")
    c = tiny_config(classes=CLASSES, log_every_steps=3)  # 6 steps, evaluated at the end
    results = loop.train_and_evaluate(c, str(workdir))
    evaluated = loop.evaluate_checkpoint(c, str(workdir))
    return workdir, results, evaluated


def test_results_and_eval_metrics_hold_per_class_and_confusion(run):
    workdir, results, evaluated = run
    saved = json.loads((workdir / "results.json").read_text())["final"]["test"]
    ev = json.loads((workdir / "eval_metrics.json").read_text())
    assert ev == json.loads(json.dumps(evaluated))
    for m in (saved, ev):
        counts = np.asarray(m["confusion_matrix"])
        assert counts.shape == (CLASSES, CLASSES) and counts.sum() == m["num_examples"] == 24
        assert np.trace(counts) / 24 == pytest.approx(m["top1"])
        assert len(m["per_class_top1"]) == CLASSES
        for i, acc in enumerate(m["per_class_top1"]):
            n = counts[i].sum()
            assert acc == (pytest.approx(counts[i, i] / n) if n else None)
    assert saved["confusion_matrix"] == ev["confusion_matrix"]  # same checkpoint, same split


def test_run_tensorboard_has_scalars_and_the_config(run):
    workdir, _, _ = run
    losses = _accumulator(workdir / "tensorboard" / "train").Scalars("loss")
    assert [e.step for e in losses] == [3, 6]
    assert [e.step for e in _accumulator(workdir / "tensorboard" / "test").Scalars("top1")] == [6]
    hp = _hparams(workdir / "tensorboard")
    assert hp["model.name"] == "mlp" and hp["batch_size"] == 16.0
    assert hp["data.synthetic_num_classes"] == CLASSES


def test_the_report_draws_the_confusion_matrix(run, tmp_path):
    import shutil
    import subprocess
    import sys

    workdir, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("checkpoints*", "tensorboard"))
    (copy / "confusion_matrix.png").unlink(missing_ok=True)
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "cnn_jax.report", str(copy)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(copy / "confusion_matrix.png") in done.stdout.split()
    assert (copy / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_png_from_a_run_directory(run, tmp_path, capsys):
    workdir, _, _ = run
    out = report_confusion.plot_confusion(str(workdir))
    assert out == str(workdir / "confusion_matrix.png")
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = tmp_path / "c.png"
    assert report_confusion.main([str(workdir), "--split=test", f"--out={other}"]) == 0
    assert other.is_file()
    capsys.readouterr()
    assert report_confusion.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: no confusion matrix in ")


MULTI = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, __REPO__)
from experiments.default import get_default_config
from cnn_jax import data as data_lib
from cnn_jax.train import loop

out = {"devices": jax.device_count()}
for parallel in ("jit", "pmap"):
    c = get_default_config()  # an MLP with BN on 96 synthetic 6x6x3 images, 24 to evaluate
    c.model.name, c.model.hidden_sizes, c.model.norm = "mlp", (16,), "batch"
    c.data.name, c.data.synthetic_shape = "synthetic", (6, 6, 3)
    c.data.synthetic_num_classes, c.data.synthetic_num_examples = 12, 96
    c.batch_size, c.eval_batch_size, c.parallel = 16, 16, parallel
    c.compilation_cache = False
    setup = loop.Setup(c)
    state = setup.strategy.create_state(setup.init_fn)
    m = loop.evaluate(setup, state, "test")
    host = setup.strategy.host_state(state)
    variables = {"params": host.params, "batch_stats": host.batch_stats}
    counts = np.zeros((12, 12), np.int64)
    batches = 0
    for b in data_lib.create_eval_iterator(c.data, "test", global_batch_size=16):
        logits = np.asarray(setup.model.apply(variables, b["image"], train=False))
        real = np.asarray(b["mask"]) > 0
        np.add.at(counts, (b["label"][real], logits.argmax(-1)[real]), 1)
        batches += 1
    out[parallel] = {"got": m["confusion_matrix"], "want": counts.tolist(), "batches": batches,
                     "per_class": m["per_class_top1"], "top1": m["top1"], "n": m["num_examples"]}
print("RESULT " + json.dumps(out))
"""


def test_confusion_on_eight_devices_jit_and_pmap():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", MULTI.replace("__REPO__", repr(str(REPO)))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["devices"] == 8
    for parallel in ("jit", "pmap"):
        r = out[parallel]
        assert r["batches"] == 2  # 24 test examples: the second batch is half padding
        counts = np.asarray(r["got"])
        np.testing.assert_array_equal(counts, np.asarray(r["want"]))
        assert counts.sum() == r["n"] == 24 and len(r["per_class"]) == 12
        assert np.trace(counts) / 24 == pytest.approx(r["top1"])
        assert np.count_nonzero(counts.sum(axis=0)) > 1  # predictions spread over classes
