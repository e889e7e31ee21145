"""One writer per workdir and per sweep directory (cnn_jax/workdir_lock.py), and the small
reliability cases of #13 that share its tiny runs: strict JSON, the seed range, no duplicated
final records in metrics.jsonl.

The concurrency tests freeze the first process (SIGSTOP) while the second starts, so that the
second always meets a live holder, however slow the machine.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnn_jax import workdir_lock
from cnn_jax.train import checkpoint as ckpt
from cnn_jax.train import inference, loop
from cnn_jax.train import metrics as metrics_lib
from tests.faults.tiny_config import tiny_mlp_config

REPO = Path(__file__).resolve().parents[1]
TINY = "--config=tests/faults/tiny_config.py"


def _env(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               CNN_JAX_CACHE=str(tmp_path / "jax_cache"))
    env.pop("XLA_FLAGS", None)  # one CPU device per process: quicker to start
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _launch(args, tmp_path, log):
    return subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO,
                            env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)


def _wait_for_holder(directory, proc, timeout=300):
    """Waits (generously) until `proc` holds `directory`'s lock; fails if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = workdir_lock.live_holder(directory)
        if holder and holder.get("pid") == proc.pid:
            return holder
        assert proc.poll() is None, f"exited with {proc.returncode} before locking {directory}"
        time.sleep(0.05)
    raise AssertionError(f"{directory} was not locked within {timeout}s")


def _second_launch(args, tmp_path):
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def _error_lines(proc):
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]


# ----------------------------------------------------------------------------------------------
# The lock itself.



def _second_while_first_is_frozen(first_args, second_args, directory, tmp_path):
    """Starts the first launch, freezes it (SIGSTOP) once it holds `directory`'s lock, runs the
    second launch to completion, then lets the first finish; returns both processes' results."""
    with open(tmp_path / "first.log", "w") as log:
        first = _launch(first_args, tmp_path, log)
        try:
            _wait_for_holder(directory, first)
            os.kill(first.pid, signal.SIGSTOP)  # frozen while the second one starts
            try:
                second = _second_launch(second_args, tmp_path)
            finally:
                os.kill(first.pid, signal.SIGCONT)
            assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
    return first, second

def test_a_second_holder_is_refused_naming_the_first_and_the_fix(tmp_path, capsys):
    d = tmp_path / "run"
    with workdir_lock.hold(d, kind="training run") as record:
        assert record["pid"] == os.getpid() and record["host"]
        on_disk = json.loads((d / workdir_lock.LOCK_FILE).read_text())
        assert on_disk["pid"] == os.getpid() and "command" in on_disk and on_disk["started"]
        assert workdir_lock.live_holder(d)["pid"] == os.getpid()
        for check_only in (False, True):
            with pytest.raises(workdir_lock.WorkdirInUseError) as e:
                with workdir_lock.hold(d, kind="sweep", check_only=check_only):
                    pass
            msg = str(e.value)
            assert "\n" not in msg
            assert f"in use by a live training run (pid {os.getpid()} on host " in msg
            assert "started " in msg and "command: " in msg and "another --workdir" in msg
        # Process 1 of a multi-process job locks its own file: no refusal within one job.
        with workdir_lock.hold(d, index=1):
            pass
    assert workdir_lock.live_holder(d) is None
    assert not (d / workdir_lock.LOCK_FILE).exists()  # removed on release
    with workdir_lock.hold(d):
        pass
    assert "stale" not in capsys.readouterr().out


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    d = tmp_path / "run"
    code = ("import os, signal, sys\nfrom cnn_jax import workdir_lock\n"
            "with workdir_lock.hold(sys.argv[1], kind='training run'):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    dead = subprocess.run([sys.executable, "-c", code, str(d)], cwd=REPO, env=_env(tmp_path),
                          timeout=120)
    assert dead.returncode == -signal.SIGKILL
    left = json.loads((d / workdir_lock.LOCK_FILE).read_text())
    assert left["pid"] != os.getpid()
    assert workdir_lock.live_holder(d) is None  # the kernel released its flock
    with workdir_lock.hold(d, kind="training run") as record:
        assert record["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"replaced the stale lock record of a training run that is no longer running " \
           f"(pid {left['pid']} on host" in out


def test_a_start_that_fails_leaves_no_directory_behind(tmp_path):
    d = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with workdir_lock.hold(d):
            raise RuntimeError("bad config")
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "keep").write_text("x")
    with pytest.raises(RuntimeError):
        with workdir_lock.hold(d):
            raise RuntimeError("bad config")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["keep"]
    with pytest.raises(ValueError, match="--workdir is empty"):
        with workdir_lock.hold(""):
            pass


# ----------------------------------------------------------------------------------------------
# Two launch.py processes on one directory.


def test_a_second_run_on_a_live_workdir_is_refused_at_once_and_the_first_is_intact(tmp_path):
    run = tmp_path / "run"
    first, second = _second_while_first_is_frozen(
        [TINY, f"--workdir={run}"], [TINY, f"--workdir={run}", "--config.optim.lr=0.01"], run,
        tmp_path)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    (line,) = _error_lines(second)
    assert line.startswith("ERROR:") and f"pid {first.pid} on host" in line
    assert "in use by a live training run" in line and "another --workdir" in line
    # The first run's results, config and metrics are its own and complete.
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished" and results["step"] == 24
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.05
    records = metrics_lib.read_jsonl(str(run / metrics_lib.METRICS_FILE))
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 25))
    assert not (run / workdir_lock.LOCK_FILE).exists()


