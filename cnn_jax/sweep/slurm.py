"""Sweep points as SLURM jobs, through submitit (one job per point, a job array per sweep).

Resources come from the experiment file's optional `get_slurm(arg) -> dict` and the launcher's
`--slurm_*` flags (the flags win). Keys:

    partition     str   the SLURM partition
    nodes         int   nodes per point (default 1); above 1 the point's processes, one per
                        node, run with --multihost, and jax.distributed.initialize() reads the
                        coordinator, process count and rank from SLURM's environment
    gpus_per_node int   GPUs per node (default 0)
    cpus_per_task int   CPU cores per process (default 1 per GPU, else 1)
    time_min      int   time limit in minutes (default 240)
    mem_gb        int   memory per node in GB (default: the partition's)
    sbatch        list  extra `#SBATCH` lines, e.g. ["--account=abc", "--qos=high"]
    setup         list  shell lines run before the point (e.g. "module load cuda")

The job runs the same point command as a local sweep (`python -m cnn_jax ...`) in a child
process, with the same `sweep_log.txt` and `sweep_status.json`, so resuming (re-run the sweep:
finished points are skipped, the others resume from their checkpoints) and the report are as for
local sweeps. Before a time limit or on a preemption SLURM signals the job; the run is sent
SIGTERM (it checkpoints and stops) and submitit requeues the job, which resumes the point from
that checkpoint (see PointJob). Re-running the sweep resumes whatever is left as well. submitit's files (the sbatch
scripts and the jobs' own logs) go to `DIR/.submitit/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from cnn_jax import rundir
from cnn_jax.sweep import plan as plan_lib
from cnn_jax.sweep.point import Children, echo_status, error_line, run_point

DEFAULTS: dict[str, Any] = {"partition": "", "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 0,
                            "time_min": 240, "mem_gb": 0, "sbatch": [], "setup": []}
SUBMITIT_DIR = ".submitit"


def settings(config_arg: str, flags: dict[str, Any]) -> dict[str, Any]:
    """The sweep's SLURM settings: DEFAULTS, then get_slurm(arg), then the non-empty flags."""
    path, arg = plan_lib.split_config_arg(config_arg)
    module = plan_lib.load_experiment(path)
    out = dict(DEFAULTS)
    if getattr(module, "get_slurm", None) is not None:
        own = plan_lib.call_with_arg(module, "get_slurm", path, arg)
        _check(own, f"{path}: get_slurm()")
        out.update(own)
    given = {k: v for k, v in flags.items() if v not in (None, "", [], ())}
    _check(given, "--slurm_* flags")
    out.update(given)
    for key in ("nodes", "time_min"):
        if int(out[key]) < 1:
            raise ValueError(f"SLURM {key}={out[key]!r}: give 1 or more")
    out["sbatch"] = [str(s) for s in out["sbatch"]]
    out["setup"] = [str(s) for s in out["setup"]]
    return out


def _check(values: dict[str, Any], where: str) -> None:
    if not isinstance(values, dict):
        raise ValueError(f"{where} returned {values!r}; give a dict, e.g. "
                         "{'partition': 'gpu', 'gpus_per_node': 8, 'time_min': 600}")
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown SLURM setting(s) {unknown}; valid: "
                         f"{', '.join(DEFAULTS)}")
    for key in ("sbatch", "setup"):
        if key in values and isinstance(values[key], str):
            raise ValueError(f"{where}: {key} must be a list of lines, not the string "
                             f"{values[key]!r}")


def check_cluster(cluster: str = "slurm") -> None:
    """Fails clearly when SLURM's commands are not on PATH (submitit needs sbatch and srun)."""
    missing = [c for c in ("sbatch", "srun") if cluster == "slurm" and shutil.which(c) is None]
    if missing:
        raise FileNotFoundError(
            f"--sweep_executor=slurm: {' and '.join(missing)} not found on PATH; run the sweep "
            "on a SLURM login node, or use --sweep_executor=local (or --sweep_dry_run to print "
            "the commands)")


