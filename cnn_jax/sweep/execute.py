"""Running a sweep: every planned point into `DIR/<point>/`, here or on SLURM, then the report.

Re-running a sweep skips finished points (`results.json` status finished) and resumes the others
from their checkpoints. Files written: `DIR/sweep.json` (the plan, read by the report),
`DIR/<point>/sweep_status.json` (running / finished / failed with the error line) and
`DIR/<point>/sweep_log.txt` (the point's stdout and stderr). Locally the points run as child
processes, `--sweep_parallel` at a time; `executor="slurm"` submits one job per point through
submitit (`cnn_jax.sweep.slurm`) and waits for them. Either way each point runs `_run_point` below.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from cnn_jax import files, rundir, workdir_lock
from cnn_jax.sweep import plan as plan_lib
from cnn_jax.sweep.plan import display_command, launcher, point_env
from cnn_jax.sweep.point import Children, echo_status, run_point

EXECUTORS = ("local", "slurm")


def machine_description() -> str:
    """Host, OS, CPU count and GPU names (nvidia-smi, when present): where the sweep ran."""
    gpus = ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        if out.returncode == 0 and names:
            gpus = ", GPUs: " + ", ".join(f"{names.count(n)}x {n}" for n in dict.fromkeys(names))
    except (OSError, subprocess.SubprocessError):
        pass
    return (f"{platform.node()} ({platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs{gpus})")


def run_local(todo: Sequence[str], commands: dict[str, list[str]], root: Path, parallel: int,
              env: dict[str, str], echo: Callable[[str], None],
              children: Children | None = None) -> tuple[dict[str, dict], bool]:
    """Runs the points as child processes, `parallel` at a time; `children.terminate` (the
    sweep's SIGTERM/SIGINT handler, see `main`) stops them all and starts no other."""
    statuses: dict[str, dict] = {}
    children = children or Children()

    def one(name: str) -> dict:
        status = run_point([*launcher(), *commands[name]], root / name, env, children)
        echo_status(echo, name, status, root / name)
        return status

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(one, name): name for name in todo}
        for future in concurrent.futures.as_completed(futures):
            statuses[futures[future]] = future.result()
    return statuses, children.stopping


