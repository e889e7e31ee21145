"""The fault campaign: crashes, preemptions, corrupt files and hostile inputs against real runs.

    python -m tests.faults.campaign         # CI sample: 3 of the 10 SIGKILL steps, 1 distributed kill
    python -m tests.faults.campaign --full  # all ten SIGKILL steps, 2 distributed kills (make faults)
    python -m tests.faults.campaign --exec  # every run in a fresh `python launch.py` interpreter
    pytest tests/faults                     # the same scenario functions, one test each

Run from the repository root. This is tooling, not library: it lives beside its tests and its
tiny config, outside the `cnn_jax` package, which never imports it.

Each scenario is one function `scenario_*(campaign) -> Row`; the CLI prints the table and the
totals line "faults injected: N, survived: N, results lost: 0; hostile inputs: M, clear errors: M".
Runs are `launch.py` on a tiny MLP and synthetic 6x6x3 images (tests/faults/tiny_config.py).

How runs are started. By default a run is launch.py's `__main__` executed in a child forked from a
pre-imported interpreter (multiprocessing's forkserver, which never starts JAX itself): the same
code, argv, signals, exit codes and files as `python launch.py ...`, without paying the import of
TensorFlow/JAX (~10 CPU-seconds) per run. `--exec` starts a fresh interpreter per run instead.
Faults that need to reach inside a run (a save made slow to hit it with SIGTERM, a disk that is
full) are installed in the child before launch.py starts, by patching the Python functions through
which Orbax writes (see `_install_hooks`); nothing of the engine is changed. Those patches reach
private internals (orbax.checkpoint._src.path.atomicity, etils.epath.gpath._GPath), which may
move in any Orbax/etils release; they stay here, in the campaign, and nowhere in `cnn_jax/`.

--force semantics (scenario 8). A workdir remembers its run's resolved config. Resuming with a
config that differs in any field outside `checkpoint.RESUME_SAFE_FIELDS` (fields that only drive
the run: logging/eval/checkpoint cadence, keep counts, async saves, compilation cache,
steps_per_dispatch, eval batch size, flip TTA, eval/val split, max_bad_fraction, cache and tfds
locations), or on training data with another fingerprint, is refused with every difference listed
as `stored -> new` (`--extend` lets total_steps/num_epochs grow).
`--force` resumes anyway: the newest good checkpoint's arrays are loaded into the new config's
state and training continues from its step with the new config (new learning rate, new seed, ...);
config.json is rewritten. It cannot make arrays fit: a checkpoint whose arrays differ in shape or
structure from the new model/optimizer (another model, other widths, another optimizer) is still
refused, with the differing arrays listed. The run is then a different experiment, so it is not
bitwise reproducible from its config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent   # tests/faults
REPO = HERE.parent.parent
LAUNCH = REPO / "launch.py"
TINY_CONFIG = HERE / "tiny_config.py"
TINY_SWEEP = HERE / "tiny_sweep.py"
TOTAL_STEPS = 24          # of the tiny config; keep in sync with tests/faults/tiny_config.py
EVAL_STEPS = (12, 24)
KILL_STEPS_SEED = 6       # the ten SIGKILL steps are drawn from this seed
CI_KILLS = 3              # how many of them the CI sample (without --full) runs
PRELOAD = ("jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint", "tensorflow",
           "clu.metric_writers", "ml_collections.config_flags", "absl.app", "absl.flags",
           "cnn_jax.train", "cnn_jax.data", "cnn_jax.models", "cnn_jax.sweep", "cnn_jax.report",
           "cnn_jax.summary")
TIMING_KEYS = ("img_per_s", "wall_time", "seconds")


# ----------------------------------------------------------------------------------------------
# Rows and totals.


@dataclasses.dataclass
class Row:
    """One line of the campaign table, with what it counts towards the totals."""

    scenario: str
    injected: str
    expected: str
    observed: str
    passed: bool
    faults: int = 0          # faults injected
    survived: int = 0        # ... after which everything ended as expected
    lost: int = 0            # runs whose state or results could not be recovered exactly
                             # (a resume that failed or differs, a good checkpoint lost)
    hostile: int = 0         # hostile inputs tried
    clear: int = 0           # ... that ended in a clear error naming the field
    details: str = ""        # long text (every unclear case) shown below the table


def totals_line(rows: Sequence[Row]) -> str:
    """'faults injected: N, survived: N, results lost: 0; hostile inputs: M, clear errors: M'."""
    f = sum(r.faults for r in rows)
    s = sum(r.survived for r in rows)
    lost = sum(r.lost for r in rows)
    h = sum(r.hostile for r in rows)
    c = sum(r.clear for r in rows)
    return (f"faults injected: {f}, survived: {s}, results lost: {lost}; "
            f"hostile inputs: {h}, clear errors: {c}")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def format_table(rows: Sequence[Row]) -> str:
    """The campaign as a Markdown table."""
    lines = ["| scenario | injected how | expected | observed | pass |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_cell(r.scenario)} | {_cell(r.injected)} | {_cell(r.expected)} | "
                     f"{_cell(r.observed)} | {'PASS' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Starting runs.


def _step_of(name: str) -> int | None:
    """Checkpoint step of a directory name: '8' or '8.orbax-checkpoint-tmp-123' -> 8."""
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _checkpoint_step_in(path: str) -> int | None:
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "checkpoints":
            return _step_of(parts[i + 1])
    return None


def _install_hooks(hooks: dict) -> None:
    """Faults that act inside a run, installed in its process before launch.py starts.

    slow_save {from_step, seconds, marker}: the commit of the first save of a step >= from_step
        (Orbax's rename of its temporary directory) waits `seconds`, after writing `marker`;
    enospc {from_step}: every file write of Orbax into a checkpoint of a step >= from_step fails
        with OSError(ENOSPC), as on a full disk;
    fork_points: a sweep runs its points in forked children instead of new interpreters;
    heartbeat_s: jax.distributed.initialize declares a process dead after this many seconds
        without a heartbeat (launch.py has no flag for it; JAX's default is 100 s).
    """
    if "heartbeat_s" in hooks:
        import functools

        import jax
        jax.distributed.initialize = functools.partial(
            jax.distributed.initialize, heartbeat_timeout_seconds=int(hooks["heartbeat_s"]))
    if "slow_save" in hooks:
        import asyncio

        from orbax.checkpoint._src.path import atomicity
        spec = hooks["slow_save"]
        original = atomicity.AtomicRenameTemporaryPath.finalize
        fired = []

        async def slow_finalize(self, *args, **kwargs):
            step = _step_of(Path(str(self._final_path)).name)
            if not fired and step is not None and step >= spec["from_step"]:
                fired.append(step)
                # Written whole, then renamed: the campaign polls for the marker and reads it.
                partial = Path(spec["marker"] + ".partial")
                partial.write_text(f"{step} {self.get()}\n")
                os.replace(partial, spec["marker"])
                await asyncio.sleep(spec["seconds"])
            return await original(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
    if "enospc" in hooks:
        from etils.epath import gpath
        spec = hooks["enospc"]
        original_open = gpath._GPath.open

        def full_disk_open(self, mode="r", **kwargs):
            step = _checkpoint_step_in(str(self))
            if any(c in mode for c in "wax+") and step is not None and step >= spec["from_step"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return original_open(self, mode, **kwargs)

        gpath._GPath.open = full_disk_open
    if hooks.get("fork_points"):
        from cnn_jax.sweep import point
        point.subprocess = _ForkingSubprocess()


_LAUNCH_FLAGS = ("config", "workdir", "mode", "force", "extend", "images", "multihost",
                 "coordinator_address", "num_processes", "process_id", "sweep", "sweep_dry_run",
                 "sweep_parallel")


class _ForkedPopen:
    """A `subprocess.Popen` of `python launch.py ARGS` that forks this (pre-imported) process."""

    def __init__(self, argv, stdout=None, stderr=None, stdin=None, **kwargs):
        self.args = argv
        self.returncode: int | None = None
        sys.stdout.flush()
        sys.stderr.flush()
        out = stdout.fileno() if hasattr(stdout, "fileno") else None
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)  # as in a fresh interpreter
                if out is not None:
                    os.dup2(out, 1)
                    if stderr is subprocess.STDOUT:
                        os.dup2(out, 2)
                if stdin is subprocess.DEVNULL:
                    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                from absl import flags
                for name in _LAUNCH_FLAGS:  # the driver's parsed launch.py flags
                    if name in flags.FLAGS:
                        delattr(flags.FLAGS, name)
                flags.FLAGS.unparse_flags()
                code = _run_launch(list(argv[_launcher_len(argv):]))
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _ForkingSubprocess:
    """Stands in for the `subprocess` module inside a sweep driver: `Popen` and `run` of
    launch.py fork the driver (it has imported everything, and never starts JAX itself)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def _is_launch(argv) -> bool:
        return isinstance(argv, (list, tuple)) and _launcher_len(argv) > 0

    def Popen(self, argv, **kwargs):  # noqa: N802 - the subprocess API
        if self._is_launch(argv):
            return _ForkedPopen(argv, **kwargs)
        return subprocess.Popen(argv, **kwargs)

    def run(self, argv, **kwargs):
        if self._is_launch(argv) and "timeout" not in kwargs:
            proc = _ForkedPopen(argv, **kwargs)
            return subprocess.CompletedProcess(argv, proc.wait())
        return subprocess.run(argv, **kwargs)


def _launcher_len(argv) -> int:
    """How many leading items of `argv` start a run: 3 for `python -m cnn_jax` (how a sweep
    starts its points), 2 for `python launch.py`, 0 for anything else."""
    argv = [str(a) for a in argv]
    if argv[1:3] == ["-m", "cnn_jax"]:
        return 3
    if len(argv) >= 2 and Path(argv[1]).resolve() == LAUNCH:
        return 2
    return 0


def _run_launch(args: list[str]) -> int:
    """Runs launch.py as `__main__` with `args` in this process; returns its exit status."""
    import runpy
    import traceback
    sys.argv = [str(LAUNCH), *args]
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    code = 0
    try:
        runpy.run_path(str(LAUNCH), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - an uncaught error ends the run like in a real process
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _child_main(args: list[str], log_path: str, env: dict[str, str], hooks: dict) -> None:
    """Body of a forked run: own session, output to `log_path`, hooks, then launch.py."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    os.chdir(env.get("FAULTS_CWD", str(REPO)))
    _install_hooks(hooks)
    code = _run_launch(args)
    os._exit(code)


def _exec_entry() -> None:
    """`python -c` entry of --exec runs that need hooks: argv[1] is a JSON of (args, hooks)."""
    args, hooks = json.loads(sys.argv[1])
    _install_hooks(hooks)
    sys.exit(_run_launch(args))


class Run:
    """A started run: its pid, exit status and output."""

    def __init__(self, handle: Any, log: Path):
        self._handle = handle
        self.log = log
        self.pid: int = handle.pid

    def poll(self) -> int | None:
        if isinstance(self._handle, subprocess.Popen):
            return self._handle.poll()
        return None if self._handle.is_alive() else self._handle.exitcode

    def wait(self, timeout: float | None = None) -> int | None:
        """Exit status (negative: killed by that signal), or None if still running at timeout."""
        if isinstance(self._handle, subprocess.Popen):
            try:
                return self._handle.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        self._handle.join(timeout)
        return self._handle.exitcode

    def signal(self, sig: int, group: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the run's whole process group (it and anything it started)."""
        self.signal(signal.SIGKILL, group=True)
        self.wait(30)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _module_name() -> str:
    """This module's importable name (tests.faults.campaign), also when it runs as __main__."""
    spec = globals().get("__spec__")
    name = spec.name if spec is not None else __name__
    return "tests.faults.campaign" if name == "__main__" else name


class Launcher:
    """Starts launch.py runs: forked from a pre-imported interpreter, or `python launch.py`."""

    def __init__(self, exec_mode: bool = False):
        self.exec_mode = exec_mode
        self._ctx = None
        self.env = {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
                    "CUDA_VISIBLE_DEVICES": ""}

    def _context(self):
        if self._ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            for key, value in self.env.items():  # read by JAX when the server imports it
                os.environ.setdefault(key, value)
            if str(REPO) not in sys.path:  # the server imports this module as tests.faults...
                sys.path.insert(0, str(REPO))
            ctx.set_forkserver_preload(list(PRELOAD) + [_module_name()])
            self._ctx = ctx
        return self._ctx

    def start(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None,
              hooks: dict | None = None, real: bool = False) -> Run:
        """Starts `launch.py *args`, stdout+stderr to `log`; `real`: in a new interpreter."""
        env = {**self.env, **(env or {})}
        hooks = hooks or {}
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.exec_mode or real:
            if hooks:
                argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                        f"from {_module_name()} import _exec_entry; _exec_entry()",
                        json.dumps([list(args), hooks])]
            else:
                argv = [sys.executable, str(LAUNCH), *args]
            with open(log, "ab") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=env.get("FAULTS_CWD", REPO),
                                        env={**os.environ, **env}, start_new_session=True)
            return Run(proc, log)
        this = importlib.import_module(_module_name())  # not __main__ under python -m
        proc = self._context().Process(target=this._child_main,
                                       args=(list(args), str(log), env, hooks), daemon=False)
        # The child needs nothing of this process's __main__ (pytest, a script): hide it so that
        # multiprocessing does not re-import it in every child.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            proc.start()
        finally:
            sys.modules["__main__"] = main
        return Run(proc, log)

    def run(self, args: Sequence[str], log: Path, timeout: float = 300,
            **kwargs) -> tuple[int | None, str]:
        """Runs to the end (killed after `timeout` s: status None); returns (status, output)."""
        run = self.start(args, log, **kwargs)
        code = run.wait(timeout)
        if code is None:
            run.kill()
        return code, run.text()


# ----------------------------------------------------------------------------------------------
# The campaign: a root directory, a launcher and the uninterrupted reference run.


class Campaign:
    """Shared state of the scenarios: where runs go, how they start, the reference run."""

    def __init__(self, root: str | os.PathLike, *, full: bool = False, exec_mode: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.full = full
        self.launcher = Launcher(exec_mode=exec_mode)
        self._reference: Path | None = None
        self._count = 0

    def workdir(self, name: str) -> Path:
        """A fresh directory under the campaign root."""
        self._count += 1
        path = self.root / f"{self._count:03d}_{name}"
        path.mkdir(parents=True)
        return path

    def tiny_args(self, workdir: Path, *extra: str) -> list[str]:
        return [f"--config={TINY_CONFIG}", f"--workdir={workdir}", *extra]

    def train(self, workdir: Path, *extra: str, log_name: str = "run.log",
              timeout: float = 300, **kwargs) -> tuple[int | None, str]:
        """Trains the tiny config in `workdir` to the end (or until it fails)."""
        return self.launcher.run(self.tiny_args(workdir, *extra), workdir.parent /
                                 f"{workdir.name}.{log_name}", timeout=timeout, **kwargs)

    def start(self, workdir: Path, *extra: str, log_name: str = "run.log", **kwargs) -> Run:
        return self.launcher.start(self.tiny_args(workdir, *extra),
                                   workdir.parent / f"{workdir.name}.{log_name}", **kwargs)

    def reference(self) -> Path:
        """Workdir of one uninterrupted run of the tiny config (made once per campaign)."""
        if self._reference is None:
            workdir = self.workdir("reference")
            code, out = self.train(workdir)
            if code != 0 or not is_finished(workdir):
                raise RuntimeError(f"The uninterrupted reference run failed (status {code}):\n"
                                   f"{_tail(out)}")
            self._reference = workdir
        return self._reference


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def is_finished(workdir: Path) -> bool:
    try:
        return json.loads((workdir / "results.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def logged_steps(workdir: Path, split: str = "train") -> list[int]:
    """Steps of the records of `split` in metrics.jsonl, in file order (torn lines skipped)."""
    out = []
    try:
        text = (workdir / "metrics.jsonl").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        with contextlib.suppress(ValueError, AttributeError, KeyError):
            record = json.loads(line)
            if record.get("split") == split:
                out.append(int(record["step"]))
    return out


def wait_for_step(run: Run, workdir: Path, step: int, timeout: float = 120) -> int | None:
    """Waits until metrics.jsonl logs a train step >= `step`; the newest step (None: run ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = logged_steps(workdir)
        if steps and max(steps) >= step:
            return max(steps)
        if run.poll() is not None:
            return None
        time.sleep(0.003)
    return None


def checkpoint_steps(workdir: Path) -> list[int]:
    """Complete checkpoints as the engine sees them."""
    from cnn_jax.train import checkpoint as ckpt
    return ckpt.checkpoint_steps(str(workdir))


def checkpoint_dirs(workdir: Path) -> list[str]:
    """Everything in DIR/checkpoints (complete and temporary), for the observed column."""
    with contextlib.suppress(OSError):
        return sorted(os.listdir(workdir / "checkpoints"), key=lambda n: (_step_of(n) or -1, n))
    return []


def final_state(workdir: Path) -> tuple[int, dict]:
    """(step, {path: array}) of the newest readable checkpoint: params, opt state, BN, EMA, rng."""
    import jax
    import numpy as np
    from cnn_jax.train import checkpoint as ckpt
    store = ckpt.CheckpointStore(str(workdir), read_only=True)
    try:
        tree, _, step, _ = ckpt.newest_readable(store, None)
    finally:
        store.close()
    flat = {ckpt._path_str(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    return step, flat


def state_difference(a: Path, b: Path) -> str:
    """'' when the newest checkpoints of two workdirs are bitwise equal, else what differs."""
    import numpy as np
    step_a, ta = final_state(a)
    step_b, tb = final_state(b)
    if step_a != step_b:
        return f"newest checkpoint steps differ: {step_a} vs {step_b}"
    if set(ta) != set(tb):
        return f"state arrays differ: {sorted(set(ta) ^ set(tb))[:4]}"

    def raw(x):
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    bad = [k for k in ta if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape
           or not np.array_equal(raw(ta[k]), raw(tb[k]))]
    if bad:
        return f"{len(bad)} of {len(ta)} arrays differ bitwise (e.g. {', '.join(bad[:3])})"
    return ""


def metrics_difference(workdir: Path, reference: Path) -> str:
    """'' when metrics.jsonl holds each (step, split) once and values equal the reference's."""
    from cnn_jax.train.metrics import read_jsonl

    def records(d: Path) -> tuple[list[tuple[int, str]], dict]:
        recs = read_jsonl(str(d / "metrics.jsonl"))
        keys = [(int(r["step"]), str(r["split"])) for r in recs]
        values = {(int(r["step"]), str(r["split"])):
                  {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in recs}
        return keys, values

    keys, values = records(workdir)
    ref_keys, ref_values = records(reference)
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        return f"duplicated records in metrics.jsonl: {dup[:5]}"
    missing = sorted(set(ref_keys) - set(keys))
    extra = sorted(set(keys) - set(ref_keys))
    if missing or extra:
        return f"metrics.jsonl missing {missing[:5]} / unexpected {extra[:5]}"
    train = [s for s, split in keys if split == "train"]
    if train != list(range(1, TOTAL_STEPS + 1)):
        return f"train steps out of order: {train}"
    differ = [k for k in keys if values[k] != ref_values[k]]
    if differ:
        return f"metric values differ from the uninterrupted run at {differ[:5]}"
    return ""


def compare_to_reference(workdir: Path, reference: Path) -> str:
    """'' when a run ended exactly like the uninterrupted one (state, metrics, results)."""
    if not is_finished(workdir):
        return "results.json does not say finished"
    return state_difference(workdir, reference) or metrics_difference(workdir, reference)


# ----------------------------------------------------------------------------------------------
# Scenario 1: SIGKILL at a random step.


def kill_steps(n: int = 10, seed: int = KILL_STEPS_SEED) -> list[int]:
    """`n` different steps in [2, TOTAL_STEPS - 1], drawn from a fixed seed."""
    import random
    return sorted(random.Random(seed).sample(range(2, TOTAL_STEPS), n))


def ci_kill_steps() -> list[int]:
    """The CI sample: CI_KILLS of the ten steps, spread over the run."""
    steps = kill_steps()
    return [steps[i * (len(steps) - 1) // (CI_KILLS - 1)] for i in range(CI_KILLS)]


def scenario_sigkill(c: Campaign, steps: Sequence[int] | None = None) -> Row:
    """SIGKILL once a run has logged step k, re-run the command: equal to the uninterrupted run."""
    steps = list(steps if steps is not None else (kill_steps() if c.full else ci_kill_steps()))
    reference = c.reference()
    notes, survived, lost = [], 0, 0
    for k in steps:
        workdir = c.workdir(f"sigkill_{k}")
        run = c.start(workdir)
        at = wait_for_step(run, workdir, k)
        run.signal(signal.SIGKILL)
        status = run.wait(30)
        if at is None or status != -signal.SIGKILL:
            notes.append(f"k={k}: run ended before the kill (status {status})")
            continue
        complete = checkpoint_steps(workdir)
        code, out = c.train(workdir, log_name="resume.log")
        diff = (compare_to_reference(workdir, reference) if code == 0
                else f"resume exited {code}: {_last_line(out)}")
        resumed = f"step {complete[-1]}" if complete else "scratch (no complete checkpoint yet)"
        if not diff and (not complete or f"Resuming from checkpoint step {complete[-1]}" in out):
            survived += 1
            notes.append(f"k={k}: killed after step {at}, resumed from {resumed}: equal")
        else:
            lost += bool(diff)
            notes.append(f"k={k}: killed after step {at}, resumed from {resumed}: "
                         f"{diff or 'no resume line'}")
    return Row(
        scenario=f"1. SIGKILL at a random step ({len(steps)} "
                 f"step{'s' if len(steps) > 1 else ''}{'' if c.full else ', CI sample'})",
        injected=f"SIGKILL once metrics.jsonl shows step k, k in {steps}; same command re-run",
        expected="resumes from the newest complete checkpoint; final params, optimizer state, BN "
                 "stats, EMA, rng bitwise equal to an uninterrupted run; metrics.jsonl has every "
                 "step once with equal values",
        observed="; ".join(notes), passed=survived == len(steps), faults=len(steps),
        survived=survived, lost=lost)


# ----------------------------------------------------------------------------------------------
# Scenario 2: SIGTERM (and SIGKILL) while an asynchronous checkpoint save is being committed.


def _tmp_checkpoints(workdir: Path) -> list[str]:
    return [n for n in checkpoint_dirs(workdir) if "tmp" in n]


def scenario_signal_during_save(c: Campaign) -> Row:
    """A save made slow (its commit waits 2 s); SIGTERM, then separately SIGKILL, during it."""
    reference = c.reference()
    notes, survived, lost, faults = [], 0, 0, 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        faults += 1
        name = signal.Signals(sig).name
        workdir = c.workdir(f"save_{name.lower()}")
        marker = workdir.parent / f"{workdir.name}.saving"
        run = c.start(workdir, hooks={"slow_save": {"from_step": 8, "seconds": 2.0,
                                                   "marker": str(marker)}})
        deadline = time.time() + 120
        while not marker.exists() and run.poll() is None and time.time() < deadline:
            time.sleep(0.003)
        if not marker.exists():
            run.kill()
            notes.append(f"{name}: the slow save never started")
            continue
        saving = int(marker.read_text().split()[0])
        run.signal(sig)
        status = run.wait(60)
        out = run.text()
        complete = checkpoint_steps(workdir)
        problems: list[str] = []
        damaged = False
        if sig == signal.SIGTERM:
            stopped = [ln for ln in out.splitlines() if ln.startswith("Stopped by SIGTERM at step")]
            if status != 0:
                problems.append(f"exit status {status}: {_last_line(out)}")
            if not stopped:
                problems.append("no 'Stopped by SIGTERM' line")
            else:
                at = int(stopped[-1].split()[5].rstrip(":"))
                if not complete or complete[-1] != at:
                    problems.append(f"stopped at {at} but complete checkpoints are {complete}")
                if saving not in complete:
                    problems.append(f"the save of step {saving} in progress was not completed")
            if _tmp_checkpoints(workdir):
                problems.append(f"temporary checkpoints left: {_tmp_checkpoints(workdir)}")
            what = (f"SIGTERM during the commit of step {saving}: exit {status}, "
                    f"complete {complete}, tmp {_tmp_checkpoints(workdir)}")
        else:
            if status != -signal.SIGKILL:
                problems.append(f"exit status {status}")
            if saving in complete:
                problems.append(f"the half-written step {saving} is listed as complete")
                damaged = True
            what = (f"SIGKILL during the commit of step {saving}: left {checkpoint_dirs(workdir)}, "
                    f"complete {complete}")
        code, out = c.train(workdir, log_name="resume.log")
        resumed = complete[-1] if complete else 0
        if code != 0:
            problems.append(f"resume exited {code}: {_last_line(out)}")
            damaged = True
        else:
            if complete and f"Resuming from checkpoint step {resumed}" not in out:
                problems.append(f"resume did not start from step {resumed}")
            diff = compare_to_reference(workdir, reference)
            if diff:
                problems.append(diff)
                damaged = True
        lost += damaged
        if problems:
            notes.append(f"{what}; FAILED: {'; '.join(problems)}")
        else:
            survived += 1
            notes.append(f"{what}; resumed from {resumed or 'scratch'}, final state equal")
    return Row(
        scenario="2. SIGTERM / SIGKILL during an asynchronous checkpoint save",
        injected="Orbax's commit (rename of the temporary directory) of the save of step >= 8 "
                 "made to wait 2 s; the signal is sent while it waits",
        expected="SIGTERM: exit 0 after the pending save completes and a final checkpoint at the "
                 "stop step, no temporary directory left; SIGKILL: the half-written save is never "
                 "listed as a checkpoint; both resume to a final state bitwise equal to the "
                 "uninterrupted run",
        observed="; ".join(notes), passed=survived == faults, faults=faults, survived=survived,
        lost=lost)


# ----------------------------------------------------------------------------------------------
# Scenario 4: the disk fills up during a save.


def scenario_disk_full(c: Campaign) -> Row:
    """Every Orbax write into checkpoints of step >= 12 fails with ENOSPC; then space returns."""
    reference = c.reference()
    workdir = c.workdir("enospc")
    full_from = 12
    code, out = c.train(workdir, hooks={"enospc": {"from_step": full_from}})
    complete = checkpoint_steps(workdir)
    problems = []
    error_lines = [ln for ln in out.splitlines() if "No space left on device" in ln]
    # Orbax logs its own tracebacks of the failed background write; what matters is how the
    # run ends: launch.py's one ERROR line, not an uncaught exception.
    clean = _last_line(out).startswith("ERROR") and "No space left on device" in _last_line(out)
    if code == 0 or code is None:
        problems.append(f"the run did not stop (status {code})")
    if not error_lines:
        problems.append("no message names 'No space left on device'")
    if not clean:
        problems.append(f"not a clean ERROR line (an uncaught traceback ends the output): "
                        f"last line {_last_line(out)[:160]!r}")
    damage = []
    if any(s >= full_from for s in complete):
        damage.append(f"a checkpoint written while the disk was full is listed: {complete}")
    expected_intact = [s for s in (4, 8) if s < full_from]
    if [s for s in complete if s < full_from] != expected_intact[-2:]:
        damage.append(f"earlier checkpoints not intact: {complete}")
    intact = ""
    try:
        step, _ = final_state(workdir)
        intact = f"newest readable {step}"
    except Exception as e:  # noqa: BLE001 - reported in the row
        damage.append(f"earlier checkpoint unreadable: {type(e).__name__}: {e}")
    first = (_last_line(out) if clean else error_lines[0].strip() if error_lines
             else _last_line(out))[:240]
    code2, out2 = c.train(workdir, log_name="resume.log")
    if code2 != 0:
        damage.append(f"resume after space returned exited {code2}: {_last_line(out2)}")
    else:
        diff = compare_to_reference(workdir, reference)
        if diff:
            damage.append(f"after resume: {diff}")
    problems += damage
    observed = (f"exit {code}; message {first!r}; checkpoints kept {complete} ({intact}); "
                f"re-run with space: exit {code2}"
                + (f"; FAILED: {'; '.join(problems)}" if problems else ", final state equal"))
    ok = not problems
    return Row(
        scenario="4. Disk full (ENOSPC) during a save",
        injected=f"every Orbax file write into a checkpoint of step >= {full_from} raises "
                 "OSError(ENOSPC) (Python-level writes: metadata, meta item, commit marker)",
        expected="the run stops, non-zero exit, one clear ERROR line naming 'No space left on "
                 "device' (no traceback); earlier checkpoints intact and readable; the same "
                 "command resumes once space returns and ends bitwise equal to the uninterrupted "
                 "run",
        observed=observed, passed=ok, faults=1, survived=int(ok), lost=int(bool(damage)))


# ----------------------------------------------------------------------------------------------
# Scenario 5: one process of a two-process jax.distributed run killed.

HEARTBEAT_S = 10                      # heartbeat timeout given to jax.distributed (hook)
SURVIVOR_BOUND_S = HEARTBEAT_S + 35   # the survivor must have stopped by then
_PEER_DIED = ("another task died", "Connection reset by peer", "heartbeat", "Gloo",
              "coordination service", "task has failed", "preempted")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_pair(c: Campaign, workdir: Path, tag: str) -> list[Run]:
    port = _free_port()
    return [c.start(workdir, "--multihost", f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}", log_name=f"{tag}.p{i}.log",
                    hooks={"heartbeat_s": HEARTBEAT_S}) for i in range(2)]


def _cause_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if any(p in line for p in _PEER_DIED):
            return line.strip()
    return ""


def scenario_distributed_kill(c: Campaign, plan: Sequence[tuple[int, int]] | None = None) -> Row:
    """2 processes on localhost: SIGKILL process 1 after step 8, re-run both; with --full also
    SIGKILL process 0 (the coordinator) after step 16, re-run both; the last re-run finishes."""
    import numpy as np
    reference = c.reference()
    workdir = c.workdir("distributed")
    plan = list(plan if plan is not None else ([(1, 8), (0, 16)] if c.full else [(1, 8)]))
    notes, survived, lost = [], 0, 0
    for round_, (victim, step) in enumerate(plan):
        runs = _start_pair(c, workdir, f"round{round_}")
        at = wait_for_step(runs[0], workdir, step, timeout=240)
        if at is None:
            for r in runs:
                r.kill()
            notes.append(f"kill p{victim}: the pair ended before step {step} "
                         f"({_last_line(runs[0].text())})")
            continue
        runs[victim].signal(signal.SIGKILL)
        killed = time.time()
        other = runs[1 - victim]
        status = other.wait(SURVIVOR_BOUND_S)
        took = time.time() - killed
        runs[victim].wait(10)
        text = other.text()
        cause = _cause_line(text)
        if status is None:
            other.kill()
            notes.append(f"kill p{victim} after step {at}: p{1 - victim} still running after "
                         f"{SURVIVOR_BOUND_S}s (hang)")
            continue
        ok = status != 0 and bool(cause)
        tb = " (after a traceback)" if "Traceback" in text or "Check failure" in text else ""
        survived += ok
        notes.append(f"kill p{victim} after step {at}: p{1 - victim} stopped in {took:.1f}s, "
                     f"status {status}, cause {cause[:140]!r}{tb}")
    runs = _start_pair(c, workdir, "final")
    codes = [r.wait(300) for r in runs]
    for r in runs:
        if r.poll() is None:
            r.kill()
    out = runs[0].text()
    resumed = [ln for ln in out.splitlines() if ln.startswith("Resuming from checkpoint step")]
    problems = []
    if codes != [0, 0]:
        problems.append(f"re-run of both exited {codes}: {_last_line(out)}")
    if not resumed:
        problems.append("the re-run did not resume from a checkpoint")
    train = logged_steps(workdir)
    if train != list(range(1, TOTAL_STEPS + 1)):
        problems.append(f"metrics.jsonl train steps {train}")
    closeness = ""
    if not problems:
        _, mine = final_state(workdir)
        _, ref = final_state(reference)
        worst = max(float(np.max(np.abs(mine[k].astype(np.float64) - ref[k].astype(np.float64))))
                    for k in ref if k.startswith("params/"))
        closeness = f", params within {worst:.1e} of the 1-process run"
    if problems:
        lost += 1
    notes.append("re-run of both: " + ("; ".join(problems) if problems else
                                       f"{resumed[-1].split(' in ')[0].lower()}, finished, every "
                                       f"step logged once{closeness}"))
    faults = len(plan)
    return Row(
        scenario="5. One process of a 2-process jax.distributed run killed",
        injected=f"launch.py --multihost x2 on localhost (heartbeat timeout {HEARTBEAT_S}s); "
                 + "; ".join(f"SIGKILL process {v}{' (coordinator)' if v == 0 else ''} after "
                             f"step {k}, re-run both" for v, k in plan),
        expected=f"the other process stops within {SURVIVOR_BOUND_S}s with an error naming the "
                 "dead peer (no hang); re-running both resumes from the newest checkpoint and "
                 "finishes with every step logged once",
        observed="; ".join(notes), passed=survived == faults and not problems, faults=faults,
        survived=survived if not problems else 0, lost=lost)


# ----------------------------------------------------------------------------------------------
# Scenario 6: a sweep killed in the middle of a point, and a point that crashes.


def _summary_rows(sweep_dir: Path) -> dict[str, dict]:
    import csv
    try:
        with open(sweep_dir / "summary.csv", newline="") as f:
            return {row["point"]: row for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return {}


def _sweep_args(sweep_dir: Path, points: str = "") -> list[str]:
    config = f"{TINY_CONFIG}:points={points}" if points else str(TINY_CONFIG)
    return [f"--config={config}", f"--workdir={sweep_dir}", "--sweep"]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def scenario_sweep_kill(c: Campaign) -> Row:
    """Sweep points `crash` (its loss overflows) then `alpha`; SIGKILL to the whole sweep (driver
    and point) mid-`alpha`, then the same sweep command re-run."""
    reference = c.reference()
    sweep_dir = c.workdir("sweep_kill")
    alpha = sweep_dir / "alpha"
    args = _sweep_args(sweep_dir)
    hooks = {} if c.launcher.exec_mode else {"fork_points": True}
    log = sweep_dir.parent / f"{sweep_dir.name}.sweep.log"
    problems = []
    run = c.launcher.start(args, log, hooks=hooks)
    at = wait_for_step(run, alpha, 10, timeout=300)
    run.kill()  # SIGKILL to the process group: the sweep driver and its running point
    killed = checkpoint_steps(alpha)
    if at is None:
        problems.append(f"the sweep ended before alpha reached step 10: {_last_line(run.text())}")
    started_after_crash = "crash: FAILED" in run.text()
    code, out = c.launcher.run(args, log, hooks=hooks, timeout=600)
    rows = _summary_rows(sweep_dir)
    if not started_after_crash:
        problems.append("alpha did not start after crash failed")
    if code != 1:
        problems.append(f"re-run exit status {code} (expected 1: one point failed)")
    crash = rows.get("crash", {})
    if crash.get("status") != "failed":
        problems.append(f"report row of crash: {crash}")
    elif "Non-finite" not in crash.get("error", ""):
        problems.append(f"crash's error line does not say why: {crash.get('error')!r}")
    alpha_done = rows.get("alpha", {}).get("status") == "finished"
    if not alpha_done:
        problems.append(f"report row of alpha: {rows.get('alpha')}")
    alpha_log = _read(alpha / "sweep_log.txt")
    if killed and f"Resuming from checkpoint step {killed[-1]}" not in alpha_log:
        problems.append(f"alpha did not resume from step {killed[-1]}")
    diff = compare_to_reference(alpha, reference) if alpha_done else "not finished"
    if alpha_done and diff:
        problems.append(f"alpha: {diff}")
    md = _read(sweep_dir / "summary.md")
    if "crash" not in md or "failed" not in md:
        problems.append("summary.md does not mark crash as failed")
    ok = not problems
    observed = (f"crash failed, alpha started; sweep killed after alpha logged step {at} "
                f"(complete checkpoints {killed}); re-run: exit {code}, report: crash "
                f"{crash.get('status')} ({crash.get('error', '')[:80]!r}), alpha "
                f"{rows.get('alpha', {}).get('status')}"
                + (", alpha resumed and bitwise equal to the uninterrupted run" if ok else
                   f"; FAILED: {'; '.join(problems)}"))
    return Row(
        scenario="6a. Sweep killed mid-point; a point that crashes",
        injected="sweep of 2 points: `crash` (lr 1e30, the loss overflows) then `alpha`; SIGKILL "
                 "to the sweep's process group (driver + running point) once alpha logged step "
                 "10; the sweep command re-run",
        expected="alpha starts after crash failed; the re-run runs crash again (fails), resumes "
                 "alpha from its newest checkpoint to the end (bitwise equal to the "
                 "uninterrupted run), writes the report with crash marked failed with its "
                 "error line and alpha finished; exit status 1",
        observed=observed, passed=ok, faults=2, survived=2 if ok else 0, lost=int(bool(diff)))


def scenario_sweep_sigterm(c: Campaign) -> Row:
    """SIGTERM to a sweep driver (a scheduler's preemption notice) mid-point, then re-run."""
    reference = c.reference()
    sweep_dir = c.workdir("sweep_sigterm")
    alpha = sweep_dir / "alpha"
    args = _sweep_args(sweep_dir, points="alpha")
    hooks = {} if c.launcher.exec_mode else {"fork_points": True}
    log = sweep_dir.parent / f"{sweep_dir.name}.sweep.log"
    problems = []
    run = c.launcher.start(args, log, hooks=hooks)
    at = wait_for_step(run, alpha, 6, timeout=300)
    run.signal(signal.SIGTERM)  # the driver only
    code = run.wait(120)
    if code is None:
        run.kill()
    first = _summary_rows(sweep_dir).get("alpha", {})
    stopped = checkpoint_steps(alpha)
    if at is None:
        problems.append("alpha ended before step 6")
    if first.get("status") != "preempted":
        problems.append(f"after SIGTERM the report says alpha {first.get('status')!r} "
                        f"({first.get('error', '')[:120]!r}), not 'preempted'")
    if not stopped:
        problems.append("no checkpoint after SIGTERM")
    code2, _ = c.launcher.run(args, log, hooks=hooks, timeout=600)
    second = _summary_rows(sweep_dir).get("alpha", {})
    diff = compare_to_reference(alpha, reference)
    if code2 != 0 or second.get("status") != "finished":
        problems.append(f"re-run: exit {code2}, alpha {second.get('status')!r}")
    elif stopped and (f"Resuming from checkpoint step {stopped[-1]}"
                      not in _read(alpha / "sweep_log.txt")):
        problems.append(f"alpha did not resume from step {stopped[-1]}")
    elif diff:
        problems.append(f"alpha: {diff}")
    ok = not problems
    observed = (f"SIGTERM after alpha logged step {at}: sweep exit {code}, alpha checkpoints "
                f"{stopped}, report alpha {first.get('status')!r}; re-run: exit {code2}, alpha "
                f"{second.get('status')!r}"
                + ("; bitwise equal to the uninterrupted run" if ok else
                   f"; FAILED: {'; '.join(problems)}"))
    return Row(
        scenario="6b. SIGTERM to a sweep mid-point",
        injected="sweep of point `alpha`; SIGTERM to the sweep driver only once alpha logged "
                 "step 6; the sweep command re-run",
        expected="the driver passes SIGTERM on; alpha checkpoints and stops; the report marks "
                 "alpha preempted; the re-run resumes it to the end, bitwise equal to the "
                 "uninterrupted run",
        observed=observed, passed=ok, faults=1, survived=int(ok), lost=int(bool(diff)))


# ----------------------------------------------------------------------------------------------
# Scenario 12: two writers on one directory (two runs on one workdir, two sweeps on one DIR).


def _second_while_first_is_frozen(c: Campaign, args: list[str], directory: Path, log: Path
                                  ) -> tuple[int | None, str, int | None, str]:
    """Starts `args`, waits until it holds `directory`'s lock, freezes it (SIGSTOP), runs the
    same command a second time, thaws the first and lets it end: (second's status and output,
    first's status and output)."""
    from cnn_jax import workdir_lock

    first = c.launcher.start(args, log.with_suffix(".first.log"))
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        holder = workdir_lock.live_holder(directory)
        if holder and holder.get("pid") == first.pid:
            break
        time.sleep(0.05)
    first.signal(signal.SIGSTOP)
    try:
        code2, out2 = c.launcher.run(args, log.with_suffix(".second.log"), timeout=300)
    finally:
        first.signal(signal.SIGCONT)
    code1 = first.wait(600)
    return code2, out2, code1, first.text()


def scenario_concurrency(c: Campaign) -> Row:
    """The same run twice on one workdir, the same sweep twice on one directory, the second
    started while the first holds the directory: refused at once, the first's results intact."""
    reference = c.reference()
    problems, lost, seen = [], 0, []
    run_dir = c.workdir("two_runs")
    sweep_dir = c.workdir("two_sweeps")
    for directory, args, result_dir in (
            (run_dir, c.tiny_args(run_dir), run_dir),
            (sweep_dir, _sweep_args(sweep_dir, points="alpha"), sweep_dir / "alpha")):
        code2, out2, code1, out1 = _second_while_first_is_frozen(
            c, args, directory, directory.parent / directory.name)
        errors = [ln for ln in out2.splitlines() if ln.startswith("ERROR:")]
        if code2 != 1 or len(errors) != 1 or "in use by a live" not in errors[0]:
            problems.append(f"{directory.name}: second exit {code2}, {errors or _last_line(out2)}")
        diff = (compare_to_reference(result_dir, reference) if is_finished(result_dir) else
                f"not finished (exit {code1}: {_last_line(out1)})")
        if diff:
            problems.append(f"{directory.name}: first run {diff}")
            lost += 1
        seen.append(f"{directory.name}: second exit {code2} ({(errors or [''])[0][:90]}), first "
                    f"exit {code1}{', bitwise equal to the uninterrupted run' if not diff else ''}")
    ok = not problems
    return Row(
        scenario="12. Two writers on one directory",
        injected="the tiny run started twice on one workdir, and the one-point sweep twice on "
                 "one directory, the second while the first holds the lock (the first frozen "
                 "with SIGSTOP meanwhile)",
        expected="the second is refused at once with one ERROR line naming the live holder; the "
                 "first finishes, bitwise equal to the uninterrupted run",
        observed="; ".join(seen) + ("" if ok else f"; FAILED: {'; '.join(problems)}"),
        passed=ok, faults=2, survived=2 if ok else 0, lost=lost)


# ----------------------------------------------------------------------------------------------
# In-process helpers: the tiny config as an object, a run with captured output.


def tiny_config(arg: str | None = None, **fields: Any):
    """The tiny config (tests/faults/tiny_config.py) with dotted-field overrides."""
    import importlib.util
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("_faults_tiny_config", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.compilation_cache = False  # no global JAX setting changed in this process
    config.update_from_flattened_dict(fields)
    return config


@contextlib.contextmanager
def captured():
    """Captures stdout, stderr and absl warnings of in-process calls into one StringIO."""
    import io
    import logging as py_logging
    buf = io.StringIO()
    handler = py_logging.StreamHandler(buf)
    handler.setLevel(py_logging.WARNING)
    root = py_logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        root.removeHandler(handler)


def train_in_process(config, workdir: Path, force: bool = False) -> tuple[Any, str]:
    """(results dict or the exception raised, output) of train_and_evaluate in this process."""
    from cnn_jax import train
    with captured() as buf:
        try:
            result: Any = train.train_and_evaluate(config, str(workdir), force=force)
        except Exception as e:  # noqa: BLE001 - the caller judges the exception
            result = e
    return result, buf.getvalue()


def copy_run(c: Campaign, source: Path, name: str) -> Path:
    import shutil
    target = c.workdir(name)
    target.rmdir()
    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------------------------
# Scenario 3: the newest checkpoint damaged.


def _largest_file(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _damage(step_dir: Path, kind: str) -> str:
    """Damages a checkpoint directory in place; says what was done."""
    if kind == "truncated":
        target = _largest_file(step_dir / "state")
        size = target.stat().st_size
        # A quarter is kept: OCDBT data files can end in bytes no array of this step refers to
        # (seen once in twelve runs with a cut at half, which then restored intact).
        with open(target, "r+b") as f:
            f.truncate(size // 4)
        return f"{target.relative_to(step_dir)} truncated {size} -> {size // 4} bytes"
    if kind == "deleted":
        target = _largest_file(step_dir / "state")
        target.unlink()
        return f"{target.relative_to(step_dir)} deleted"
    if kind == "flipped":
        target = _largest_file(step_dir / "state")
        data = bytearray(target.read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 16):
            data[i] ^= 0xFF
        target.write_bytes(bytes(data))
        return f"16 bytes of {target.relative_to(step_dir)} flipped"
    if kind == "meta_flipped":
        target = step_dir / "meta" / "metadata"
        data = bytearray(target.read_bytes())
        for i in range(0, len(data), max(1, len(data) // 8)):
            data[i] ^= 0x5A
        target.write_bytes(bytes(data))
        return f"8 bytes of {target.relative_to(step_dir)} flipped"
    raise ValueError(f"unknown damage {kind!r}")


DAMAGES = ("truncated", "deleted", "flipped", "meta_flipped")


def scenario_corrupt_checkpoint(c: Campaign, kinds: Sequence[str] = DAMAGES) -> Row:
    """Damage the newest checkpoint of a finished run, then re-run its command."""
    reference = c.reference()
    newest = checkpoint_steps(reference)
    notes, survived, lost = [], 0, 0
    for kind in kinds:
        workdir = copy_run(c, reference, f"corrupt_{kind}")
        (workdir / "results.json").unlink()  # as if killed just after the last save
        what = _damage(workdir / "checkpoints" / str(newest[-1]), kind)
        code, out = c.train(workdir)
        warnings = [ln.strip() for ln in out.splitlines()
                    if ln.startswith("WARNING: checkpoint step") and "unreadable" in ln]
        problems = []
        intact = (code == 0 and not warnings and kind == "truncated"
                  and f"Resuming from checkpoint step {newest[-1]}" in out
                  and not compare_to_reference(workdir, reference))
        if intact:
            # Every restored array matched its stored checksum, so the cut bytes held none of
            # them, and the run ended bitwise equal: nothing was damaged that the run reads.
            survived += 1
            notes.append(f"{what}: the cut bytes held no array of the step (every array matched "
                         f"its checksum); resumed from {newest[-1]}, bitwise equal")
            continue
        if code != 0:
            problems.append(f"exit {code}: {_last_line(out)[:200]}")
        if not warnings:
            problems.append("no warning")
        else:
            reason = warnings[0].split("unreadable (", 1)[-1]
            if f"step {newest[-1]}" not in warnings[0] or len(reason) < 25:
                problems.append(f"the warning does not say what was wrong: {warnings[0][:200]!r}")
        if f"Resuming from checkpoint step {newest[-2]}" not in out:
            problems.append(f"did not resume from the previous checkpoint {newest[-2]}")
        if not (workdir / "checkpoints_corrupt" / str(newest[-1])).is_dir():
            problems.append("the damaged checkpoint was not kept aside in checkpoints_corrupt/")
        if not problems:
            diff = compare_to_reference(workdir, reference)
            if diff:
                problems.append(diff)
        warn = warnings[0][:260] if warnings else ""
        if problems:
            lost += not is_finished(workdir) or bool(compare_to_reference(workdir, reference))
            notes.append(f"{what}: FAILED: {'; '.join(problems)}")
        else:
            survived += 1
            notes.append(f"{what}: warned {warn!r}; resumed from {newest[-2]}, bitwise equal")
    return Row(
        scenario="3. Newest checkpoint truncated / file deleted / bytes flipped",
        injected=f"on a copy of a finished run (results.json removed), checkpoint {newest[-1]}: "
                 "largest array file truncated to a quarter, deleted, 16 bytes flipped; meta JSON "
                 "bytes flipped; the same config resumed",
        expected=f"a WARNING naming step {newest[-1]} and what was wrong; resume from "
                 f"{newest[-2]}; the damaged one moved to checkpoints_corrupt/; final state and "
                 "metrics bitwise equal to the uninterrupted run",
        observed="; ".join(notes), passed=survived == len(kinds), faults=len(kinds),
        survived=survived, lost=lost)


# ----------------------------------------------------------------------------------------------
# Scenario 8: a checkpoint from another model, or a changed config.


def _replace_model(config, name: str, **fields: Any):
    import ml_collections
    config.model = ml_collections.ConfigDict({"name": name, "bn_sync": True, **fields})
    return config


def _refusal_cases() -> list[tuple[str, Callable[[], Any], list[str]]]:
    """(what changed, config factory, fields the refusal must list)."""
    return [
        ("optim.lr 0.05 -> 0.1", lambda: tiny_config(**{"optim.lr": 0.1}), ["optim.lr"]),
        ("model.hidden_sizes (16,) -> (32,)", lambda: tiny_config(**{"model.hidden_sizes": (32,)}),
         ["model.hidden_sizes"]),
        ("another model: resnet20", lambda: _replace_model(tiny_config(), "resnet20"),
         ["model.name", "model.hidden_sizes"]),
        ("optim.name sgd -> adamw", lambda: tiny_config(**{"optim.name": "adamw"}),
         ["optim.name"]),
        ("seed 0 -> 1", lambda: tiny_config(seed=1), ["seed"]),
        ("batch_size 16 -> 8", lambda: tiny_config(batch_size=8), ["batch_size"]),
        ("data.synthetic_num_classes 5 -> 7",
         lambda: tiny_config(**{"data.synthetic_num_classes": 7}), ["data.synthetic_num_classes"]),
        ("data.synthetic_shape (6, 6, 3) -> (6, 6, 1) and model.dropout 0.1 -> 0.2",
         lambda: tiny_config(**{"data.synthetic_shape": (6, 6, 1), "model.dropout": 0.2}),
         ["data.synthetic_shape", "model.dropout"]),
    ]


def _snapshot(workdir: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in workdir.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(workdir))] = (st.st_size, st.st_mtime_ns)
    return out


def scenario_config_change(c: Campaign) -> Row:
    """Resume a finished run with changed configs: refused, listing the fields; --force."""
    from cnn_jax.train import CheckpointError
    reference = c.reference()
    workdir = copy_run(c, reference, "config_change")
    before = _snapshot(workdir)
    notes, hostile, clear = [], 0, 0
    for what, make, fields in _refusal_cases():
        hostile += 1
        result, out = train_in_process(make(), workdir)
        msg = str(result) if isinstance(result, Exception) else ""
        listed = [f for f in fields if f"  {f}: stored " in msg]
        if isinstance(result, CheckpointError) and listed == fields and "--force" in msg:
            clear += 1
        else:
            notes.append(f"{what}: FAILED: {type(result).__name__}: {msg[:200] or result}")
    if _snapshot(workdir) != before:
        notes.append("FAILED: a refused resume changed files in the workdir")
        clear = min(clear, hostile - 1)
    notes.insert(0, f"{clear}/{hostile} changes refused with the differing fields listed "
                    f"(e.g. {_first_listing(workdir)})")

    # Fields that only drive the run may change.
    result, out = train_in_process(tiny_config(log_every_steps=2, eval_every_steps=6,
                                               keep_checkpoints=3), workdir)
    safe_ok = isinstance(result, dict) and result.get("status") == "finished"
    notes.append("log/eval cadence and keep_checkpoints changed: "
                 + ("accepted" if safe_ok else f"FAILED: {type(result).__name__}: {result}"))

    # --force with arrays that fit: resumes with the new config.
    forced = copy_run(c, reference, "config_force")
    code, out = c.train(forced, "--force", "--config.optim.lr=0.1", "--config.total_steps=28")
    stored = json.loads(_read(forced / "config.json") or "{}")
    results = json.loads(_read(forced / "results.json") or "{}")
    force_ok = (code == 0 and "WARNING: --force: resuming step 24" in out and "optim.lr" in out
                and results.get("step") == 28 and stored.get("optim", {}).get("lr") == 0.1)
    notes.append("--force, lr 0.05 -> 0.1 and 28 steps: " + (
        "resumed step 24 with a warning listing optim.lr, finished at 28, config.json updated"
        if force_ok else f"FAILED: exit {code}, {_last_line(out)[:200]}"))

    # --force with arrays that do not fit: still a clear refusal.
    hostile += 1
    result, out = train_in_process(tiny_config(**{"model.hidden_sizes": (32,)}), workdir,
                                   force=True)
    msg = str(result)
    if isinstance(result, ValueError) and "does not fit" in msg and "fc1" in msg:
        clear += 1
        notes.append(f"--force with hidden_sizes (32,): refused: {msg.split('(', 1)[0].strip()}")
    else:
        notes.append(f"--force with hidden_sizes (32,): FAILED: {type(result).__name__}: "
                     f"{msg[:200]}")

    # The command line: one ERROR, no traceback, exit 1.
    hostile += 1
    cli = copy_run(c, reference, "config_cli")
    code, out = c.train(cli, "--config.optim.lr=0.1")
    error = [ln for ln in out.splitlines() if ln.startswith("ERROR:")]
    if code == 1 and error and "Traceback" not in out and "optim.lr" in out:
        clear += 1
        notes.append(f"CLI: exit 1, {error[0][:110]!r} + the field list")
    else:
        notes.append(f"CLI: FAILED: exit {code}, {_last_line(out)[:200]}")
    ok = clear == hostile and safe_ok and force_ok
    return Row(
        scenario="8. Checkpoint from another model / changed config; --force",
        injected="a finished run resumed with 8 changed configs (lr, widths, another model, "
                 "optimizer, seed, batch, classes, data shape + dropout), with --force (arrays "
                 "fit / do not fit), and once from the command line",
        expected="refused with CheckpointError listing every differing field `stored -> new` and "
                 "how to proceed (--force), workdir untouched; run-driving fields may change; "
                 "--force resumes when the arrays fit (warning, new config used), else a "
                 "ValueError listing the differing arrays; CLI: exit 1, ERROR line, no traceback",
        observed="; ".join(notes), passed=ok, hostile=hostile, clear=clear)


def _first_listing(workdir: Path) -> str:
    result, _ = train_in_process(tiny_config(**{"optim.lr": 0.1}), workdir)
    lines = [ln.strip() for ln in str(result).splitlines() if ": stored " in ln]
    return lines[0] if lines else "-"


# ----------------------------------------------------------------------------------------------
# Scenario 9: a pickle planted where a checkpoint should be.


class _Planted:
    """Unpickling this object runs code that creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code from a checkpoint ran')",))


def planted_pickle(marker: Path) -> bytes:
    import pickle
    return pickle.dumps(_Planted(str(marker)))


@contextlib.contextmanager
def count_unpickling():
    """Counts calls of pickle.load/loads/Unpickler (and numpy's allow_pickle loads) meanwhile."""
    import pickle

    import numpy as np
    calls: list[str] = []
    saved = {name: getattr(pickle, name) for name in ("load", "loads", "Unpickler")}
    saved_np = np.load

    def spy(name):
        def inner(*args, **kwargs):
            calls.append(name)
            return saved[name](*args, **kwargs)
        return inner

    def np_load(*args, **kwargs):
        if kwargs.get("allow_pickle"):
            calls.append("numpy.load(allow_pickle=True)")
        return saved_np(*args, **kwargs)

    for name in saved:
        setattr(pickle, name, spy(name))
    np.load = np_load
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(pickle, name, fn)
        np.load = saved_np


def _plant(workdir: Path, kind: str, payload: bytes) -> str:
    import shutil
    root = workdir / "checkpoints"
    if kind == "new_step":
        step = root / "99"
        for sub in ("state", "meta"):
            (step / sub).mkdir(parents=True)
        for name in ("state/_METADATA", "state/manifest.ocdbt", "state/checkpoint",
                     "meta/metadata"):
            (step / name).write_bytes(payload)
        for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
            shutil.copy(root / "24" / name, step / name)
        return "checkpoints/99/ (looks committed) whose state and meta files are pickles"
    if kind == "replaced":
        for name in ("meta/metadata", "state/_METADATA", "state/manifest.ocdbt"):
            (root / "24" / name).write_bytes(payload)
        return "the newest checkpoint's meta/metadata, state/_METADATA, manifest.ocdbt replaced"
    if kind == "legacy":
        (root / "99").mkdir()
        (root / "99" / "checkpoint").write_bytes(payload)
        (root / "checkpoint_99").write_bytes(payload)
        (root / "99.pkl").write_bytes(payload)
        return "legacy-style files checkpoints/99/checkpoint, checkpoint_99, 99.pkl"
    raise ValueError(kind)


def scenario_pickle(c: Campaign) -> Row:
    """Plant pickles whose unpickling writes a marker; load through the engine's loaders."""
    import pickle

    from cnn_jax.train import checkpoint as ckpt
    reference = c.reference()
    probe = c.root / "pickle_probe.marker"
    pickle.loads(planted_pickle(probe))  # the payload is live: unpickling it runs code
    live = probe.exists()
    notes = [f"payload live (unpickling it writes a file): {live}"]
    survived, lost = 0, 0
    kinds = ("new_step", "replaced", "legacy")
    for kind in kinds:
        workdir = copy_run(c, reference, f"pickle_{kind}")
        marker = c.root / f"pickle_{kind}.marker"
        what = _plant(workdir, kind, planted_pickle(marker))
        loaded = []
        with count_unpickling() as calls, captured() as buf:
            for loader in ("load_latest", "newest_readable"):
                try:
                    if loader == "load_latest":
                        _, _, step = ckpt.load_latest(str(workdir))
                    else:
                        store = ckpt.CheckpointStore(str(workdir), read_only=True)
                        try:
                            step = ckpt.newest_readable(store, None)[2]
                        finally:
                            store.close()
                    loaded.append(f"{loader} -> step {step}")
                except Exception as e:  # noqa: BLE001 - a clean refusal is acceptable
                    loaded.append(f"{loader} -> {type(e).__name__}")
        expect = "20" if kind == "replaced" else "24"
        lost += not all(x.endswith(f"step {expect}") for x in loaded)
        ok = (live and not marker.exists() and not calls
              and all(x.endswith(f"step {expect}") for x in loaded))
        survived += ok
        notes.append(f"{what}: {', '.join(loaded)}; marker "
                     f"{'CREATED' if marker.exists() else 'absent'}; unpickler calls "
                     f"{len(calls)}" + ("" if ok else " FAILED"))
    # The command line too: eval of a workdir whose newest step is a pickle.
    workdir = copy_run(c, reference, "pickle_cli")
    marker = c.root / "pickle_cli.marker"
    _plant(workdir, "new_step", planted_pickle(marker))
    code, out = c.launcher.run(c.tiny_args(workdir, "--mode=eval"),
                               workdir.parent / f"{workdir.name}.eval.log")
    cli_ok = code == 0 and "Eval of step 24" in out and not marker.exists()
    evaluated = "evaluated step 24" if "Eval of step 24" in out else _last_line(out)[:120]
    notes.append(f"launch.py --mode=eval: exit {code}, {evaluated}, marker "
                 f"{'CREATED' if marker.exists() else 'absent'}")
    faults = len(kinds) + 1
    survived += cli_ok
    lost += code != 0
    return Row(
        scenario="9. Loading never executes code from a checkpoint",
        injected="pickles whose unpickling writes a marker file: as a committed-looking step 99, "
                 "in place of the newest checkpoint's metadata files, as legacy single files; "
                 "loaded with load_latest, newest_readable (what resume calls) and --mode=eval",
        expected="no unpickler call, no marker; the planted step is skipped with a warning and the "
                 "newest real checkpoint is used (24, or 20 when 24's files were replaced)",
        observed="; ".join(notes), passed=survived == faults, faults=faults, survived=survived,
        lost=lost)


# ----------------------------------------------------------------------------------------------
# Scenario 7: hostile inputs, generated from a seed.

HOSTILE_SEED = 7
HOSTILE_GROUPS = {
    "config": "config values of wrong types, zero/negative/out-of-range numbers, misspelt "
              "names, impossible sizes and splits, given to the engine's setup and first batches",
    "model": "models built and summarised (eval_shape) with inputs smaller than their kernels "
             "and pools, zero/negative strides, kernels, widths, depths, unknown fields/names",
    "data": "IDX files with wrong magic/ndim/dtype, cut headers or data, trailing bytes, labels "
            "out of range, odd image sizes, broken gzip, missing files; image trees with "
            "corrupt/empty/truncated/odd-sized images, unknown classes, missing splits; "
            "iterators with batches not divisible by the processes",
    "cli": "launch.py command lines: bad/wrong-type/unknown config fields, unknown model and "
           "mode, a batch not divisible by 4 devices, a corrupt IDX file, a misspelt experiment",
}
CASE_TIMEOUT_S = 60
CLEAR_TYPES = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)


class _Hang(Exception):
    """A hostile case ran past CASE_TIMEOUT_S."""


@dataclasses.dataclass
class Hostile:
    """One hostile input: `run(case_dir)` must raise a clear error whose message names `token`."""

    group: str
    name: str
    token: str
    run: Callable[[Path], Any]


def _hostile_base() -> dict:
    config = tiny_config()
    config.total_steps = 2
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    return config.to_dict()


def _set(d: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    if value is _DELETE:
        d.pop(last, None)
    else:
        d[last] = value


_DELETE = object()


def _config_run(mutations: dict[str, Any]) -> Callable[[Path], Any]:
    """A case that trains the tiny config with `mutations` applied without type checks, as a
    hand-built or loosely edited experiment file would hand them to the engine."""

    def run(case_dir: Path) -> Any:
        import ml_collections

        from cnn_jax.train import loop
        d = _hostile_base()
        for key, value in mutations.items():
            _set(d, key, value)
        config = ml_collections.ConfigDict(d)
        with captured():
            # What train_and_evaluate does before its first step: validate the config, resolve
            # the data, build model and optimizer, draw the first training and evaluation
            # batches. An input that passes all of it would start a training run.
            setup = loop.Setup(config)
            next(loop._train_batches(setup, 0))
            split = config.data.val_split or config.data.eval_split
            it = setup.data_lib.create_eval_iterator(config.data, split,
                                                     global_batch_size=setup.eval_batch_size)
            return next(iter(it))
    return run


def _misspell(rng, name: str) -> str:
    """A near miss of a valid name: a dropped, doubled or swapped letter, or another case."""
    i = rng.randrange(len(name))
    choice = rng.randrange(4)
    if choice == 0 and len(name) > 1:
        return name[:i] + name[i + 1:]
    if choice == 1:
        return name[:i] + name[i] + name[i:]
    if choice == 2 and len(name) > 2:
        j = min(i, len(name) - 2)
        return name[:j] + name[j + 1] + name[j] + name[j + 2:]
    return name.upper() if name != name.upper() else name + "x"


def _config_cases(rng) -> list[Hostile]:
    cases: list[Hostile] = []

    def add(key: str, value: Any, token: str | None = None, **more: Any) -> None:
        mutations = {key: value, **more}
        label = ", ".join(f"{k}={v!r}" for k, v in mutations.items())
        cases.append(Hostile("config", label, token or key.rsplit(".", 1)[-1],
                             _config_run(mutations)))

    def wrong_types() -> list[Any]:
        return [rng.choice(["abc", "16", "", "1e3"]), None, [rng.randint(1, 9)],
                {"value": 1}, rng.choice([2.5, 0.5, 7.75])]

    positive = ("batch_size", "log_every_steps", "steps_per_dispatch", "keep_checkpoints")
    for key in positive:
        add(key, 0)
        add(key, -rng.randint(1, 10_000))
        for value in wrong_types() + [True]:
            add(key, value)
    for key in ("total_steps", "eval_every_steps", "checkpoint_every_steps", "seed",
                "eval_batch_size"):
        for value in wrong_types():
            add(key, value)
    for value in wrong_types()[:-1]:  # a fraction of an epoch is fine
        add("num_epochs", value, total_steps=-1)
    add("seed", -rng.randint(1, 99))
    add("num_epochs", 0, "num_epochs", total_steps=-1)
    add("num_epochs", -rng.randint(1, 5), "num_epochs", total_steps=-1)
    names = {"dtype": "float32", "parallel": "jit", "optim.name": "sgd",
             "optim.schedule": "cosine", "model.name": "mlp", "data.name": "synthetic",
             "data.normalize": "train_stats", "keep_best_metric": "top1",
             "model.norm": "batch", "model.activation": "relu",
             "optim.weight_decay_mode": "l2", "optim.milestone_unit": "epochs"}
    tokens = {"model.name": "model", "data.name": "data", "model.norm": "norm",
              "model.activation": "activation"}
    needs = {"optim.milestone_unit": {"optim.schedule": "multistep", "optim.milestones": (1,)}}
    for key, valid in names.items():
        token = tokens.get(key, key.rsplit(".", 1)[-1])
        for _ in range(3):
            add(key, _misspell(rng, valid), token, **needs.get(key, {}))
        add(key, rng.choice([3, 1.5, None, ["a"]]), token, **needs.get(key, {}))
    floats = {"ema_decay": [1.0, 1.5, -0.1], "label_smoothing": [1.0, -0.2, 2.0],
              "optim.lr": [-0.1, 0.0, float("nan"), float("inf")],
              "optim.momentum": [-0.5, 1.5], "optim.weight_decay": [-1e-4],
              "optim.warmup_epochs": [-1.0], "optim.gamma": [-0.5],
              "model.dropout": [1.0, 1.5, -0.1], "data.mixup_alpha": [-0.2],
              "data.cutmix_alpha": [-1.0], "data.max_bad_fraction": [1.5, -0.1],
              "optim.b1": [1.0, -0.1], "optim.eps": [-1e-8]}
    used_with = {"optim.gamma": {"optim.schedule": "multistep", "optim.milestones": (1,)},
                 "optim.b1": {"optim.name": "adam"}, "optim.eps": {"optim.name": "adam"}}
    for key, values in floats.items():
        for value in values:
            add(key, value, **used_with.get(key, {}))
        add(key, rng.choice(["fast", "0.1x", "none"]), **used_with.get(key, {}))
    sizes = {"data.synthetic_shape": [(0, 6, 3), (6, -2, 3), (6, 6), (6, 6, 3, 1), (6, 6, 0)],
             "data.synthetic_num_classes": [0, -3, 1.5],
             "data.synthetic_num_examples": [0, -5, 10],
             "data.crop_padding": [-1, -rng.randint(2, 50)], "data.shuffle_buffer": [0, -7],
             "data.image_size": ["big", 2.5], "model.hidden_sizes": [(0,), (-4,), (16, 0),
                                                                      ("wide",), 16.5]}
    for key, values in sizes.items():
        for value in values:
            token = "batch" if key == "data.synthetic_num_examples" and value == 10 else None
            add(key, value, token)
    add("data.train_split", "trian", "trian")
    add("data.train_split", "train[150%:]", "train[150%:]")
    add("data.eval_split", "test[:0]", "test[:0]")
    add("data.val_split", "validation", "validation")
    add("model.hiddensizes", (8,), "hiddensizes")
    add("model.depth", 20, "depth")
    return cases


def _model_run(name: str, input_shape: tuple[int, ...], **fields: Any) -> Callable[[Path], Any]:
    """A case of the model zoo's public entry points: build, then the summary (eval_shape)."""

    def run(case_dir: Path) -> Any:
        from cnn_jax import models, summary
        model = models.build(name, num_classes=fields.pop("num_classes", 10), **fields)
        return summary.summarize(model, input_shape)
    return run


def _model_cases(rng) -> list[Hostile]:
    cases: list[Hostile] = []

    def add(token: str, name: str, shape: tuple[int, ...], **fields: Any) -> None:
        label = f"{name} on {shape}" + "".join(f", {k}={v!r}" for k, v in fields.items())
        cases.append(Hostile("model", label, token, _model_run(name, shape, **dict(fields))))

    add("input", "lenet5", (3, 3, 1))
    add("input", "lenet5", (rng.randint(1, 8), rng.randint(1, 8), 1))
    add("input", "alexnet", (rng.randint(8, 40), rng.randint(8, 40), 3))
    add("input", "vgg11", (rng.randint(2, 16),) * 2 + (3,))
    add("input", "googlenet", (rng.randint(4, 20),) * 2 + (3,))
    add("input", "resnet18", (0, 8, 3))
    add("input", "mlp", (0, 4, 1))
    layer = (64, rng.randint(12, 40), 1, 0, False)
    add("kernel", "alexnet", (11, 11, 3), conv_layers=(layer,))
    add("stride", "alexnet", (32, 32, 3), conv_layers=((64, 3, 0, 1, False),))
    add("stride", "alexnet", (32, 32, 3), conv_layers=((64, 3, -2, 1, False),))
    add("kernel", "alexnet", (32, 32, 3), conv_layers=((64, 0, 1, 1, False),))
    add("features", "alexnet", (32, 32, 3), conv_layers=((0, 3, 1, 1, False),))
    add("pad", "alexnet", (32, 32, 3), conv_layers=((8, 3, 1, -3, False),))
    add("conv_layers", "alexnet", (32, 32, 3), conv_layers=((8, 3),))
    add("hidden_sizes", "mlp", (6, 6, 3), hidden_sizes=(0,))
    add("hidden_sizes", "mlp", (6, 6, 3), hidden_sizes=(-rng.randint(1, 99),))
    add("dropout", "mlp", (6, 6, 3), dropout=1.5)
    add("norm", "mlp", (6, 6, 3), norm=_misspell(rng, "batch"))
    add("activation", "mlp", (6, 6, 3), activation=_misspell(rng, "relu"))
    add("pool", "lenet5", (28, 28, 1), pool=_misspell(rng, "max"))
    add("depth", "resnet20", (8, 8, 3), depth=rng.choice([21, 7, 0]))
    add("shortcut", "resnet20", (8, 8, 3), shortcut="Z")
    add("block", "resnet18", (32, 32, 3), block="bottlenek")
    add("stage_sizes", "resnet18", (32, 32, 3), stage_sizes=(2, -1, 2, 2))
    add("stage_sizes", "vgg11", (32, 32, 3), stage_sizes=(1, -1))
    add("widths", "resnet20", (8, 8, 3), widths=(16, 0, 64))
    add("num_classes", "mlp", (6, 6, 3), num_classes=0)
    add("hidden_size", "mlp", (6, 6, 3), hidden_size=(8,))
    add("mpl", "mpl", (6, 6, 3))
    return cases


# IDX files (MNIST layout): magic 0x00000803 / 0x00000801, big-endian dims, then bytes.
def _idx_bytes(array) -> bytes:
    import numpy as np
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                        for d in array.shape)
    return header + array.tobytes()


def _write_idx_dir(directory: Path, rng, *, images_per_split: tuple[int, int] = (32, 16),
                   shape: tuple[int, int] = (28, 28)) -> dict[str, Path]:
    import numpy as np
    directory.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(rng.randrange(2**31))
    paths = {}
    for split, n in zip(("train", "t10k"), images_per_split):
        paths[f"{split}-images"] = directory / f"{split}-images-idx3-ubyte"
        paths[f"{split}-labels"] = directory / f"{split}-labels-idx1-ubyte"
        paths[f"{split}-images"].write_bytes(_idx_bytes(g.integers(0, 256, (n, *shape))))
        paths[f"{split}-labels"].write_bytes(_idx_bytes(g.integers(0, 10, n)))
    return paths


def _data_run(name: str, path_of: Callable[[Path], Path], **fields: Any) -> Callable[[Path], Any]:
    """A case of the data pipeline's public entry points: get_info, then a train and an eval
    batch of the configured splits."""

    def run(case_dir: Path) -> Any:
        import ml_collections

        from cnn_jax import data
        d = _hostile_base()["data"]
        d.update(name=name, path=str(path_of(case_dir)), **fields)
        cfg = ml_collections.ConfigDict(d)
        with captured():
            info = data.get_info(cfg)
            next(iter(data.create_train_iterator(cfg, global_batch_size=8, seed=0)))
            next(iter(data.create_eval_iterator(cfg, cfg.eval_split, global_batch_size=8)))
        return info
    return run


def _idx_case(label: str, token: str, damage: Callable[[dict[str, Path], Any], None], rng,
              **fields: Any) -> Hostile:
    seed = rng.randrange(2**31)

    def path_of(case_dir: Path) -> Path:
        import random
        r = random.Random(seed)
        paths = _write_idx_dir(case_dir / "idx", r)
        damage(paths, r)
        return case_dir / "idx"
    return Hostile("data", f"IDX: {label}", token,
                   _data_run("fashion_mnist", path_of, **fields))


def _rewrite(path: Path, fn: Callable[[bytes], bytes]) -> None:
    path.write_bytes(fn(path.read_bytes()))


def _idx_cases(rng) -> list[Hostile]:
    import gzip
    cases = []

    def magic(which: str, value: int):
        return lambda p, r: _rewrite(p[which], lambda b: value.to_bytes(4, "big") + b[4:])

    for which in ("train-images", "train-labels", "t10k-images"):
        for value in (rng.randrange(2**32), 0x00000801 if "images" in which else 0x00000803,
                      0x00000D03 if "images" in which else 0x00000D01, 0x08030000):
            cases.append(_idx_case(f"{which} magic 0x{value:08x}", which, magic(which, value),
                                   rng))
    for which in ("train-images", "train-labels"):
        for keep in (0, 2, 4, 7):
            cases.append(_idx_case(f"{which} cut to {keep} bytes (header)", which,
                                   lambda p, r, w=which, k=keep: _rewrite(p[w], lambda b: b[:k]),
                                   rng))
        cut = rng.randint(1, 200)
        cases.append(_idx_case(f"{which} missing its last {cut} data bytes", which,
                               lambda p, r, w=which, c=cut: _rewrite(p[w], lambda b: b[:-c]), rng))
        extra = rng.randint(1, 99)
        cases.append(_idx_case(f"{which} with {extra} bytes after the data", which,
                               lambda p, r, w=which, e=extra:
                               _rewrite(p[w], lambda b: b + b"\0" * e),
                               rng))
    for label in (10, rng.randint(11, 255)):
        def bad_label(p, r, v=label):
            _rewrite(p["train-labels"], lambda b: b[:8 + 5] + bytes([v]) + b[8 + 6:])
        cases.append(_idx_case(f"a train label of {label}", "label", bad_label, rng))
    cases.append(_idx_case("31 labels for 32 images", "train-labels",
                           lambda p, r: p["train-labels"].write_bytes(
                               _idx_bytes(list(range(10)) * 3 + [1])), rng))

    def odd(p, r):
        import numpy as np
        h, w = r.randint(3, 9), r.randint(3, 9)
        p["train-images"].write_bytes(_idx_bytes(np.zeros((32, h, w))))
        p["t10k-images"].write_bytes(_idx_bytes(np.zeros((16, h, w))))
    cases.append(_idx_case("images of an odd size (not 28x28)", "28", odd, rng))

    def gz_garbage(p, r):
        target = p["train-images"].with_name(p["train-images"].name + ".gz")
        target.write_bytes(bytes(r.randrange(256) for _ in range(64)))
        p["train-images"].unlink()
    cases.append(_idx_case("train-images .gz of random bytes", "train-images", gz_garbage, rng))

    def gz_truncated(p, r):
        data = gzip.compress(p["train-images"].read_bytes())
        target = p["train-images"].with_name(p["train-images"].name + ".gz")
        target.write_bytes(data[: len(data) // 2])
        p["train-images"].unlink()
    cases.append(_idx_case("train-images .gz cut in half", "train-images", gz_truncated, rng))
    cases.append(_idx_case("train-labels file missing", "train-labels",
                           lambda p, r: p["train-labels"].unlink(), rng))
    cases.append(_idx_case("t10k-images file missing", "test",
                           lambda p, r: p["t10k-images"].unlink(), rng))
    cases.append(_idx_case("empty train-images file", "train-images",
                           lambda p, r: p["train-images"].write_bytes(b""), rng))
    cases.append(Hostile("data", "IDX: data.path does not exist", "path",
                         _data_run("fashion_mnist", lambda d: d / "missing")))
    return cases


def _png_bytes(h: int, w: int, mode: str = "RGB", seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image
    g = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def _write_tree(root: Path, splits: dict[str, dict[str, int]], size=(8, 8)) -> None:
    for split, classes in splits.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{i:03d}.png").write_bytes(_png_bytes(*size, seed=i))


def _tree_case(label: str, token: str, build: Callable[[Path, Any], None], rng,
               **fields: Any) -> Hostile:
    seed = rng.randrange(2**31)

    def path_of(case_dir: Path) -> Path:
        import random
        root = case_dir / "tree"
        build(root, random.Random(seed))
        return root
    return Hostile("data", f"image tree: {label}", token,
                   _data_run("image_folder", path_of, **fields))


def _tree_cases(rng) -> list[Hostile]:
    good = {"train": {"cat": 8, "dog": 8}, "test": {"cat": 4, "dog": 4}}
    cases = []

    def with_file(split: str, cls: str, name: str, data: Callable[[Any], bytes]):
        def build(root: Path, r):
            _write_tree(root, good)
            (root / split / cls / name).write_bytes(data(r))
        return build

    junk = {
        "random bytes named .png": ("x.png", lambda r: bytes(r.randrange(256) for _ in range(200))),
        "an empty .jpg": ("x.jpg", lambda r: b""),
        "a PNG cut in half": ("x.png", lambda r: _png_bytes(8, 8)[:40]),
        "a text file named .jpeg": ("x.jpeg", lambda r: b"not an image\n" * 5),
        "a JPEG header then garbage": ("x.jpg", lambda r: b"\xff\xd8\xff\xe0" + bytes(60)),
    }
    for what, (name, data) in junk.items():
        for split in ("train", "test"):
            cases.append(_tree_case(f"{what} in {split}/cat, max_bad_fraction=0",
                                    "max_bad_fraction", with_file(split, "cat", name, data), rng,
                                    max_bad_fraction=0.0))

    def all_bad(root: Path, r):
        for split, classes in good.items():
            for cls, n in classes.items():
                (root / split / cls).mkdir(parents=True)
                for i in range(n):
                    (root / split / cls / f"{i}.png").write_bytes(bytes(r.randrange(256)
                                                                        for _ in range(30)))
    cases.append(_tree_case("every image unreadable", "image", all_bad, rng))

    def odd_sizes(root: Path, r):
        _write_tree(root, good)
        h, w = r.randint(3, 20), r.randint(3, 20)
        while (h, w) == (8, 8):
            h, w = r.randint(3, 20), r.randint(3, 20)
        (root / "train" / "dog" / "odd.png").write_bytes(_png_bytes(h, w))
    cases.append(_tree_case("one image of another size", "image_size", odd_sizes, rng))

    def tiny_and_tall(root: Path, r):
        _write_tree(root, good)
        (root / "train" / "cat" / "a.png").write_bytes(_png_bytes(1, 1))
        (root / "train" / "cat" / "b.png").write_bytes(_png_bytes(200, 3))
    cases.append(_tree_case("a 1x1 and a 200x3 image", "image_size", tiny_and_tall, rng))

    def extra_class(root: Path, r):
        _write_tree(root, {**good, "test": {**good["test"], "bird": 2}})
    cases.append(_tree_case("a test class not in train (label out of range)", "bird",
                            extra_class, rng))

    def empty_class(root: Path, r):
        _write_tree(root, good)
        (root / "train" / "fish").mkdir()
    cases.append(_tree_case("a class folder without images", "fish", empty_class, rng))
    cases.append(_tree_case("no test split", "test",
                            lambda root, r: _write_tree(root, {"train": good["train"]}), rng))
    cases.append(_tree_case("flat tree: class folders at the root", "train",
                            lambda root, r: _write_flat(root), rng))

    def no_classes(root: Path, r):
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir()
    cases.append(_tree_case("split folder without classes", "class", no_classes, rng))
    return cases


def _write_flat(root: Path) -> None:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            (root / cls / f"{i}.png").write_bytes(_png_bytes(8, 8, seed=i))


def _iterator_cases(rng) -> list[Hostile]:
    """Batch sizes that do not split over the processes, and bad process indices."""
    cases = []

    def run_with(batch: int, index: int, count: int, kind: str):
        def run(case_dir: Path) -> Any:
            import ml_collections

            from cnn_jax import data
            cfg = ml_collections.ConfigDict(_hostile_base()["data"])
            with captured():
                if kind == "train":
                    it = data.create_train_iterator(cfg, global_batch_size=batch, seed=0,
                                                    process_index=index, process_count=count)
                else:
                    it = data.create_eval_iterator(cfg, "test", global_batch_size=batch,
                                                   process_index=index, process_count=count)
                return next(iter(it))
        return run

    for kind in ("train", "eval"):
        for batch, count in ((16, 3), (rng.choice([5, 7, 9]), 2), (0, 1), (-8, 2)):
            cases.append(Hostile("data", f"{kind} iterator: global batch {batch} over {count} "
                                 "processes", "batch", run_with(batch, 0, count, kind)))
        cases.append(Hostile("data", f"{kind} iterator: process_index 2 of 2", "process_index",
                             run_with(16, 2, 2, kind)))
    return cases


def hostile_cases(seed: int = HOSTILE_SEED) -> list[Hostile]:
    """Every in-process hostile input of the campaign (deterministic for a seed)."""
    import random
    rng = random.Random(seed)
    return (_config_cases(rng) + _model_cases(rng) + _idx_cases(rng) + _tree_cases(rng)
            + _iterator_cases(rng))


def _innermost_file(exc: BaseException) -> str:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last or ""


def _files_outside(sandbox: Path, inside: Path) -> set[str]:
    out = set()
    for p in sandbox.rglob("*"):
        if not p.is_relative_to(inside):
            out.add(str(p))
    return out


def check_hostile(case: Hostile, case_dir: Path, sandbox: Path) -> tuple[bool, str]:
    """(clear?, what happened) for one case: a ValueError-style error raised by cnn_jax's own
    code whose message names the field, within CASE_TIMEOUT_S, nothing written outside."""
    case_dir.mkdir(parents=True, exist_ok=True)
    before = _files_outside(sandbox, case_dir)

    def alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
    error: BaseException | None = None
    try:
        case.run(case_dir)
    except _Hang:
        return False, f"no answer after {CASE_TIMEOUT_S}s (hang)"
    except Exception as e:  # noqa: BLE001 - judged below
        error = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    written = _files_outside(sandbox, case_dir) - before
    if written:
        return False, f"wrote outside its directory: {sorted(written)[:3]}"
    if error is None:
        return False, "accepted" + (" (training would start)" if case.group == "config"
                                    else " without an error")
    where = _innermost_file(error)
    own = str(REPO / "cnn_jax") in where or where == str(LAUNCH)
    msg = " ".join(str(error).split())
    desc = f"{type(error).__name__}: {msg[:150]}"
    if not isinstance(error, CLEAR_TYPES):
        return False, f"{desc} (not a ValueError-style error; raised in {_short(where)})"
    if not own:
        return False, f"{desc} (raised inside {_short(where)}, not by cnn_jax)"
    if case.token.lower() not in msg.lower():
        return False, f"{desc} (does not name {case.token!r})"
    return True, desc


def _short(path: str) -> str:
    return path.split("site-packages/")[-1] if "site-packages/" in path else path


@dataclasses.dataclass
class CliCase:
    """A hostile launch.py command line: it must exit non-zero with one ERROR line naming
    `token`, no traceback, nothing written outside its workdir."""

    name: str
    args: list[str]
    token: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    real: bool = False  # a fresh interpreter even when runs are forked


def _bad_idx_dir(directory: Path) -> Path:
    import random
    paths = _write_idx_dir(directory, random.Random(HOSTILE_SEED))
    paths["train-images"].write_bytes(b"\x00\x00\x08\x09" + bytes(40))
    return directory


def cli_cases() -> list[CliCase]:
    return [
        CliCase("--config.batch_size=-3", ["--config.batch_size=-3"], "batch_size"),
        CliCase("--config.batch_size=abc (wrong type)", ["--config.batch_size=abc"],
                "batch_size"),
        CliCase("--config.batch_sise=16 (unknown field)", ["--config.batch_sise=16"],
                "batch_sise"),
        CliCase("--config.model.name=lenet (unknown model)", ["--config.model.name=lenet"],
                "lenet5"),
        CliCase("--config.data.synthetic_shape='(0, 6, 3)'",
                ["--config.data.synthetic_shape=(0, 6, 3)"], "synthetic_shape"),
        CliCase("batch 18 on 4 devices", ["--config.batch_size=18"], "batch_size",
                {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}),
        CliCase("IDX images file with a wrong header",
                ["--config.data.name=fashion_mnist", "--config.data.path={BAD_IDX}"],
                "train-images"),
        CliCase("--config=.../experiments/lenet5_fashion_mnits.py (typo; fresh interpreter)",
                [f"--config={REPO}/experiments/lenet5_fashion_mnits.py"], "lenet5_fashion_mnist",
                real=True),
        CliCase("--mode=evaluate (unknown mode)", ["--mode=evaluate"], "mode"),
    ]


def check_cli(launcher: Launcher, case: CliCase, sandbox: Path) -> tuple[bool, str]:
    """(clear?, what happened) for one hostile command line, run with its own cwd and HOME."""
    cwd, home, workdir = sandbox / "cwd", sandbox / "home", sandbox / "workdir"
    for d in (cwd, home):
        d.mkdir(parents=True, exist_ok=True)
    args = [a.replace("{BAD_IDX}", str(_bad_idx_dir(sandbox / "bad_idx"))) if "{BAD_IDX}" in a
            else a for a in case.args]
    env = dict(case.env, HOME=str(home), FAULTS_CWD=str(cwd),
               CNN_JAX_CACHE=str(home / "jax_cache"))
    config = [] if any(a.startswith("--config=") for a in args) else [f"--config={TINY_CONFIG}"]
    code, out = launcher.run([*config, f"--workdir={workdir}", *args], sandbox / "run.log",
                             env=env, real=case.real, timeout=180)
    written = [str(p) for d in (cwd, home) for p in d.rglob("*")
               if not p.is_relative_to(home / "jax_cache")]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("ERROR", "FATAL"))]
    problems = []
    if code in (0, None):
        problems.append(f"exit {code}")
    if "Traceback" in out:
        problems.append("a traceback")
    if len(errors) != 1:
        problems.append(f"{len(errors)} ERROR/FATAL lines")
    elif case.token.lower() not in errors[0].lower():
        problems.append(f"the error does not name {case.token!r}")
    if written:
        problems.append(f"wrote outside the workdir: {written[:3]}")
    shown = errors[0] if errors else (lines[-1] if lines else "(no output)")
    desc = f"exit {code}: {shown[:150]}"
    return not problems, desc + (f" ({'; '.join(problems)})" if problems else "")


def scenario_hostile(c: Campaign, groups: Sequence[str] = ("config", "model", "data", "cli")
                     ) -> Row:
    """Hostile inputs: every case must end in a clear error naming the field."""
    sandbox = c.workdir("hostile_" + "_".join(groups))
    failures, total, clear = [], 0, 0
    examples = []
    for i, case in enumerate(hostile_cases()):
        if case.group not in groups:
            continue
        total += 1
        ok, desc = check_hostile(case, sandbox / f"case_{i:03d}", sandbox)
        clear += ok
        if ok and len(examples) < 2:
            examples.append(f"{case.name} -> {desc[:110]}")
        if not ok:
            failures.append(f"[{case.group}] {case.name} -> {desc}")
    if "cli" in groups:
        for n, case in enumerate(cli_cases()):
            total += 1
            ok, desc = check_cli(c.launcher, case, sandbox / f"cli_{n}")
            clear += ok
            if ok and len(examples) < 3:
                examples.append(f"CLI {case.name} -> {desc[:110]}")
            if not ok:
                failures.append(f"[cli] {case.name} -> {desc}")
    observed = f"{clear}/{total} clear (e.g. {'; '.join(examples)})"
    if failures:
        observed += f"; {len(failures)} UNCLEAR, listed below the table"
    what = "; ".join(HOSTILE_GROUPS[g] for g in groups)
    return Row(
        scenario=f"7. Hostile inputs: {', '.join(groups)}",
        injected=f"{total} inputs generated from seed {HOSTILE_SEED}: {what}",
        expected=("launch.py exits non-zero with one ERROR line naming the field, no traceback, "
                  "nothing written outside the workdir" if groups == ("cli",) else
                  "each ends in a ValueError-style error raised by cnn_jax's own code, naming "
                  f"the field, within {CASE_TIMEOUT_S}s, nothing written outside its directory"),
        observed=observed, passed=clear == total, hostile=total, clear=clear,
        details="\n".join(f"- {f}" for f in failures))


# ----------------------------------------------------------------------------------------------
# Scenario 10: divergence that stays finite (issue 13 item 2).


def scenario_divergence(c: Campaign) -> Row:
    """SGD at a constant lr 30 on the tiny MLP, a checkpoint every step: the loss explodes
    (finite) within a few steps. No checkpoint holding the diverged parameters may stay as the
    "last good" one, and the advice (a lower lr with --force) must then finish the run."""
    workdir = c.workdir("diverge")
    args = ["--config.optim.lr=30", "--config.optim.schedule=constant",
            "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3"]
    code, out = c.train(workdir, *args)
    last = _last_line(out)
    kept = checkpoint_steps(workdir)
    problems = []
    bad = None
    if code != 1 or not last.startswith("ERROR") or "divergence bound" not in last:
        problems.append(f"not stopped by the divergence bound (exit {code}): {last[:200]!r}")
    else:
        bad = int(last.split(" at step ")[1].split()[0])
        if any(s >= bad - 1 for s in kept):  # the loss at step b is that of the params of b-1
            problems.append(f"checkpoints {kept} kept although step {bad} diverged")
        good = f"Last good checkpoint: step {kept[-1]} " if kept else "Last good checkpoint: none"
        if good not in last:
            problems.append(f"the message does not name the good checkpoint ({kept}): {last!r}")
        if bad > 2 and not (workdir / "checkpoints_diverged").is_dir():
            problems.append("the diverged checkpoints were not kept aside")
    code2, out2 = c.train(workdir, "--config.optim.schedule=constant",
                          "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3",
                          "--force", log_name="resume.log")
    lost = code2 != 0 or not is_finished(workdir)
    if lost:
        problems.append(f"the advice (lower lr, --force) did not finish: exit {code2}, "
                        f"{_last_line(out2)[:200]!r}")
    elif kept and f"Resuming from checkpoint step {kept[-1]}" not in out2:
        problems.append(f"the re-run did not resume from step {kept[-1]}")
    ok = not problems
    return Row(
        scenario="10. Divergence that stays finite",
        injected="SGD at a constant lr 30 on the tiny MLP (loss ~1e3 within 3 steps, no NaN), a "
                 "checkpoint every step",
        expected="stopped at the first step over the bound; no kept checkpoint holds diverged "
                 "parameters (they are moved to checkpoints_diverged/); the message names the "
                 "good one; a lower lr with --force resumes it and finishes",
        observed=(f"exit {code}, diverged at step {bad}, checkpoints kept {kept}; re-run with "
                  f"lr 0.05 --force: exit {code2}"
                  + (f"; FAILED: {'; '.join(problems)}" if problems else "")),
        passed=ok, faults=1, survived=int(ok), lost=int(lost))


# ----------------------------------------------------------------------------------------------
# Scenario 11: the file system says no (issue 13 item 3), simulated by tests/fs_faults.py.


def _fs_launch(faults: dict | None, args: Sequence[str], timeout: float = 300
               ) -> tuple[int | None, str]:
    cmd = ([sys.executable, "-m", "tests.fs_faults", json.dumps(faults)] if faults
           else [sys.executable, str(LAUNCH)])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("CNN_JAX_TRACEBACK", None)
    try:
        p = subprocess.run([*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "(timed out)"
    return p.returncode, p.stdout + p.stderr


def scenario_fs_refusals(c: Campaign) -> Row:
    """Read-only workdir, a workdir that is a file, a 300-character path component, a full disk
    at the start and while writing results.json: one ERROR line each, naming the path; after
    the full disk, the same command (space back) writes the results."""
    root = c.workdir("fs")
    (root / "ro").mkdir()
    (root / "afile").write_text("x")
    full = root / "full_results"
    cases = [
        ("read-only workdir", {"read_only": [str(root / "ro")]}, root / "ro", str(root / "ro")),
        ("workdir is a file", None, root / "afile", str(root / "afile")),
        ("300-character path component", None, root / ("x" * 300) / "run", "File name too long"),
        ("full disk at the start", {"enospc": ["config.json"]}, root / "full_start",
         "config.json"),
        ("full disk writing results.json", {"enospc": ["results.json"]}, full, "results.json"),
    ]
    failures, lost = [], 0
    for name, faults, workdir, expect in cases:
        code, out = _fs_launch(faults, [f"--config={TINY_CONFIG}", f"--workdir={workdir}"])
        errors = [ln for ln in out.splitlines() if ln.startswith("ERROR:")]
        if code != 1 or "Traceback" in out or len(errors) != 1 or expect not in errors[0]:
            failures.append(f"{name}: exit {code}, {(errors or [_last_line(out)])[0][:200]!r}")
        leftover = [p.name for p in root.rglob("*") if p.name.endswith(".tmp")]
        if leftover:
            failures.append(f"{name}: temporary files left: {leftover}")
    code, out = _fs_launch(None, [f"--config={TINY_CONFIG}", f"--workdir={full}"])
    if code != 0 or not is_finished(full):
        lost = 1
        failures.append(f"results.json not written by the re-run: exit {code}, "
                        f"{_last_line(out)[:200]!r}")
    ok = not failures
    names = {name for name, *_ in cases}
    return Row(
        scenario="11. The file system says no",
        injected="; ".join(name for name, *_ in cases) + " (permissions and ENOSPC simulated: "
                 "tests/fs_faults.py)",
        expected="one ERROR line naming the path and the fix, no traceback, no temporary file "
                 "left; once space is back, the same command writes results.json",
        observed=(f"{len(cases) - len({f.split(':')[0] for f in failures} & names)} of "
                  f"{len(cases)} refusals one clear line; re-run after the full disk: exit {code}"
                  + (f"; FAILED: {'; '.join(failures)}" if failures else "")),
        passed=ok, faults=len(cases), survived=len(cases) if ok else 0, lost=lost)


# ----------------------------------------------------------------------------------------------
# The command line.

SCENARIOS: dict[str, Callable[[Campaign], Row]] = {
    "1": scenario_sigkill,
    "2": scenario_signal_during_save,
    "3": scenario_corrupt_checkpoint,
    "4": scenario_disk_full,
    "5": scenario_distributed_kill,
    "6a": scenario_sweep_kill,
    "6b": scenario_sweep_sigterm,
    "7a": lambda c: scenario_hostile(c, ("config",)),
    "7b": lambda c: scenario_hostile(c, ("model",)),
    "7c": lambda c: scenario_hostile(c, ("data",)),
    "7d": lambda c: scenario_hostile(c, ("cli",)),
    "8": scenario_config_change,
    "9": scenario_pickle,
    "10": scenario_divergence,
    "11": scenario_fs_refusals,
    "12": scenario_concurrency,
}
NOTES_MARKER = "<!-- notes: kept when this file is regenerated -->"


def run_campaign(c: Campaign, only: Sequence[str] = (), echo: Callable[[str], None] = print
                 ) -> list[Row]:
    """Runs the scenarios (all, or those named in `only`) in order; a scenario that raises is a
    failed row."""
    rows = []
    for key, fn in SCENARIOS.items():
        if only and key not in only and key.rstrip("abcd") not in only:
            continue
        start = time.time()
        try:
            row = fn(c)
        except Exception as e:  # noqa: BLE001 - the campaign reports it and goes on
            import traceback
            row = Row(scenario=f"{key}. {fn.__name__}", injected="-", expected="-",
                      observed=f"the scenario itself failed: {type(e).__name__}: {e}",
                      passed=False, details=traceback.format_exc())
        rows.append(row)
        echo(f"[{time.time() - start:6.1f}s] {'PASS' if row.passed else 'FAIL'} {row.scenario}")
    return rows


def results_markdown(rows: Sequence[Row], command: str, elapsed: float, notes: str = "",
                     root: Path | None = None) -> str:
    """tests/faults/RESULTS.md: command, date, machine, the table, totals, details, notes.
    Paths under the campaign's `root` are written as $ROOT, paths in this checkout relative to it
    (no machine's checkout path in the committed file)."""
    import platform
    details = "\n\n".join(f"**{r.scenario}**\n\n{r.details}" for r in rows if r.details)
    parts = [
        "# Fault campaign results",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}  ",
        f"Machine: {platform.node()} ({platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, shared), {elapsed / 60:.1f} min",
        "",
        "Runs are `launch.py` on tests/faults/tiny_config.py (MLP, synthetic 6x6x3 images, 24 "
        "steps); see tests/faults/campaign.py for how each fault is injected and `--force` semantics.",
        "",
        format_table(rows),
        "",
        totals_line(rows),
        "",
    ]
    if details:
        parts += ["## Details", "", details, ""]
    parts += [NOTES_MARKER, notes.strip(), ""]
    text = "\n".join(parts)
    if root is not None:
        text = text.replace(str(root), "$ROOT")
    return text.replace(f"{HERE.parent.parent}{os.sep}", "")  # repo paths repo-relative


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import shutil
    import tempfile
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="all ten SIGKILL steps and both distributed kills (make faults)")
    parser.add_argument("--exec", action="store_true", dest="exec_mode",
                        help="start every run as a fresh `python launch.py` (slower)")
    parser.add_argument("--only", nargs="*", default=[], metavar="N",
                        help=f"scenarios to run, of {', '.join(SCENARIOS)}")
    parser.add_argument("--results", metavar="FILE",
                        help="also write the Markdown report (e.g. tests/faults/RESULTS.md)")
    parser.add_argument("--root", help="directory for the runs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' directory")
    args = parser.parse_args(argv)
    unknown = [k for k in args.only if k not in SCENARIOS and k not in {s.rstrip("abcd")
                                                                         for s in SCENARIOS}]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    for key, value in Launcher().env.items():
        os.environ.setdefault(key, value)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
    root = Path(args.root or tempfile.mkdtemp(prefix="cnn_jax_faults_"))
    c = Campaign(root, full=args.full, exec_mode=args.exec_mode)
    start = time.time()
    print(f"Fault campaign ({'full' if args.full else 'CI sample'}) in {root}", flush=True)
    rows = run_campaign(c, args.only, echo=lambda m: print(m, flush=True))
    elapsed = time.time() - start
    print()
    print(format_table(rows))
    for r in rows:
        if r.details and not r.passed:
            print(f"\n{r.scenario}:\n{r.details}")
    print()
    print(totals_line(rows))
    if args.results:
        path = Path(args.results)
        old = _read(path)
        notes = old.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in old else ""
        command = "python -m tests.faults.campaign " + " ".join(argv if argv is not None else sys.argv[1:])
        path.write_text(results_markdown(rows, command.strip(), elapsed, notes, root))
        print(f"wrote {path}")
    if not args.keep and not args.root:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
