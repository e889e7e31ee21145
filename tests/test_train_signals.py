"""Preemption through launch.py: SIGKILL mid-run then the same command again gives bitwise the
parameters of an uninterrupted run; SIGTERM saves a checkpoint at the step it stopped.

No race with the run: the launched process pauses once a chosen checkpoint is complete on disk
(writing a marker file) and waits there, still inside the save, to be signalled, so a fast
machine cannot finish first. A second Ctrl-C while a checkpoint is written waits for the save.
"""

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

PAUSE_ENV = "TINY_SIGNALS_PAUSE"  # "STEP:DIR": pause after checkpoint STEP, markers in DIR
WAIT_ENV = "TINY_SIGNALS_WAIT"  # what ends the pause: "SIGTERM" (default) or e.g. "SIGINT*2"

EXPERIMENT = f'''
import os
import signal
import time

from cnn_jax.train import checkpoint as _ckpt
from tests.faults.tiny_config import tiny_mlp_config

# With {PAUSE_ENV}=STEP:DIR (set by the test for the run it interrupts, never for the reference),
# the run stops after its checkpoint STEP is complete on disk, writes DIR/paused and waits there,
# inside the save, until a SIGTERM (or the signals {WAIT_ENV} names, e.g. SIGINT*2) has reached
# the run's own handler (or a SIGKILL ends it). After the n-th signal it writes DIR/got<n>.
_pause = os.environ.get("{PAUSE_ENV}")
_wait_sig, _, _wait_n = os.environ.get("{WAIT_ENV}", "SIGTERM").partition("*")
if _pause and not getattr(_ckpt.CheckpointStore.save, "pauses", False):
    _at, _dir = _pause.split(":", 1)
    _save = _ckpt.CheckpointStore.save
    _paused = []

    def _save_then_pause(self, step, *args, **kwargs):
        _save(self, step, *args, **kwargs)
        if step == int(_at) and not _paused:  # once (a SIGTERM saves this step again)
            _paused.append(step)
            self.wait()  # complete on disk
            with open(os.path.join(_dir, "paused.tmp"), "w") as f:
                f.write(str(step))
            got = []
            sig, count = getattr(signal, _wait_sig), int(_wait_n or 1)
            handler = signal.getsignal(sig)  # the training loop's

            def on_signal(signum, frame):
                if len(got) + 1 == count:
                    signal.signal(sig, handler)
                handler(signum, frame)
                got.append(signum)
                open(os.path.join(_dir, f"got{{len(got)}}"), "w").close()

            signal.signal(sig, on_signal)
            os.replace(os.path.join(_dir, "paused.tmp"), os.path.join(_dir, "paused"))
            deadline = time.time() + 600
            while len(got) < count and time.time() < deadline:
                time.sleep(0.01)

    _save_then_pause.pauses = True
    _ckpt.CheckpointStore.save = _save_then_pause


def get_config():
    c = tiny_mlp_config(total_steps={TOTAL}, ema_decay=0.9, log_every_steps=1, eval_every_steps=20)
    c.checkpoint_every_steps = 1   # a checkpoint at every step the test may pause at
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


def launch(experiment, workdir, env, pause=None, wait_for="SIGTERM"):
    """launch.py on the experiment; `pause=(step, dir)` makes it wait after checkpoint `step`
    for the signals `wait_for` ("SIGTERM", "SIGINT*2")."""
    if pause is not None:
        env = dict(env, **{PAUSE_ENV: f"{pause[0]}:{pause[1]}", WAIT_ENV: wait_for})
    return subprocess.Popen(
        [sys.executable, "launch.py", f"--config={experiment}", f"--workdir={workdir}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_paused(proc, markers, step, timeout=300):
    """Waits for the run's marker: checkpoint `step` is on disk and the run waits there."""
    deadline = time.time() + timeout
    while not (markers / "paused").exists():
        if proc.poll() is not None:
            out = proc.communicate()[0]
            raise AssertionError(f"the run ended (status {proc.returncode}) before pausing at "
                                 f"step {step}:\n{out[-3000:]}")
        assert time.time() < deadline, f"the run did not reach checkpoint {step} in {timeout}s"
        time.sleep(0.01)
    assert (markers / "paused").read_text() == str(step)
    assert proc.poll() is None  # paused, not finished


def test_sigkill_then_rerun_is_bitwise_equal_to_uninterrupted(experiment, env, reference,
                                                                tmp_path):
    workdir = tmp_path / "run"
    proc = launch(experiment, workdir, env, pause=(10, tmp_path))
    wait_until_paused(proc, tmp_path, 10)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()
    assert max(ckpt.checkpoint_steps(str(workdir))) == 10

    proc = launch(experiment, workdir, env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "Resuming from checkpoint step 10" in out
    leaves, step = checkpoint_params(workdir)
    assert step == TOTAL
    assert_bitwise_equal(leaves, checkpoint_params(reference)[0])
    train_steps = [r["step"] for r in read_jsonl(str(workdir / "metrics.jsonl"))
                   if r["split"] == "train"]
    assert train_steps == list(range(1, TOTAL + 1))  # nothing duplicated, nothing missing
    assert json.loads((workdir / "results.json").read_text())["status"] == "finished"


def test_sigterm_saves_at_the_step_it_stopped(experiment, env, reference, tmp_path):
    workdir = tmp_path / "run"
    proc = launch(experiment, workdir, env, pause=(5, tmp_path))
    wait_until_paused(proc, tmp_path, 5)
    proc.send_signal(signal.SIGTERM)  # the run resumes once its handler has seen it
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "Stopped by SIGTERM at step 5:" in out
    stopped = 5
    assert max(ckpt.checkpoint_steps(str(workdir))) == stopped
    preempted = json.loads((workdir / "results.json").read_text())
    assert preempted == {"status": "preempted", "step": stopped, "signal": "SIGTERM"}
    records = read_jsonl(str(workdir / "metrics.jsonl"))
    assert max(r["step"] for r in records) == stopped


def _wait_for_file(proc, path, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, f"{path.name} not written in {timeout}s"
        time.sleep(0.01)


def test_a_second_ctrl_c_during_a_save_waits_for_it_and_ends_in_one_line(experiment, env,
                                                                          tmp_path):
    """Ctrl-C twice while the first checkpoint is being written (it pauses inside the save):
    the save completes, the run stops at it with its one line, no KeyboardInterrupt traceback."""
    workdir = tmp_path / "run"
    proc = launch(experiment, workdir, env, pause=(1, tmp_path), wait_for="SIGINT*2")
    wait_until_paused(proc, tmp_path, 1)
    proc.send_signal(signal.SIGINT)
    _wait_for_file(proc, tmp_path / "got1")  # the first reached the run's handler
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    assert "Stopped by SIGINT at step 1:" in out
    assert ckpt.checkpoint_steps(str(workdir)) == [1]
    preempted = json.loads((workdir / "results.json").read_text())
    assert preempted == {"status": "preempted", "step": 1, "signal": "SIGINT"}


def test_a_second_ctrl_c_outside_a_save_stops_at_once_in_one_line():
    """Between saves a second Ctrl-C ends the run at once: a one-line SystemExit, no traceback."""
    from cnn_jax.train.preemption import StopFlag

    stop = StopFlag()
    stop.install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.stop_requested(0)
        with stop.saving():
            signal.raise_signal(signal.SIGINT)  # waits for the save: no exception
        with pytest.raises(SystemExit, match="second Ctrl-C") as exit_info:
            signal.raise_signal(signal.SIGINT)
        assert "\n" not in str(exit_info.value.code) and "resume" in str(exit_info.value.code)
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGINT  # the first signal names the stop
    finally:
        stop.restore()


def test_ctrl_c_to_a_sweep_driver_stops_its_running_point_and_writes_the_summary(env, tmp_path):
    """SIGINT to the sweep driver alone (not its process group): the driver passes the stop on
    to the point paused after its checkpoint 5, the point saves and stops, the next point is
    not started, and the summary marks the point preempted; no traceback."""
    exp = tmp_path / "exp" / "tiny_signals_sweep.py"
    exp.parent.mkdir()
    exp.write_text(EXPERIMENT + "\n\ndef get_sweep():\n    return [('alpha', {}), ('beta', {})]\n")
    root = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "launch.py", f"--config={exp}", f"--workdir={root}", "--sweep"],
        cwd=REPO, env=dict(env, **{PAUSE_ENV: f"5:{tmp_path}"}), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until_paused(proc, tmp_path, 5)
        proc.send_signal(signal.SIGINT)  # the driver only: it must pass the stop on
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == 1, out[-3000:]
    assert "[sweep] alpha: PREEMPTED" in out
    assert "[sweep] SIGINT: running points were asked to checkpoint and stop" in out
    assert json.loads((root / "alpha" / "results.json").read_text())["step"] == 5
    assert not (root / "beta" / "sweep_log.txt").exists()  # not started
    import csv
    rows = {r["point"]: r for r in csv.DictReader(open(root / "summary.csv"))}
    assert rows["alpha"]["status"] == "preempted" and rows["beta"]["status"] == "pending"