def check_finished_points(root: Path, points, commands: dict[str, list[str]],
                          point_flags: Sequence[str]) -> None:
    """Refuses (one ValueError line) to re-run a sweep whose finished points trained another
    config than this command's (other experiment args or --config overrides): they would be
    skipped as finished and reported under the new args. `--force` keeps them as they are (a
    warning); `--extend` lets a longer run length through (those points then run on)."""
    force, extend = "--force" in point_flags, "--extend" in point_flags
    changed = {}
    for name, _ in points:
        if rundir.is_finished(root / name):
            diffs = plan_lib.finished_config_changes(root / name, commands[name], extend)
            if diffs:
                changed[name] = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:4]) + (
                    f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    if not changed:
        return
    listing = "; ".join(f"{name} ({what})" for name, what in changed.items())
    if force:
        print(f"WARNING: --force: finished point(s) trained with another config are kept as "
              f"they are and reported under this sweep's args: {listing}", flush=True)
        return
    raise ValueError(
        f"{root} holds finished point(s) trained with another config than this command's: "
        f"{listing}. Refusing to report them under the new args: give the new args a new "
        f"--workdir, or pass --force to keep those results as they are.")


@workdir_lock.locked("sweep", check_only_arg="dry_run")  # one sweep per DIR (a dry run: checked)
def main(config_arg: str, workdir: str, *, dry_run: bool = False, parallel: int = 1,
         overrides: Sequence[str] = (), executor: str = "local",
         slurm_flags: dict[str, Any] | None = None, submitit_cluster: str = "slurm",
         point_flags: Sequence[str] = ()) -> int:
    """Runs (or with dry_run prints) every point of a sweep file; returns 0 when all finished.

    overrides: --config.* flags, and point_flags: other launcher flags (plan.point_flags: --force,
    --xla_cpu_flags, ...), both added to every point's command (printed by a dry run too).

    executor: "local" (child processes) or "slurm" (one submitit job per point; its resources
    from the experiment's get_slurm(arg) and `slurm_flags`). `submitit_cluster="local"` runs the
    same jobs through submitit's local executor (the tests do).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"--sweep_executor={executor!r}: valid values are {', '.join(EXECUTORS)}")
    if parallel < 1:
        raise ValueError(f"--sweep_parallel={parallel}: give 1 or more processes")
    if not workdir:
        raise ValueError("--workdir is empty: give the sweep's directory")
    for flag in overrides:
        if not flag.startswith(("--config.", "--noconfig.")):
            raise ValueError(f"sweep override {flag!r}: only --config.FIELD=VALUE flags are passed on")
    points = plan_lib.get_points(config_arg)
    commands = {name: [*plan_lib.point_command(config_arg, workdir, name, ov, overrides),
                       *point_flags]
                for name, ov in points}  # validates every point before anything runs
    plan_lib.preflight(config_arg, points, overrides, check_data=not dry_run)
    slurm_settings = None
    if executor == "slurm":
        from cnn_jax.sweep import slurm

        slurm_settings = slurm.settings(config_arg, slurm_flags or {})  # fails before writing
        if not dry_run:
            slurm.check_cluster(submitit_cluster)
        if slurm_settings["nodes"] > 1:
            commands = {n: [*c, "--multihost"] for n, c in commands.items()}
    root = Path(files.user_path(workdir))  # as the points and the lock read it: `~` expanded
    if not dry_run:
        check_finished_points(root, points, commands, point_flags)
    root.mkdir(parents=True, exist_ok=True)
    plan = {"config": config_arg, "overrides": list(overrides), "flags": list(point_flags),
            "executor": executor,
            "points": [{"name": name, "axes": ov, "command": display_command(commands[name])}
                       for name, ov in points]}
    if slurm_settings:
        plan["slurm"] = slurm_settings
    previous = rundir.read_json(root / rundir.SWEEP_FILE) or {}
    if "last_run" in previous:
        plan["last_run"] = previous["last_run"]
    rundir.write_json(root / rundir.SWEEP_FILE, plan)
    if dry_run:
        for name, _ in points:
            print(display_command(commands[name]))
        return 0

    children = Children()  # SIGTERM or Ctrl-C from here on stops the sweep, with its report
    previous_handlers = children.install()
    try:
        return _run(points, commands, root, plan, config_arg, parallel, executor,
                    slurm_settings, submitit_cluster, children)
    finally:
        Children.restore(previous_handlers)


def _run(points, commands: dict[str, list[str]], root: Path, plan: dict, config_arg: str,
         parallel: int, executor: str, slurm_settings: dict | None, submitit_cluster: str,
         children: Children) -> int:
    """Runs the points that are not finished, then writes the report; 0 when all finished."""
    lock = threading.Lock()

    def echo(msg: str) -> None:
        with lock:
            print(f"[sweep] {msg}", flush=True)

    todo = []
    for name, _ in points:
        if rundir.is_finished(root / name):
            echo(f"{name}: already finished, skipped")
        else:
            todo.append(name)
    where = (f"{parallel} at a time" if executor == "local"
             else f"as SLURM jobs ({parallel} at a time)")
    echo(f"{len(todo)} of {len(points)} points to run, {where}, in {root}")
    started = time.time()
    env = point_env(config_arg)
    if executor == "local":
        statuses, stopping = run_local(todo, commands, root, parallel, env, echo, children)
    else:
        from cnn_jax.sweep import slurm

        statuses, stopping = slurm.run_jobs(todo, commands, root, parallel, config_arg,
                                            slurm_settings, echo, cluster=submitit_cluster,
                                            children=children)
    if stopping or children.stopping:
        stopping = True
        echo(f"{children.signal_name}: running points were asked to checkpoint and stop; "
             f"points not started were left out. Re-run the same command to continue.")
    if todo:
        plan["last_run"] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "points_run": sum(st["status"] != "not started" for st in statuses.values()),
            "parallel": parallel, "executor": executor, "machine": machine_description()}
        rundir.write_json(root / rundir.SWEEP_FILE, plan)

    from cnn_jax import report  # late: matplotlib is only needed once the runs are done

    report.write_report(root)
    failed = sorted(n for n, s in statuses.items() if s["status"] not in ("finished", "not started"))
    echo(f"report written to {root}/summary.md" +
         (f"; {len(failed)} not finished: {', '.join(failed)}" if failed else ""))
    return 1 if failed or stopping else 0