def sbatch_parameters(lines: Sequence[str]) -> dict[str, Any]:
    """['--account=abc', '#SBATCH --qos high', '--exclusive'] -> {'account': 'abc', ...}."""
    out: dict[str, Any] = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip()
        if not text.startswith("--"):
            raise ValueError(f"sbatch line {line!r}: give a long option, e.g. --account=abc")
        key, sep, value = text[2:].partition("=")
        if not sep:
            key, _, value = key.partition(" ")
        out[key.strip().replace("-", "_")] = value.strip() or True
    return out


def _submitit():
    """submitit, imported without its logging.config.dictConfig (which would close the handlers
    of absl and of anyone else already logging); SUBMITIT_LOG_LEVEL set by the user wins."""
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    import submitit

    return submitit


def make_executor(folder: Path, s: dict[str, Any], parallel: int, name: str,
                  cluster: str = "slurm"):
    """A submitit executor for the settings `s` (cluster "local" runs the jobs on this host)."""
    executor = _submitit().AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {
        "name": name, "timeout_min": int(s["time_min"]), "nodes": int(s["nodes"]),
        "tasks_per_node": 1,  # one process per node; it drives all the node's GPUs
        "cpus_per_task": int(s["cpus_per_task"]) or max(1, int(s["gpus_per_node"])),
    }
    if s["gpus_per_node"]:
        params["gpus_per_node"] = int(s["gpus_per_node"])
    if s["mem_gb"]:
        params["mem_gb"] = int(s["mem_gb"])
    if cluster == "slurm":
        params["slurm_array_parallelism"] = parallel
        if s["partition"]:
            params["slurm_partition"] = s["partition"]
        if s["sbatch"]:
            params["slurm_additional_parameters"] = sbatch_parameters(s["sbatch"])
        if s["setup"]:
            params["slurm_setup"] = list(s["setup"])
    executor.update_parameters(**params)
    return executor


