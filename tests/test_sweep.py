"""Sweep machinery: point naming, arg parsing, collisions, dry runs, failure recording, resuming.

The runner tests use a stand-in launcher script (fast, no training); tests/test_sweep_e2e.py runs
the real engine.
"""

import csv
import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from cnn_jax import sweep
from cnn_jax.sweep import execute

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the experiment files (and the ones written here) import experiments.*
from experiments.common import parse_arg, product  # noqa: E402


def test_product_names_points_from_their_axes():
    points = product(depth=[20, 32], residual=[True, False])
    assert [n for n, _ in points] == [
        "depth20_residual", "depth20_noresidual", "depth32_residual", "depth32_noresidual"]
    assert points[1][1] == {"depth": 20, "residual": False}


def test_point_name_formats_strings_floats_and_config_fields():
    assert sweep.point_name({"norm": "batch", "config.optim.lr": 0.05}) == "norm-batch_lr0.05"
    assert sweep.point_name({"net": "a/b c"}) == "net-a-b-c"
    assert sweep.point_name({}) == "default"


def test_product_rejects_a_string_axis():
    with pytest.raises(ValueError, match="list of values"):
        product(norm="batch")


def test_parse_arg_types_values_by_their_defaults():
    a = parse_arg("runlocal,depth=32,lr=0.5,norm=group,depths=20+44,residual=False",
                        runlocal=False, depth=20, lr=0.1, norm="batch", depths=(20,),
                        residual=True)
    assert (a.runlocal, a.depth, a.lr, a.norm, a.depths, a.residual) == (
        True, 32, 0.5, "group", (20, 44), False)
    assert parse_arg(None, depth=20).depth == 20


def test_parse_arg_errors_name_the_arg_and_a_close_match():
    with pytest.raises(ValueError, match=r"Unknown experiment arg 'dpeth'.*'depth'"):
        parse_arg("dpeth=3", depth=20)
    with pytest.raises(ValueError, match=r"depth='x'.*int"):
        parse_arg("depth=x", depth=20)
    with pytest.raises(ValueError, match="needs a value"):
        parse_arg("depth", depth=20)
    with pytest.raises(ValueError, match="True or False"):
        parse_arg("residual=maybe", residual=True)


def _write_experiment(tmp_path: Path, body: str, name: str = "exp.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_colliding_point_names_fail_before_anything_runs(tmp_path):
    exp = _write_experiment(tmp_path, """
        import ml_collections
        def get_config(arg=None):
            return ml_collections.ConfigDict({"seed": 0})
        def get_sweep(arg=None):
            return [("a", {"seed": 1}), ("b", {"seed": 2}), ("A", {"seed": 3})]
        """)
    workdir = tmp_path / "sweep"
    with pytest.raises(ValueError, match=r"collide in name.*'a' and 'A'"):
        sweep.main(exp, str(workdir), dry_run=False, parallel=1, overrides=[])
    assert not workdir.exists()


def test_bad_point_name_and_missing_get_sweep_are_errors(tmp_path):
    exp = _write_experiment(tmp_path, """
        def get_sweep():
            return [("../escape", {})]
        """)
    with pytest.raises(ValueError, match="directory name"):
        sweep.get_points(exp)
    plain = _write_experiment(tmp_path, "def get_config():\n    return None\n", "plain.py")
    with pytest.raises(ValueError, match="defines no get_sweep"):
        sweep.get_points(plain)


def test_override_of_a_sweep_axis_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="also sets"):
        sweep.main("experiments/ablation_depth.py:depth=20", str(tmp_path), dry_run=True,
                   parallel=1, overrides=[])
    exp = _write_experiment(tmp_path, """
        import ml_collections
        from experiments.common import product
        def get_config():
            return ml_collections.ConfigDict({"seed": 0})
        def get_sweep():
            return product(**{"config.seed": [1, 2]})
        """)
    with pytest.raises(ValueError, match="overwrite sweep axis"):
        sweep.main(exp, str(tmp_path / "s"), dry_run=True, parallel=1,
                   overrides=["--config.seed=5"])


