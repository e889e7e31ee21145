"""Sweeps through submitit: a 2-point sweep end to end on submitit's local executor, and the
sbatch script of a multi-node SLURM sweep, checked against a stand-in `sbatch` (no SLURM needed).
"""

import csv
import json
import os
import signal
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from cnn_jax import rundir, sweep
from cnn_jax.sweep import slurm

REPO = Path(__file__).resolve().parent.parent
# Two seeds of the tiny runlocal MLP (6 steps of batch 16 on synthetic 32x32 images).
CONFIG = "experiments/mlp_vs_cnn_cifar10.py:runlocal,data=synthetic,nets=mlp,seeds=0+1"


@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_point_sweep_end_to_end(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(REPO)
    workdir = tmp_path / "sweep"
    rc = sweep.main(CONFIG, str(workdir), parallel=2, executor="slurm", submitit_cluster="local",
                    slurm_flags={"time_min": 30})
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "submitted 2 job(s)" in out
    for point in ("mlp_seed0", "mlp_seed1"):
        assert rundir.is_finished(workdir / point)
        status = rundir.read_status(workdir / point)
        assert status["status"] == "finished"
        assert json.loads((workdir / point / "config.json").read_text())["seed"] == int(point[-1])
        assert "Traceback" not in (workdir / point / rundir.LOG_FILE).read_text()
    assert any((workdir / slurm.SUBMITIT_DIR).iterdir())  # submitit's own job files
    plan = json.loads((workdir / rundir.SWEEP_FILE).read_text())
    assert plan["executor"] == "slurm" and plan["last_run"]["executor"] == "slurm"
    assert plan["points"][0]["command"].startswith("python -m cnn_jax --config=")
    rows = {r["point"]: r for r in csv.DictReader(open(workdir / "summary.csv"))}
    assert {r["status"] for r in rows.values()} == {"finished"}
    assert {r["group"] for r in rows.values()} == {"net-mlp"}
    assert {r["n_seeds"] for r in rows.values()} == {"2"}
    assert float(rows["mlp_seed0"]["val_top1_err_mean"]) == pytest.approx(
        (float(rows["mlp_seed0"]["val_top1_err"]) + float(rows["mlp_seed1"]["val_top1_err"])) / 2,
        abs=1e-3)

    # Re-running submits nothing: both points are finished (as for a local sweep).
    rc = sweep.main(CONFIG, str(workdir), executor="slurm", submitit_cluster="local")
    out = capsys.readouterr().out
    assert rc == 0 and "0 of 2 points to run" in out and "submitted" not in out


STAND_IN_SBATCH = """#!{python}
import shutil, sys
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv) + "\\n")
shutil.copy(sys.argv[-1], {script!r})
print("Submitted batch job 123")
"""

EXPERIMENT = """
import ml_collections
from experiments.common import parse_arg, product

def get_config(arg=None):
    a = parse_arg(arg, lr=0.1, gpus=8)
    return ml_collections.ConfigDict({"seed": 0, "lr": a.lr})

def get_sweep(arg=None):
    return product(lr=[0.1, 0.2])

def get_slurm(arg=None):
    a = parse_arg(arg, lr=0.1, gpus=8)
    return {"partition": "gpu", "nodes": 2, "gpus_per_node": a.gpus, "time_min": 90,
            "sbatch": ["--account=cnn", "#SBATCH --qos=high"], "setup": ["module load cuda"]}
"""


def test_sbatch_script_of_a_multi_node_sweep(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(STAND_IN_SBATCH.format(python=sys.executable, log=str(tmp_path / "argv"),
                                             script=str(tmp_path / "script.sh")))
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit looks for it; the stand-in job never runs
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.syspath_prepend(str(REPO))
    exp = tmp_path / "exp.py"
    exp.write_text(textwrap.dedent(EXPERIMENT))
    waited = {}
    monkeypatch.setattr(slurm, "wait", lambda jobs, root, echo, *rest: waited.update(jobs) or {})
    workdir = tmp_path / "sweep"
    rc = sweep.main(str(exp), str(workdir), parallel=2, executor="slurm",
                    slurm_flags={"gpus_per_node": 4, "time_min": None})  # a flag beats get_slurm
    assert rc == 0, capsys.readouterr().out
    assert (tmp_path / "argv").read_text().split()[0].endswith("sbatch")
    script = (tmp_path / "script.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --time=90", "#SBATCH --account=cnn",
                 "#SBATCH --qos=high", "#SBATCH --array=0-1%2", "module load cuda"):
        assert line in script, (line, script)
    assert "srun" in script and "submitit.core._submit" in script
    assert sorted(waited) == ["lr0.1", "lr0.2"]
    for name, job in waited.items():
        assert job.job_id.startswith("123_")
        status = rundir.read_status(workdir / name)
        assert status["status"] == "submitted" and status["job_id"] == job.job_id
        # Multi-node: every process of the job joins jax.distributed (SLURM's variables).
        assert "--multihost" in status["command"] and "-m cnn_jax" in status["command"]
        # What the job will run: the point's command, in the node's own environment (only
        # PYTHONPATH travels, so SLURM's variables on the node are the ones the run sees).
        from submitit.core.utils import DelayedSubmission

        point_job = DelayedSubmission.load(job.paths.submitted_pickle).function
        assert point_job.argv[1:3] == ["-m", "cnn_jax"] and "--multihost" in point_job.argv
        assert point_job.pythonpath == str(tmp_path.resolve().parent)
        assert not hasattr(point_job, "env")
    plan = json.loads((workdir / rundir.SWEEP_FILE).read_text())
    assert plan["slurm"]["gpus_per_node"] == 4 and plan["slurm"]["partition"] == "gpu"
    rows = {r["point"]: r for r in csv.DictReader(open(workdir / "summary.csv"))}
    assert {r["status"] for r in rows.values()} == {"submitted"}


def test_dry_run_with_slurm_prints_the_plain_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc = sweep.main(CONFIG, str(tmp_path / "s"), dry_run=True, executor="slurm",
                    slurm_flags={"nodes": 2}, point_flags=["--force", "--xla_cpu_flags="])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 2
    assert all(ln.startswith("python -m cnn_jax --config=experiments/") and
               ln.endswith("--force --xla_cpu_flags= --multihost") for ln in lines)


def test_bad_slurm_settings_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match=r"unknown SLURM setting\(s\) \['gpus'\]"):
        sweep.main(CONFIG, str(tmp_path / "s"), dry_run=True, executor="slurm",
                   slurm_flags={"gpus": 2})
    with pytest.raises(ValueError, match="--sweep_executor='pbs'"):
        sweep.main(CONFIG, str(tmp_path / "s"), executor="pbs")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    with pytest.raises(FileNotFoundError, match="sbatch and srun not found on PATH"):
        sweep.main(CONFIG, str(tmp_path / "s2"), executor="slurm")
    assert not (tmp_path / "s2").exists()
    with pytest.raises(ValueError, match="sbatch line"):
        slurm.sbatch_parameters(["account=abc"])


def test_multihost_under_slurm_leaves_coordinator_and_ranks_to_slurms_variables(monkeypatch):
    """What a multi-node point's processes do: `--multihost` with nothing else calls
    jax.distributed.initialize() with no addresses, and JAX reads them from SLURM."""
    import jax
    from absl import flags
    from jax._src import clusters

    from cnn_jax import launch

    slurm_env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
                 "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "gpu[001-002]"}
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    coordinator, num, pid, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, None)
    assert coordinator.startswith("gpu001:") and (num, pid) == (2, 1)

    launch.define_flags()
    flags.FLAGS(["launch", "--workdir=w", "--multihost"])
    recorded = {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.update(kw))
    try:
        assert launch.multihost_requested()
        launch.init_distributed()
    finally:
        flags.FLAGS.unparse_flags()
    assert {k: recorded.pop(k) for k in ("coordinator_address", "num_processes",
                                         "process_id")} == dict.fromkeys(
        ("coordinator_address", "num_processes", "process_id"))
    # JAX's own deadline stays behind launch's --multihost_timeout_s watchdog (300 s default).
    assert recorded == {"initialization_timeout": 360}


