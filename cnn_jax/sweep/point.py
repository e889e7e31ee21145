"""Running one sweep point: its process, its log (sweep_log.txt) and its status (sweep_status.json).

The same code runs a point in a local sweep and inside a SLURM job (cnn_jax/sweep/slurm.py).
"""

from __future__ import annotations

import platform
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from cnn_jax import rundir, workdir_lock
from cnn_jax.sweep import plan as plan_lib

_ERROR_LINE = re.compile(r"(\b\w*(Error|Exception|Interrupt)\b)|^\s*(FATAL|F\d{4}|E\d{4})\b")


def error_line(text: str, returncode: int | None = None) -> str:
    """The most telling line of a failed run's output: the last exception/error line."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.search(line) and not line.lstrip().startswith(("File ", "raise ", "^")):
            return line.strip()
    if returncode is not None and returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if lines:
        return lines[-1].strip()
    return f"exited with code {returncode}"


class Children:
    """The points' running processes, so that a SIGTERM or Ctrl-C to the sweep (a scheduler
    preempting it, a user stopping it) reaches them (they checkpoint and stop; the driver passes
    the request on as SIGTERM) and no further point starts."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopping = False
        self.signal_name = "SIGTERM"  # what stopped the sweep, for its messages

    def start(self, argv: list[str], **kwargs) -> subprocess.Popen | None:
        with self.lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(argv, **kwargs)
            self.procs.add(proc)
            return proc

    def finish(self, proc: subprocess.Popen) -> int:
        returncode = proc.wait()
        with self.lock:
            self.procs.discard(proc)
        return returncode

    def terminate(self, signum=None, frame=None) -> None:
        """Stops the sweep: no point starts any more, the running ones get SIGTERM (also a
        signal handler: SIGINT, a Ctrl-C, is passed on as SIGTERM, which the point's own
        handler takes as a request to checkpoint and stop)."""
        with self.lock:
            if not self.stopping and signum is not None:
                self.signal_name = signal.Signals(signum).name
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def install(self) -> dict:
        """Makes SIGTERM and SIGINT stop the sweep (in the main thread; elsewhere a no-op);
        returns the previous handlers for `restore`."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self.terminate) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOPPED_EARLY = (-signal.SIGTERM, -signal.SIGINT)  # killed by the signal before its handler


def _stopped_by_sweep(children: Children, returncode: int, line: str) -> bool:
    """True when a point that failed did so because the sweep stopped it: it died of the
    signal before it could take it as a stop request (still starting up), or a second Ctrl-C
    ended it at once."""
    return children.stopping and (returncode in _STOPPED_EARLY or "KeyboardInterrupt" in line
                                  or "second Ctrl-C" in line)


def run_point(argv: list[str], run_dir: Path, env: dict[str, str] | None,
              children: Children) -> dict:
    """Runs one point's process with its output appended to sweep_log.txt; returns (and writes
    to sweep_status.json) finished, failed with the error line, or the run's own end status."""
    if children.stopping:
        return {"status": "not started"}
    holder = workdir_lock.live_holder(run_dir)  # e.g. left running by a killed sweep driver
    if holder is not None:  # not started twice, and not "failed": it is still running
        return {"status": "still running", "pid": holder.get("pid"),
                "error": f"{workdir_lock.describe(holder, command=False)}; not started again, "
                         f"re-run the sweep once it has ended"}
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log_path = run_dir / rundir.LOG_FILE
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {plan_lib.shown_argv(argv)}\n")
        log.flush()
        offset = log.tell()
        proc = children.start(argv, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env)
        if proc is None:
            return {"status": "not started"}
        rundir.write_json(run_dir / rundir.STATUS_FILE, {
            "status": "running", "pid": proc.pid, "host": platform.node(), "started": started,
            "command": plan_lib.shown_argv(argv)})
        returncode = children.finish(proc)
    wall = time.time() - started
    if returncode == 0 and rundir.is_finished(run_dir):
        status = {"status": "finished", "wall_time_s": wall, "command": plan_lib.shown_argv(argv)}
    else:
        with open(log_path) as log:
            log.seek(offset)
            text = log.read()
        line = error_line(text, returncode)
        ended = (rundir.read_json(run_dir / rundir.RESULTS_FILE) or {}).get("status")
        if returncode == 0:
            line = (f"run ended with status {ended!r}; re-run the sweep to resume it" if ended
                    else f"exited 0 without a finished results.json (last line: {line})")
        state = ended if returncode == 0 and ended else "failed"
        if state == "failed" and _stopped_by_sweep(children, returncode, line):
            state, line = "preempted", (f"stopped by the sweep's {children.signal_name} before "
                                        f"it could checkpoint ({line}); re-run the sweep to "
                                        f"resume it")
        status = {"status": state, "returncode": returncode, "error": line,
                  "wall_time_s": wall, "command": plan_lib.shown_argv(argv),
                  "log": rundir.LOG_FILE}  # beside this file
    rundir.write_json(run_dir / rundir.STATUS_FILE, status)
    return status


def echo_status(echo: Callable[[str], None], name: str, status: dict, run_dir: Path) -> None:
    if status["status"] == "finished":
        echo(f"{name}: finished in {status.get('wall_time_s', 0.0):.1f}s")
    elif status["status"] != "not started":
        echo(f"{name}: {status['status'].upper()} ({status.get('error', '')}); log: "
             f"{run_dir / rundir.LOG_FILE}")
