"""Issue 13 item 6: Adam's eps=0 refused, a 20-digit seed one line, --multihost without its
other processes a timeout naming the coordinator and the missing processes, and a finished run
whose results.json was deleted re-evaluated without a second final record."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_jax.train import loop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root: experiments/, tests/
from tests import tiny_run  # noqa: E402

TINY = "--config=tests/faults/tiny_config.py"


def launch(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("CNN_JAX_TRACEBACK", None)
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_eps_zero_is_refused_naming_eps(name):
    config = tiny_run.config(**{"optim.name": name, "optim.eps": 0.0})
    with pytest.raises(ValueError, match=r"config\.optim\.eps=0\.0 .*positive"):
        loop.validate_config(config)
    loop.validate_config(tiny_run.config(**{"optim.name": "sgd", "optim.eps": 0.0}))  # unused


def test_huge_seed_is_one_error_line(tmp_path):
    p = launch(TINY, f"--workdir={tmp_path / 'run'}", "--config.seed=99999999999999999999")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("ERROR: ") and "config.seed=99999999999999999999" in p.stderr
    assert not (tmp_path / "run").exists()


def test_multihost_without_the_other_process_times_out_naming_them(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    p = launch(TINY, f"--workdir={tmp_path / 'run'}", "--multihost",
               f"--coordinator_address={address}", "--num_processes=3", "--process_id=0",
               "--multihost_timeout_s=2", timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    errors = [l for l in p.stderr.splitlines() if l.startswith("ERROR:")]
    assert len(errors) == 1 and "Check failure" not in p.stderr, p.stderr
    assert address in errors[0] and "processes 1, 2 did not join" in errors[0]
    assert "--multihost_timeout_s" in errors[0]


def test_finished_run_without_results_json_evaluates_once_more_without_duplicates(tmp_path):
    config = tiny_run.config()
    loop.train_and_evaluate(config, str(tmp_path))
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "results.json").unlink()
    results = loop.train_and_evaluate(config, str(tmp_path))
    assert results["status"] == "finished"
    again = (tmp_path / "metrics.jsonl").read_text().splitlines()
    keys = [(r["step"], r["split"]) for r in map(json.loads, again)]
    assert keys == [(r["step"], r["split"]) for r in map(json.loads, records)]