def test_a_second_sweep_on_a_live_sweep_directory_is_refused_and_the_first_finishes(tmp_path):
    root = tmp_path / "sweep"
    args = [f"{TINY}:points=alpha", f"--workdir={root}", "--sweep"]
    first, second = _second_while_first_is_frozen(args, args, root, tmp_path)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    (line,) = _error_lines(second)
    assert line.startswith("ERROR:") and f"in use by a live sweep (pid {first.pid} on host" in line
    assert json.loads((root / "alpha" / "results.json").read_text())["status"] == "finished"
    assert (root / "summary.md").is_file()
    assert "finished" not in second.stdout  # the second printed no report of its own
    assert not (root / workdir_lock.LOCK_FILE).exists()


def test_a_sweep_reports_a_point_left_running_instead_of_starting_it_again(tmp_path,
                                                                           monkeypatch, capsys):
    """A sweep driver killed with SIGKILL leaves its point running; the re-run must see it."""
    from cnn_jax import sweep

    monkeypatch.chdir(REPO)
    root = tmp_path / "sweep"
    point = root / "alpha"
    with workdir_lock.hold(point, kind="training run"):  # the orphaned point, still training
        (point / "sweep_status.json").write_text(json.dumps(
            {"status": "running", "pid": os.getpid(), "command": "launch.py ..."}))
        rc = sweep.main("tests/faults/tiny_config.py:points=alpha", str(root), parallel=1)
    out = capsys.readouterr().out
    assert rc == 1
    assert f"alpha: STILL RUNNING (pid {os.getpid()} on host" in out and "not started again" in out
    assert not (point / "sweep_log.txt").exists()  # no second process was started on it
    assert not (point / "results.json").exists()


# ----------------------------------------------------------------------------------------------
# In-process runs of the tiny MLP: evaluation beside a live run, strict JSON, metrics records.


def tiny_config(**fields):
    return tiny_mlp_config(**{"total_steps": 6, "log_every_steps": 1, "eval_every_steps": 3,
                              "checkpoint_every_steps": 3, "keep_checkpoints": 1, **fields})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lock_runs") / "run"
    loop.train_and_evaluate(tiny_config(), str(run))
    return run


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_eval_beside_a_live_run_never_advises_moving_its_checkpoints(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    for f in (run / ckpt.CHECKPOINT_SUBDIR).rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(b"\0" * f.stat().st_size)  # what a reader meets mid-replacement
    with pytest.raises(ckpt.CheckpointError, match="move that directory away"):
        loop.evaluate_checkpoint(tiny_config(), str(run))  # no live run: the usual advice
    with workdir_lock.hold(run, kind="training run"):
        with pytest.raises(ckpt.CheckpointError) as e:
            loop.evaluate_checkpoint(tiny_config(), str(run))
    assert "while a training run is live there" in str(e.value)
    assert f"pid {os.getpid()}" in str(e.value) and "Nothing was moved" in str(e.value)
    assert "move that directory away" not in str(e.value)


def _strict(path):
    def refuse(token):
        raise AssertionError(f"{path} holds {token}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_eval_writes_a_nan_loss_as_null_with_a_warning(finished_run, tmp_path, monkeypatch,
                                                      capsys):
    run = _copy(finished_run, tmp_path)
    real = inference.evaluate

    def nan_loss(*args, **kwargs):
        return dict(real(*args, **kwargs), loss=float("nan"))

    monkeypatch.setattr(inference, "evaluate", nan_loss)  # where evaluate_checkpoint looks it up
    inference.evaluate_checkpoint(tiny_config(), str(run))
    written = _strict(run / inference.EVAL_FILE)  # was: "loss": NaN
    assert written["loss"] is None and 0 <= written["top1"] <= 1
    assert "eval_metrics.json: not a finite number, written as null: loss=nan" in \
        capsys.readouterr().out


def test_json_writers_write_strict_json(tmp_path):
    ckpt.write_json(str(tmp_path / "a.json"), {"x": float("inf"), "y": [np.float32("nan"), 1.5],
                                               "n": np.int64(3), "t": (1, 2)})
    assert _strict(tmp_path / "a.json") == {"x": None, "y": [None, 1.5], "n": 3, "t": [1, 2]}
    logger = metrics_lib.MetricsLogger(str(tmp_path), enabled=True)
    logger.write({"step": 1, "split": "train", "loss": float("nan"), "per": [float("inf"), 0.5]})
    logger.close()
    (record,) = [json.loads(line, parse_constant=lambda t: 1 / 0)
                 for line in (tmp_path / metrics_lib.METRICS_FILE).read_text().splitlines()]
    assert record["loss"] == "nan" and record["per"] == ["inf", 0.5]


def test_a_seed_out_of_range_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"config\.seed=99999999999999999999 is out of range: "
                                         r"it must be in \[0, 4294967295\]"):
        loop.train_and_evaluate(tiny_config(seed=99999999999999999999), str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()  # refused before anything was written
    loop.validate_config(tiny_config(seed=2**32 - 1))  # the largest seed is accepted


def test_resuming_a_finished_run_whose_results_were_deleted_logs_each_record_once(
        finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    before = metrics_lib.read_jsonl(str(run / metrics_lib.METRICS_FILE))
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").unlink()
    again = loop.train_and_evaluate(tiny_config(), str(run))
    after = metrics_lib.read_jsonl(str(run / metrics_lib.METRICS_FILE))
    keys = [(r["step"], r["split"]) for r in after]
    assert len(keys) == len(set(keys))  # was: a second (6, 'test') record
    assert keys == [(r["step"], r["split"]) for r in before]
    assert again["final"]["test"] == results["final"]["test"]