class PointJob:
    """What a job runs: the point's command, as a local sweep would (rank 0 keeps the log and the
    status; on a multi-node job every other rank runs the same command beside it).

    On a time limit or a preemption SLURM signals the job (USR2, `signal_delay_s` before the
    end); submitit then calls `checkpoint`, which asks the run to checkpoint and stop (SIGTERM,
    as a local sweep does), waits for it, and has submitit requeue the job: the point resumes
    from that checkpoint, under the same job id, while the sweep keeps waiting for it.
    """

    STOP_WAIT_S = 75  # within submitit's default signal_delay_s of 90 s

    def __init__(self, argv: list[str], run_dir: str, pythonpath: str):
        # Only PYTHONPATH travels: the run gets the node's own environment (SLURM's variables,
        # CUDA_VISIBLE_DEVICES), not a copy of the submitting host's.
        self.argv, self.run_dir, self.pythonpath = argv, run_dir, pythonpath
        self._children: Children | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_children"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _children=None)

    def __call__(self) -> dict:
        try:
            rank = _submitit().JobEnvironment().global_rank
        except RuntimeError:  # not inside a submitit job (called directly)
            rank = 0
        run_dir = Path(self.run_dir)
        env = plan_lib.with_pythonpath(self.pythonpath)
        if rank == 0:
            self._children = Children()
            return run_point(self.argv, run_dir, env, self._children)
        with open(run_dir / f"sweep_log.rank{rank}.txt", "a") as log:
            code = subprocess.call(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        return {"status": "finished" if code == 0 else "failed", "rank": rank}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Stops the running point (it checkpoints), then resubmits this same job."""
        children = self._children
        if children is not None:
            procs = list(children.procs)
            children.terminate()
            deadline = time.time() + self.STOP_WAIT_S
            for proc in procs:  # not proc.wait(): the interrupted main thread holds its lock
                while time.time() < deadline:
                    try:
                        if os.waitpid(proc.pid, os.WNOHANG)[0]:
                            break
                    except ChildProcessError:
                        break
                    time.sleep(0.5)
        return _submitit().helpers.DelayedSubmission(PointJob(self.argv, self.run_dir,
                                                                  self.pythonpath))


def submit(todo: Sequence[str], commands: dict[str, list[str]], root: Path, parallel: int,
           config_arg: str, s: dict[str, Any], cluster: str = "slurm") -> dict[str, Any]:
    """Submits one job per point (a job array); records each job id in the point's status."""
    pythonpath = plan_lib.experiment_root(plan_lib.split_config_arg(config_arg)[0])
    executor = make_executor(root / SUBMITIT_DIR, s, parallel, name=f"sweep-{root.name}",
                             cluster=cluster)
    jobs = []
    with executor.batch():
        for name in todo:
            (root / name).mkdir(parents=True, exist_ok=True)
            argv = [*plan_lib.launcher(), *commands[name]]
            jobs.append((name, executor.submit(PointJob(argv, str(root / name), pythonpath))))
    out = {}
    for name, job in jobs:
        rundir.write_json(root / name / rundir.STATUS_FILE, {
            "status": "submitted", "job_id": str(job.job_id),
            "command": plan_lib.shown_argv([*plan_lib.launcher(), *commands[name]])})
        out[name] = job
    return out


def _stop_jobs(jobs: dict[str, Any], cluster: str, echo: Callable[[str], None]) -> None:
    """The sweep was stopped (SIGTERM, Ctrl-C): each unfinished job's point is sent SIGTERM
    through `scancel --signal=TERM` (it checkpoints and stops; the job then ends with the point
    preempted). submitit's own cancel would kill the job outright."""
    ids = [str(job.job_id) for job in jobs.values() if not job.done()]
    if not ids:
        return
    if cluster == "slurm":
        subprocess.run(["scancel", "--signal=TERM", *ids], check=False)
        echo(f"sent SIGTERM to job(s) {', '.join(ids)}: their points checkpoint and stop")
    else:  # submitit's local cluster (tests): the job process takes SIGINT as a stop
        for job in jobs.values():
            if not job.done():
                job.cancel(check=False)


def wait(jobs: dict[str, Any], root: Path, echo: Callable[[str], None],
         children: Children | None = None, cluster: str = "slurm") -> dict[str, dict]:
    """Waits for every job; a job that died without recording its end (killed by SLURM, a node
    failure) is recorded as failed with submitit's reason. When `children.stopping` turns true
    (the sweep's SIGTERM/SIGINT handler) the unfinished jobs are asked to stop (`_stop_jobs`)."""
    statuses: dict[str, dict] = {}
    stopped = False
    while children is not None and not all(job.done() for job in jobs.values()):
        if children.stopping and not stopped:
            _stop_jobs(jobs, cluster, echo)
            stopped = True
        time.sleep(0.5)
    for name, job in jobs.items():
        try:
            status = job.result()
        except Exception as e:  # noqa: BLE001 - the job's failure becomes the point's status
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            line = error_line("\n".join(lines[-20:])) if lines else type(e).__name__
            status = {"status": "failed", "error": f"job {job.job_id}: {line}",
                      "job_id": str(job.job_id)}
            recorded = rundir.read_status(root / name) or {}
            if recorded.get("status") in (None, "submitted", "running"):
                rundir.write_json(root / name / rundir.STATUS_FILE, status)
        echo_status(echo, name, status, root / name)
        statuses[name] = status
    return statuses


def run_jobs(todo: Sequence[str], commands: dict[str, list[str]], root: Path, parallel: int,
             config_arg: str, s: dict[str, Any], echo: Callable[[str], None],
             cluster: str = "slurm", children: Children | None = None
             ) -> tuple[dict[str, dict], bool]:
    """Submits one job per point, then waits for them all (see `wait`); a SIGTERM/SIGINT to the
    sweep (`children.stopping`) before the submission submits nothing."""
    if not todo or (children is not None and children.stopping):
        return {}, bool(children is not None and children.stopping)
    jobs = submit(todo, commands, root, parallel, config_arg, s, cluster=cluster)
    echo(f"submitted {len(jobs)} job(s): " + ", ".join(f"{n}={j.job_id}" for n, j in jobs.items())
         + f"; submitit files in {root / SUBMITIT_DIR}")
    statuses = wait(jobs, root, echo, children, cluster)
    return statuses, bool(children is not None and children.stopping)
