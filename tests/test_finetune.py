"""Fine-tuning: `config.init_from` restores another run's matching arrays, `config.freeze` keeps
parameters fixed, and bad input ends in one error naming the path and what did not match.

A tiny MLP (fc1 -> BN norm1 -> fc2 head) on synthetic 6x6x3 images; the source run has 5
classes, the fine-tuned one 7, so the head is new.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import finetune, loop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: experiments/
from tests.helpers import assert_bitwise_equal  # noqa: E402
from tests.tiny_run import config  # noqa: E402


def flat(tree):
    return {ckpt._path_str(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 6-step run with 5 classes: (workdir, its step-6 params and batch stats)."""
    workdir = tmp_path_factory.mktemp("source")
    loop.train_and_evaluate(config(), str(workdir))
    variables, _, step = ckpt.load_latest(str(workdir), use_ema=False)
    assert step == 6
    return workdir, flat(variables["params"]), flat(variables["batch_stats"])


def fresh_and_finetuned(c):
    setup = loop.Setup(c)
    state = setup.strategy.create_state(setup.init_fn)
    fresh = setup.strategy.host_state(state)
    tuned = setup.strategy.host_state(finetune.init_from_checkpoint(setup, state))
    return fresh, tuned


def test_new_head_is_fresh_and_the_rest_equals_the_source_bitwise(source, capsys):
    workdir, params, stats = source
    fresh, tuned = fresh_and_finetuned(config(classes=7, init_from=str(workdir)))
    got, got_stats, init = flat(tuned.params), flat(tuned.batch_stats), flat(fresh.params)
    for key in ("fc1/kernel", "norm1/scale", "norm1/bias"):
        np.testing.assert_array_equal(got[key], params[key])
        assert not np.array_equal(got[key], init[key])  # the test can fail
    assert_bitwise_equal([got_stats[k] for k in sorted(stats)], [stats[k] for k in sorted(stats)])
    assert got["fc2/kernel"].shape == (16, 7)
    np.testing.assert_array_equal(got["fc2/kernel"], init["fc2/kernel"])  # a fresh head
    np.testing.assert_array_equal(got["fc2/bias"], init["fc2/bias"])
    assert int(tuned.step) == 0
    out = capsys.readouterr().out
    assert f"init_from: step 6 of {workdir} (model mlp): restored 5 arrays" in out
    assert "of fc1, norm1;" in out
    assert "initialised fresh 2 arrays: params/fc2/bias (7,) (source: (5,)), " \
           "params/fc2/kernel (16, 7) (source: (16, 5))" in out


def test_a_step_suffix_picks_that_checkpoint(source):
    workdir, params, _ = source
    _, tuned = fresh_and_finetuned(config(init_from=f"{workdir}:6"))
    assert_bitwise_equal([flat(tuned.params)[k] for k in sorted(params)],
                         [params[k] for k in sorted(params)])
    with pytest.raises(FileNotFoundError, match=f"{workdir} has no checkpoint at step 3; it has "
                                                r"steps \[6\]"):
        fresh_and_finetuned(config(init_from=f"{workdir}:3"))


def test_finetuning_run_with_frozen_layers(source, tmp_path, capsys):
    """The loop starts from the source at step 0; frozen fc1 stays put, the rest moves."""
    workdir, params, _ = source
    run = tmp_path / "run"
    c = config(classes=7, init_from=str(workdir), freeze=("^fc1/",), total_steps=3,
               checkpoint_every_steps=3, log_every_steps=3, eval_every_steps=3)
    results = loop.train_and_evaluate(c, str(run))
    assert results["status"] == "finished" and results["step"] == 3
    assert "init_from: step 6 of" in capsys.readouterr().out
    variables, _, step = ckpt.load_latest(str(run), use_ema=False)
    got = flat(variables["params"])
    assert step == 3
    np.testing.assert_array_equal(got["fc1/kernel"], params["fc1/kernel"])  # frozen
    assert not np.array_equal(got["norm1/scale"], params["norm1/scale"])  # trained
    assert got["fc2/kernel"].shape == (16, 7)
    # Resuming the fine-tuned run reads its own checkpoint, not the source's.
    assert loop.train_and_evaluate(c, str(run))["step"] == 3