def _checkpoints(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


@pytest.mark.slow
def test_a_preempted_job_checkpoints_is_requeued_and_resumes(tmp_path, monkeypatch):
    """SLURM's warning signal (USR2, as before a time limit or a preemption) to a job of
    submitit's local executor: the point checkpoints, the job is requeued and finishes."""
    import time

    from cnn_jax.sweep import plan

    monkeypatch.chdir(REPO)
    config = "experiments/mlp_vs_cnn_cifar10.py:runlocal,data=synthetic,nets=mlp"
    overrides = ["--config.total_steps=150", "--config.checkpoint_every_steps=25",
                 "--config.log_every_steps=25", "--config.eval_every_steps=150"]
    root = tmp_path / "sweep"
    (name, axes), = plan.get_points(config)
    commands = {name: plan.point_command(config, str(root), name, axes, overrides)}
    settings = slurm.settings(config, {"time_min": 30})
    jobs = slurm.submit([name], commands, root, 1, config, settings, cluster="local")
    deadline = time.time() + 300
    while time.time() < deadline and not _checkpoints(root / name):
        time.sleep(0.05)
    assert _checkpoints(root / name) and not rundir.is_finished(root / name)
    # SLURM's warning signal goes to the job's task: the submitit worker that started the run.
    run_pid = rundir.read_status(root / name)["pid"]
    worker = int(Path(f"/proc/{run_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(worker, signal.SIGUSR2)
    status = slurm.wait(jobs, root, print)[name]
    assert status["status"] == "finished", status
    log = (root / name / rundir.LOG_FILE).read_text()
    assert log.count("\n=== ") == 2  # the first start, and the requeued one
    assert "Resuming from checkpoint step" in log.split("\n=== ")[-1]
    assert json.loads((root / name / "results.json").read_text())["step"] == 150