def test_dry_run_prints_eight_distinct_launch_commands_for_ablation_depth(tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(REPO)
    workdir = tmp_path / "depth"
    rc = sweep.main("experiments/ablation_depth.py", str(workdir), dry_run=True, parallel=1,
                    overrides=["--config.num_epochs=3"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 8 and len(set(lines)) == 8
    seen = set()
    for line in lines:
        argv = shlex.split(line)
        assert argv[:3] == ["python", "-m", "cnn_jax"]
        flags = dict(a.split("=", 1) for a in argv[3:])
        assert flags["--config.num_epochs"] == "3"
        config_args = dict(kv.split("=") for kv in flags["--config"].split(":", 1)[1].split(","))
        point = (int(config_args["depth"]), config_args["residual"])
        assert Path(flags["--workdir"]).parent == workdir
        seen.add(point)
    assert seen == {(d, r) for d in (20, 32, 44, 56) for r in ("True", "False")}
    # Nothing ran: only the plan exists.
    assert [p.name for p in workdir.iterdir()] == [sweep.SWEEP_FILE]


def test_sweep_files_build_a_config_for_every_point(monkeypatch):
    monkeypatch.chdir(REPO)
    for name, count in (("ablation_depth", 8), ("ablation_norm", 8), ("mlp_vs_cnn_cifar10", 2)):
        points = sweep.get_points(f"experiments/{name}.py:runlocal,data=synthetic")
        assert len(points) == count
        sweep.preflight(f"experiments/{name}.py:runlocal,data=synthetic", points, [],
                        check_data=True)


def test_missing_cifar_tree_is_a_clear_error_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CNN_JAX_CIFAR10", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*tar xzf"):
        sweep.main("experiments/ablation_norm.py", str(tmp_path / "s"), dry_run=False,
                   parallel=1, overrides=[])
    assert not (tmp_path / "s").exists()


def test_error_line_picks_the_exception_line():
    log = "Traceback (most recent call last):\n  File \"x.py\", line 3\n    raise ValueError('x')\n" \
          "ValueError: model.name 'resnt20' unknown\nI0101 shutting down\n"
    assert sweep.error_line(log, 1) == "ValueError: model.name 'resnt20' unknown"
    assert sweep.error_line("", -9) == "killed by signal SIGKILL"
    assert sweep.error_line("just this\n", 2) == "just this"


# A stand-in for `python -m cnn_jax`: writes a finished run unless the point's arg says fail.
FAKE_LAUNCH = """
import json, os, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
workdir, arg = os.path.expanduser(flags["workdir"]), flags["config"].partition(":")[2]
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "runs.txt"), "a") as f:
    f.write("run\\n")
if "mode=early" in arg:  # killed by SIGTERM before it could install a handler (still starting)
    import time
    open(os.path.join(os.path.dirname(workdir), "ready"), "w").close()
    time.sleep(120)
    sys.exit(3)
if "mode=slow" in arg:
    import signal, time
    def stop(signum, frame):
        json.dump({"status": "preempted", "step": 1}, open(os.path.join(workdir, "results.json"), "w"))
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    open(os.path.join(os.path.dirname(workdir), "ready"), "w").close()
    time.sleep(120)
    sys.exit(3)
if "mode=fail" in arg:
    print("step 1 ok")
    print("Traceback (most recent call last):", file=sys.stderr)
    print("FloatingPointError: loss is nan at step 3", file=sys.stderr)
    sys.exit(1)
with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for ep in (1, 2):
        f.write(json.dumps({"step": ep, "epoch": ep, "split": "train", "loss": 1.0,
                            "top1": 0.5 + 0.1 * ep, "top5": 0.9}) + "\\n")
        f.write(json.dumps({"step": ep, "epoch": ep, "split": "val", "loss": 1.0,
                            "top1": 0.4 + 0.1 * ep, "top5": 0.8}) + "\\n")
final = {"loss": 1.0, "top1": 0.6, "top5": 0.9}
json.dump({"status": "finished", "step": 2, "epochs": 2.0,
           "final": {"train": final, "val": final, "test": final}, "best_val_top1": 0.6,
           "params": 10, "macs": 20, "wall_time_s": 0.1, "img_per_s": 5.0},
          open(os.path.join(workdir, "results.json"), "w"))
"""


@pytest.fixture
def fake_launch(tmp_path, monkeypatch):
    script = tmp_path / "fake_launch.py"
    script.write_text(FAKE_LAUNCH)
    monkeypatch.setattr(execute, "launcher", lambda: [sys.executable, str(script)])
    return script


def test_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path, fake_launch):
    exp = _write_experiment(tmp_path, """
        import ml_collections
        from experiments.common import parse_arg, product
        def get_config(arg=None):
            return ml_collections.ConfigDict({"seed": 0})
        def get_sweep(arg=None):
            return product(mode=["ok", "fail", "fine"])
        """)
    workdir = tmp_path / "s"
    rc = sweep.main(exp, str(workdir), dry_run=False, parallel=2, overrides=[])
    assert rc == 1
    status = json.loads((workdir / "mode-fail" / sweep.STATUS_FILE).read_text())
    assert status["status"] == "failed"
    assert status["error"] == "FloatingPointError: loss is nan at step 3"
    # the record names the interpreter `python`, not this machine's path to it
    assert status["command"].startswith(f"python {fake_launch} ")
    assert sys.executable not in (workdir / "mode-fail" / sweep.STATUS_FILE).read_text()
    assert status["log"] == sweep.LOG_FILE  # beside the status file, not a path of this machine
    assert "step 1 ok" in (workdir / "mode-fail" / sweep.LOG_FILE).read_text()
    for ok in ("mode-ok", "mode-fine"):
        assert sweep.is_finished(workdir / ok)
        assert json.loads((workdir / ok / sweep.STATUS_FILE).read_text())["status"] == "finished"
    rows = {r["point"]: r for r in csv.DictReader(open(workdir / "summary.csv"))}
    assert rows["mode-fail"]["status"] == "failed"
    assert rows["mode-fail"]["error"] == "FloatingPointError: loss is nan at step 3"
    assert rows["mode-ok"]["status"] == "finished"
    assert float(rows["mode-ok"]["val_top1_err"]) == pytest.approx(40.0)
    md = (workdir / "summary.md").read_text()
    assert "FloatingPointError: loss is nan at step 3" in md
    last = json.loads((workdir / sweep.SWEEP_FILE).read_text())["last_run"]
    assert last["points_run"] == 3 and last["parallel"] == 2 and "CPUs" in last["machine"]
    assert f"on {last['machine']}, 3 point(s)" in md
    assert "Training wall time, summed over points: 0 s" in md  # the stand-in reports 0.1 s each

    # Re-running retries only the failed point.
    rc = sweep.main(exp, str(workdir), dry_run=False, parallel=1, overrides=[])
    assert rc == 1
    runs = {p: (workdir / p / "runs.txt").read_text().count("run")
            for p in ("mode-ok", "mode-fail", "mode-fine")}
    assert runs == {"mode-ok": 1, "mode-fail": 2, "mode-fine": 1}


def test_a_workdir_under_home_is_one_directory_for_the_driver_and_its_points(
        tmp_path, fake_launch, monkeypatch):
    # `--workdir=~/runs/s` reaches the launcher unexpanded (no shell expands `~` after `=`). The
    # points expanded it and the driver did not: it wrote its status files under ./~/runs/s and
    # called every finished point "exited 0 without a finished results.json".
    exp = _write_experiment(tmp_path, """
        import ml_collections
        from experiments.common import parse_arg, product
        def get_config(arg=None):
            return ml_collections.ConfigDict({"seed": 0})
        def get_sweep(arg=None):
            return product(mode=["ok", "fine"])
        """)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert sweep.main(exp, "~/runs/s", dry_run=False, parallel=1, overrides=[]) == 0
    root = tmp_path / "home" / "runs" / "s"
    for point in ("mode-ok", "mode-fine"):
        assert sweep.is_finished(root / point)
        assert json.loads((root / point / sweep.STATUS_FILE).read_text())["status"] == "finished"
    assert (root / sweep.SWEEP_FILE).is_file() and (root / "summary.md").is_file()
    assert not (tmp_path / "cwd" / "~").exists()


def test_dry_run_commands_run_as_printed(tmp_path, fake_launch, capsys):
    """The printed commands are complete: running one (with the stand-in) trains that point."""
    exp = _write_experiment(tmp_path, """
        from experiments.common import product
        def get_sweep():
            return product(mode=["ok"], **{"config.seed": [3]})
        def get_config(arg=None):
            import ml_collections
            return ml_collections.ConfigDict({"seed": 0})
        """)
    sweep.main(exp, str(tmp_path / "s"), dry_run=True, parallel=1, overrides=[])
    (line,) = capsys.readouterr().out.splitlines()
    argv = shlex.split(line)
    assert "--config.seed=3" in argv and argv[3].endswith(":mode=ok")
    import subprocess

    subprocess.run([sys.executable, str(fake_launch), *argv[3:]], check=True)
    assert sweep.is_finished(tmp_path / "s" / "mode-ok_seed3")


def test_launch_py_sweep_dry_run_prints_eight_commands(tmp_path):
    """The acceptance command, through launch.py's own flags."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "launch.py", "--config=experiments/ablation_depth.py:runlocal",
         f"--workdir={tmp_path}", "--sweep_dry_run", "--config.seed=7"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("python -m cnn_jax ")]
    assert len(lines) == 8 and len(set(lines)) == 8
    assert all("--config.seed=7" in ln and ":runlocal,depth=" in ln for ln in lines)


def test_launcher_flags_reach_every_point_or_are_refused_in_one_line(tmp_path):
    """--force, --extend, --xla_cpu_flags and --keep_host_buffers are passed on to every point's
    command (the dry run prints the commands the sweep runs, locally or as SLURM jobs); flags
    that cannot apply to a sweep are one ERROR line, not silently dropped."""
    import subprocess

    def launch(*flags):
        return subprocess.run(
            [sys.executable, "launch.py", "--config=tests/faults/tiny_config.py",
             f"--workdir={tmp_path / 's'}", "--sweep_dry_run", *flags],
            cwd=REPO, capture_output=True, text=True, timeout=120)

    out = launch("--force", "--xla_cpu_flags=--xla_cpu_use_thunk_runtime=false", "--extend",
                 "--keep_host_buffers=false")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("python -m cnn_jax ")]
    assert len(lines) == 2
    for line in lines:
        argv = shlex.split(line)
        assert argv[-4:] == ["--force", "--extend",
                             "--xla_cpu_flags=--xla_cpu_use_thunk_runtime=false",
                             "--nokeep_host_buffers"], argv
    for flags, says in ((["--mode=eval"], "--mode cannot be used with --sweep"),
                        (["--multihost"], "--multihost cannot be used with --sweep"),
                        (["--images=a.png"], "--images cannot be used with --sweep"),
                        (["--slurm_nodes=2"], "--slurm_nodes applies to --sweep_executor=slurm")):
        out = launch(*flags)
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()
                 and not ln.startswith("WARNING")]
        assert out.returncode == 1 and len(lines) == 1, (flags, out.stdout, out.stderr)
        assert lines[0].startswith("ERROR:") and says in lines[0]


def test_point_values_reach_the_command_exactly():
    argv = sweep.point_command("exp.py:runlocal", "w", "p", {"lr": 0.123456789, "n": 3,
                                                             "config.optim.lr": 1e-7})
    assert argv[0] == "--config=exp.py:runlocal,lr=0.123456789,n=3"
    assert argv[1:] == [f"--workdir={os.path.join('w', 'p')}", "--config.optim.lr=1e-07"]
    with pytest.raises(ValueError, match="cannot pass through"):
        sweep.point_command("exp.py", "w", "p", {"names": "a,b"})


@pytest.mark.parametrize("sig, first", [("SIGTERM", "slow"), ("SIGINT", "slow"),
                                        ("SIGTERM", "early")])
def test_a_signal_to_the_sweep_reaches_the_running_point_and_starts_no_other(
        tmp_path, fake_launch, capsys, sig, first):
    """A scheduler preempting the sweep (SIGTERM) or a user's Ctrl-C (SIGINT): the driver passes
    it on as SIGTERM, the point checkpoints and stops, nothing new starts, and the report marks
    the point preempted. A point the signal kills while it starts up (`early`: no handler yet)
    is preempted too, not failed."""
    import signal
    import threading
    import time

    exp = _write_experiment(tmp_path, f"""
        import ml_collections
        from experiments.common import product
        def get_config(arg=None):
            return ml_collections.ConfigDict({{"seed": 0}})
        def get_sweep():
            return product(mode=["{first}", "ok"])
        """)
    workdir = tmp_path / "s"

    def preempt():
        deadline = time.time() + 60
        while not (workdir / "ready").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), getattr(signal, sig))  # caught by the sweep's handler, passed on

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    killer = threading.Thread(target=preempt)
    killer.start()
    rc = sweep.main(exp, str(workdir), dry_run=False, parallel=1, overrides=[])
    killer.join()
    assert {s: signal.getsignal(s) for s in previous} == previous  # handlers restored
    assert rc == 1
    status = json.loads((workdir / f"mode-{first}" / sweep.STATUS_FILE).read_text())
    assert status["status"] == "preempted" and "resume" in status["error"]
    assert not (workdir / "mode-ok" / "runs.txt").exists()
    rows = {r["point"]: r for r in csv.DictReader(open(workdir / "summary.csv"))}
    assert rows[f"mode-{first}"]["status"] == "preempted" and rows["mode-ok"]["status"] == "pending"
    assert "re-run the sweep to resume" in rows[f"mode-{first}"]["error"]
    out = capsys.readouterr().out
    assert f"[sweep] {sig}: running points were asked to checkpoint and stop" in out


def test_rerunning_a_finished_sweep_with_another_config_is_refused(tmp_path, monkeypatch, capsys):
    """A finished point is skipped by a re-run; with other --config overrides (or experiment
    args) that change its config it would be reported under the new args: refused, in one line
    naming the point, the field and the fix. Args that leave its config as it was (a narrower
    points= list, a logging cadence) re-run as before; --force keeps the old results."""
    from cnn_jax.train.setup import config_to_dict
    from tests.faults import tiny_config

    monkeypatch.chdir(REPO)
    root = tmp_path / "s"
    alpha = root / "alpha"
    alpha.mkdir(parents=True)  # a finished point, as the engine leaves it
    (alpha / "config.json").write_text(json.dumps(config_to_dict(tiny_config.get_config(
        "crash=False"))))
    results = {"status": "finished", "step": 24}
    (alpha / "results.json").write_text(json.dumps(results))
    config = "tests/faults/tiny_config.py:points=alpha"
    with pytest.raises(ValueError) as refused:
        sweep.main(config, str(root), overrides=["--config.optim.lr=0.01"])
    line = str(refused.value)
    assert "\n" not in line and "alpha (optim.lr: 0.05 -> 0.01)" in line
    assert "new --workdir" in line and "--force" in line
    assert not (root / sweep.SWEEP_FILE).exists()  # nothing written: the plan is not replaced
    assert sweep.main(config, str(root), overrides=["--config.log_every_steps=2"]) == 0
    assert "alpha: already finished, skipped" in capsys.readouterr().out
    assert sweep.main(config, str(root), overrides=["--config.optim.lr=0.01"],
                      point_flags=["--force"]) == 0
    assert "WARNING: --force: finished point(s)" in capsys.readouterr().out
    assert json.loads((alpha / "results.json").read_text()) == results