def test_frozen_params_do_not_move_while_the_others_do():
    c = config(freeze=("^fc1/", "norm1/scale"), **{"optim.name": "adamw"})
    setup = loop.Setup(c)
    state = setup.strategy.create_state(setup.init_fn)
    before = flat(setup.strategy.host_state(state).params)
    r = np.random.default_rng(0)
    for _ in range(3):
        batch = {"image": r.normal(size=(16, 6, 6, 3)).astype(np.float32),
                 "label": r.integers(0, 5, 16).astype(np.int32)}
        state, _ = setup.strategy.train(state, setup.strategy.place_batch(batch))
    after = flat(setup.strategy.host_state(state).params)
    for key in ("fc1/kernel", "norm1/scale"):
        np.testing.assert_array_equal(after[key], before[key])
    for key in ("norm1/bias", "fc2/kernel", "fc2/bias"):
        assert not np.array_equal(after[key], before[key]), key


def test_freeze_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"config.freeze pattern\(s\) '\^conv1/' match no "
                                         r"parameter of this model; its parameter paths are: "
                                         r"fc1/kernel, fc2/bias"):
        loop.Setup(config(freeze=("^fc1/", "^conv1/")))
    with pytest.raises(ValueError, match=r"config.freeze pattern '\(' is not a regular"):
        loop.Setup(config(freeze=("(",)))


def test_missing_directory_is_an_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"directory {missing} does not exist"):
        loop.train_and_evaluate(config(init_from=str(missing)), str(tmp_path / "run"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        fresh_and_finetuned(config(init_from=str(tmp_path / "empty")))


@pytest.mark.parametrize("fields", [{"hidden": (8,)},  # same layers, every shape differs
                                    {"model.name": "resnet20", "model.depth": 8,
                                     "model.widths": (4, 8, 8)}])  # another architecture
def test_a_run_of_another_architecture_is_an_error(source, fields):
    workdir = source[0]
    fields = dict(fields)
    hidden = fields.pop("hidden", (16,))
    c = config(hidden=hidden, init_from=str(workdir), **fields)
    if c.model.name != "mlp":
        del c.model.hidden_sizes
    with pytest.raises(ValueError) as e:
        fresh_and_finetuned(c)
    msg = str(e.value)
    assert msg.startswith(f"config.init_from={str(workdir)!r}: no weight of its checkpoint "
                          f"(step 6, model mlp) has the path and shape")
    assert "there fc1/kernel (108, 16), fc2/kernel (16, 5) ..." in msg and "\n" not in msg


def test_a_damaged_checkpoint_is_an_error(source, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(source[0], damaged)
    files = [p for p in (damaged / "checkpoints" / "6" / "state").rglob("*")
             if p.is_file() and "/d/" in str(p)]
    assert files
    for path in files:
        data = path.read_bytes()
        path.write_bytes(data[:-20] + bytes(b ^ 0xFF for b in data[-20:]))
    with pytest.raises(ckpt.CheckpointError) as e:
        fresh_and_finetuned(config(init_from=str(damaged)))
    msg = str(e.value)
    assert f"checkpoint step 6 in {damaged / 'checkpoints'} is damaged" in msg
    assert "\n" not in msg


def test_parse_init_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = os.getcwd()  # a relative DIR is taken from the working directory
    assert finetune.parse_init_from("runs/a/b:12") == (os.path.join(here, "runs/a/b"), 12)
    assert finetune.parse_init_from("runs/a/b") == (os.path.join(here, "runs/a/b"), None)
    assert finetune.parse_init_from("runs/a/b:x") == (os.path.join(here, "runs/a/b:x"), None)
    run = str(tmp_path / "other" / "run")
    assert finetune.parse_init_from(f"{run}:7") == (run, 7)
    assert finetune.parse_init_from(run) == (run, None)


def test_bad_init_from_on_the_command_line_is_one_error_line(tmp_path):
    """The errors above reach the user as one ERROR line (launch.py's error path)."""
    missing = tmp_path / "nowhere"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run(
        [sys.executable, "launch.py", "--config=experiments/lenet5_fashion_mnist.py:runlocal",
         "--config.data.name=synthetic", "--config.data.train_split=train",
         "--config.data.eval_split=test", f"--config.init_from={missing}:4",
         f"--workdir={tmp_path / 'run'}"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=600)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert p.stderr.startswith(f"ERROR: FileNotFoundError: config.init_from='{missing}:4': "
                               f"directory {missing} does not exist; give the --workdir of the "
                               f"run to start from")
