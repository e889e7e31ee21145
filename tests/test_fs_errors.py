"""Every file-system refusal is one ERROR line naming the path and the fix, never a traceback
(issue 13 item 3). The faults are simulated (tests/fs_faults.py), so that the tests also hold
where they run as root, whom a read-only chmod does not stop, and no disk is filled."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config=tests/faults/tiny_config.py", "--config.total_steps=8",
        "--config.eval_every_steps=8", "--config.checkpoint_every_steps=4"]


def launch(*args, faults=None, timeout=300):
    """`python launch.py ARGS` (under `faults`, see tests/fs_faults.py): (exit status, stdout,
    stderr)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("CNN_JAX_TRACEBACK", None)
    cmd = ([sys.executable, "-m", "tests.fs_faults", json.dumps(faults)] if faults
           else [sys.executable, "launch.py"])
    p = subprocess.run([*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def assert_one_error_line(code, err, *expected):
    assert code == 1, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]
    assert "Fix:" in errors[0] or "give" in errors[0], errors[0]
    return errors[0]


def leftovers(directory):
    """Temporary files of atomic writes left in `directory` (there must be none)."""
    return [p.name for p in Path(directory).rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished run whose first attempt met a full disk while writing results.json,
    and (stdout, stderr) of that attempt."""
    run = tmp_path_factory.mktemp("fs") / "run"
    code, out, err = launch(*TINY, f"--workdir={run}", faults={"enospc": ["results.json"]})
    first = (code, out, err, leftovers(run), sorted(p.name for p in run.iterdir()))
    code, out2, err2 = launch(*TINY, f"--workdir={run}")
    assert code == 0, err2
    return run, first


def test_full_disk_while_writing_results_is_one_line_and_a_rerun_writes_them(finished):
    run, (code, out, err, tmp, names) = finished
    line = assert_one_error_line(code, err, str(run / "results.json"), "No space left")
    assert "re-run the same command" in line
    assert not tmp and "results.json" not in names  # no 0-byte or temporary file left
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished"
    # The re-run evaluated again: one final record per split, not two.
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    finals = [(r["step"], r["split"]) for r in records if r["split"] != "train"]
    assert len(finals) == len(set(finals)), finals


def test_full_disk_at_start_leaves_no_temporary_file(tmp_path):
    run = tmp_path / "run"
    code, _, err = launch(*TINY, f"--workdir={run}", faults={"enospc": ["config.json"]})
    assert_one_error_line(code, err, str(run / "config.json"), "No space left")
    assert not leftovers(tmp_path)  # was: a 0-byte config.json.tmp<PID>
    code, _, err = launch(*TINY, f"--workdir={tmp_path / 'all'}", faults={"enospc": ["*"]})
    assert_one_error_line(code, err, str(tmp_path / "all"), "No space left")
    assert not leftovers(tmp_path)


def test_read_only_workdir_fresh_run(tmp_path):
    run = tmp_path / "ro"
    run.mkdir()
    code, _, err = launch(*TINY, f"--workdir={run}", faults={"read_only": [str(run)]})
    assert_one_error_line(code, err, str(run), "Permission denied", "writable")
    assert not any(run.iterdir())
    new = tmp_path / "ro_parent" / "run"  # the directory itself cannot be created
    (tmp_path / "ro_parent").mkdir()
    code, _, err = launch(*TINY, f"--workdir={new}",
                          faults={"read_only": [str(tmp_path / "ro_parent")]})
    assert_one_error_line(code, err, str(new), "Permission denied")


def test_read_only_finished_run_says_already_finished(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    code, out, err = launch(*TINY, f"--workdir={run}", faults={"read_only": [str(run)]})
    assert code == 0, err
    assert "Run already finished at step 8" in out and "Traceback" not in err
    # A different config is not "already finished": the refusal names the path.
    code, _, err = launch(*TINY, "--config.seed=3", f"--workdir={run}",
                          faults={"read_only": [str(run)]})
    assert_one_error_line(code, err, str(run), "Permission denied")


def test_eval_on_read_only_workdir_prints_its_result(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    code, out, err = launch(*TINY, f"--workdir={run}", "--mode=eval",
                            faults={"read_only": [str(run)]})
    assert code == 0, err
    assert "Eval of step 8 on test: top-1" in out
    assert f"could not write {run / 'eval_metrics.json'}" in out
    assert not (run / "eval_metrics.json").exists() and not leftovers(run)


def test_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    code, _, err = launch(*TINY, f"--workdir={path}")
    assert_one_error_line(code, err, str(path), "not a directory")
    code, _, err = launch(*TINY, f"--workdir={path / 'run'}")  # a file as a parent
    assert_one_error_line(code, err, str(path), "not a directory")
    assert path.read_text() == "x"


def test_path_component_of_300_characters(tmp_path):
    path = tmp_path / ("x" * 300) / "run"
    code, _, err = launch(*TINY, f"--workdir={path}")
    assert_one_error_line(code, err, "File name too long", "shorter --workdir")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["train", "eval", "predict"])
def test_empty_workdir_is_refused(tmp_path, mode):
    code, _, err = launch(*TINY, "--workdir=", f"--mode={mode}")
    assert_one_error_line(code, err, "--workdir is empty")
    assert not (REPO / "checkpoints").exists()


def test_full_disk_during_a_checkpoint_save_names_the_step_in_one_line(tmp_path):
    """An asynchronous save of step 4 fails; Orbax's threads' tracebacks (about 500 lines
    before) are condensed, and the ERROR line, last, names step 4 (not the next save's)."""
    run = tmp_path / "run"
    code, out, err = launch(*TINY, "--config.async_checkpoints=True", f"--workdir={run}",
                            faults={"enospc_checkpoint_from": 4})
    assert code == 1
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines[-1].startswith("ERROR: ") and "Saving step 4 " in lines[-1], err
    assert "No space left on device" in lines[-1]
    assert "Traceback" not in err and len((out + err).splitlines()) < 40, err
    assert not ckpt_steps(run)


def ckpt_steps(run):
    d = run / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []
