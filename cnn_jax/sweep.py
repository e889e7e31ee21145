"""Sweeps: run every named config point of an experiment file into `DIR/<point>/`, then report.

An experiment file becomes a sweep by defining `get_sweep(arg) -> [(point_name, overrides), ...]`
(usually `return product(depth=(20, 32), residual=(True, False))`). How a point reaches launch.py:

- a key without a `config.` prefix is an experiment ARG: it is appended to the `:ARGS` part of
  `--config=experiments/X.py:ARGS`, so the file's `get_config(arg)` sees it (e.g. `depth=20`);
- a key with the `config.` prefix is a config field: it becomes `--config.a.b=V` on the command line.

Every point is an ordinary `launch.py` command (printed by `--sweep_dry_run` for any scheduler);
re-running a sweep skips finished points (`results.json` status finished) and resumes the others
from their checkpoints. Files written: `DIR/sweep.json` (the plan, read by the report),
`DIR/<point>/sweep_status.json` (running / finished / failed with the error line) and
`DIR/<point>/sweep_log.txt` (the point's stdout and stderr).
"""

from __future__ import annotations

import concurrent.futures
import difflib
import importlib.util
import inspect
import itertools
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import ml_collections

CONFIG_PREFIX = "config."
SWEEP_FILE = "sweep.json"
STATUS_FILE = "sweep_status.json"
LOG_FILE = "sweep_log.txt"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_ERROR_LINE = re.compile(r"(\b\w*(Error|Exception|Interrupt)\b)|^\s*(FATAL|F\d{4}|E\d{4})\b")

Point = tuple[str, dict[str, Any]]


# ----------------------------------------------------------------------------------------------
# Experiment args and points.


def _format_value(value: Any, exact: bool = True) -> str:
    """A value as an experiment arg (exact: floats round-trip) or, inexact, as part of a name."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value) if exact else f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "+".join(_format_value(v, exact) for v in value)
    return str(value)


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", ""):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"experiment arg {key}={text!r}: expected True or False")


def _parse_like(key: str, text: str, default: Any) -> Any:
    """Parses `text` into the type of `default` (bool, int, float, str, or a '+'-separated tuple)."""
    try:
        if isinstance(default, bool):
            return _parse_bool(key, text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            if text == "":
                return ()
            element = default[0] if default else ""
            return tuple(_parse_like(key, part, element) for part in text.split("+"))
    except ValueError as e:
        if "experiment arg" in str(e):
            raise
        raise ValueError(
            f"experiment arg {key}={text!r}: expected a {type(default).__name__} "
            f"like {_format_value(default)!r}") from None
    return text


def split_arg(arg: str | None) -> list[tuple[str, str | None]]:
    """Splits 'runlocal,depth=20' into [('runlocal', None), ('depth', '20')], keeping order."""
    items = []
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        items.append((key.strip(), value.strip() if eq else None))
    return items


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses an experiment's `:ARGS` string ('runlocal,depth=20') against typed defaults.

    A bare key sets a bool to True; values take the type of their default; a tuple default takes
    '+'-separated values (`depths=20+32`). Unknown keys are an error naming the valid ones.
    """
    out = dict(defaults)
    for key, value in split_arg(arg):
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown experiment arg {key!r} in {arg!r}. Valid args: "
                f"{', '.join(sorted(defaults)) or '(none)'}.{hint}")
        default = defaults[key]
        if value is None:
            if not isinstance(default, bool):
                raise ValueError(
                    f"experiment arg {key!r} needs a value, e.g. {key}={_format_value(default)}")
            out[key] = True
        else:
            out[key] = _parse_like(key, value, default)
    return ml_collections.ConfigDict(out)


def point_name(overrides: dict[str, Any]) -> str:
    """Names a point from its axes: {'depth': 20, 'residual': True} -> 'depth20_residual'.

    Numbers join their key (depth20), True gives the key and False 'no' + key, strings give
    key-value (norm-batch); a `config.a.b` key contributes only its last part.
    """
    parts = []
    for key, value in overrides.items():
        short = key.rsplit(".", 1)[-1]
        if isinstance(value, bool):
            parts.append(short if value else f"no{short}")
        elif isinstance(value, (int, float)):
            parts.append(f"{short}{_format_value(value, exact=False)}")
        else:
            parts.append(f"{short}-{_format_value(value, exact=False)}")
    name = "_".join(parts) or "default"
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", name)


def product(**axes: Iterable[Any]) -> list[Point]:
    """The Cartesian product of named axes, as named points (first axis varies slowest)."""
    for key, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"sweep axis {key}={values!r}: give a list of values, e.g. {key}=[1, 2]")
    keys = list(axes)
    points = []
    for values in itertools.product(*(list(axes[k]) for k in keys)):
        overrides = dict(zip(keys, values))
        points.append((point_name(overrides), overrides))
    return points


def check_points(points: Sequence[Any]) -> list[Point]:
    """Validates get_sweep()'s output: (name, dict) pairs or dicts, names unique and path-safe."""
    checked: list[Point] = []
    for i, item in enumerate(points):
        if isinstance(item, dict):
            name, overrides = point_name(item), dict(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict):
            name, overrides = str(item[0]), dict(item[1])
        else:
            raise ValueError(
                f"sweep point #{i} is {item!r}; get_sweep() must return (name, overrides dict) "
                "pairs or dicts, e.g. product(depth=[20, 32])")
        if not _NAME_OK.match(name) or name in (".", ".."):
            raise ValueError(
                f"sweep point name {name!r} cannot be a directory name: use letters, digits "
                "and . _ + = - only")
        checked.append((name, overrides))
    if not checked:
        raise ValueError("get_sweep() returned no points")
    seen: dict[str, str] = {}
    collisions = []
    for name, _ in checked:
        key = name.lower()  # case-insensitive file systems would merge these directories
        if key in seen:
            collisions.append(f"{seen[key]!r} and {name!r}")
        seen.setdefault(key, name)
    if collisions:
        raise ValueError(
            "sweep points collide in name (they would share a run directory): "
            + "; ".join(collisions) + ". Give them distinct names in get_sweep().")
    return checked


# ----------------------------------------------------------------------------------------------
# Loading the experiment file and building commands.


def split_config_arg(config_arg: str) -> tuple[str, str]:
    """'experiments/x.py:runlocal' -> ('experiments/x.py', 'runlocal')."""
    path, _, arg = config_arg.partition(":")
    return path, arg


def load_experiment(path: str):
    """Imports an experiment file by path (like ml_collections.config_flags does)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"experiment file {path!r} not found (cwd {os.getcwd()})")
    repo_root = str(file.resolve().parent.parent)
    if repo_root not in sys.path:  # experiment files import experiments.default
        sys.path.insert(0, repo_root)
    spec = importlib.util.spec_from_file_location(f"_sweep_experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_points(config_arg: str) -> list[Point]:
    """Calls the experiment's get_sweep(arg) and validates the points."""
    path, arg = split_config_arg(config_arg)
    module = load_experiment(path)
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        raise ValueError(
            f"{path} defines no get_sweep(), so it is not a sweep: drop --sweep to train it "
            "once, or pick a sweep file (one that defines get_sweep()).")
    takes_arg = bool(inspect.signature(get_sweep).parameters)
    if not takes_arg and arg:
        raise ValueError(f"{path}: get_sweep() takes no arg but {arg!r} was given")
    return check_points(get_sweep(arg) if takes_arg else get_sweep())


def _merge_args(base: str, point_args: dict[str, Any], name: str) -> str:
    base_keys = {k for k, _ in split_arg(base)}
    clash = sorted(base_keys & set(point_args))
    if clash:
        raise ValueError(
            f"sweep point {name!r} sets experiment arg(s) {clash} that the --config arg {base!r} "
            "also sets; a sweep axis cannot be fixed from the command line (restrict the sweep "
            "through get_sweep's own args instead)")
    extra = [f"{k}={_format_value(v)}" for k, v in point_args.items()]
    bad = [e for e in extra if "," in e or e.count("=") != 1]
    if bad:
        raise ValueError(
            f"sweep point {name!r}: experiment arg(s) {bad} cannot pass through "
            "'--config=FILE:k=v,...' (no ',' or '=' in keys or values); use a config.FIELD key")
    return ",".join([p for p in base.split(",") if p.strip()] + extra)


def _override_key(flag: str) -> str:
    key = flag.lstrip("-").split("=", 1)[0]
    return key[2:] if key.startswith("noconfig.") else key


def point_command(config_arg: str, workdir: str, name: str, overrides: dict[str, Any],
                  extra_flags: Sequence[str] = ()) -> list[str]:
    """The launch.py argv (without the interpreter) that trains one point."""
    path, base = split_config_arg(config_arg)
    args = {k: v for k, v in overrides.items() if not k.startswith(CONFIG_PREFIX)}
    fields = {k: v for k, v in overrides.items() if k.startswith(CONFIG_PREFIX)}
    arg = _merge_args(base, args, name)
    flags = [f"--{k}={_format_value(v) if not isinstance(v, tuple) else repr(v)}"
             for k, v in fields.items()]
    clash = sorted({_override_key(f) for f in extra_flags} & {_override_key(f) for f in flags})
    if clash:
        raise ValueError(
            f"command-line override(s) {clash} would overwrite sweep axis of point {name!r}; "
            "drop them or change get_sweep()")
    return [f"--config={path}:{arg}" if arg else f"--config={path}",
            f"--workdir={os.path.join(workdir, name)}", *flags, *extra_flags]


def preflight(config_arg: str, points: Sequence[Point], overrides: Sequence[str],
              check_data: bool) -> None:
    """Builds every point's config once, so a bad arg or missing data fails before anything runs."""
    path, base = split_config_arg(config_arg)
    module = load_experiment(path)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ValueError(f"{path} defines get_sweep() but no get_config(arg)")
    path_overridden = any(_override_key(f) == "config.data.path" for f in overrides)
    for name, ov in points:
        args = {k: v for k, v in ov.items() if not k.startswith(CONFIG_PREFIX)}
        arg = _merge_args(base, args, name)
        try:
            config = get_config(arg) if inspect.signature(get_config).parameters else get_config()
        except Exception as e:
            raise ValueError(f"sweep point {name!r}: {path}:get_config({arg!r}) failed: {e}") from e
        data = config.get("data", {})
        data_path = data.get("path", "") if hasattr(data, "get") else ""
        if (check_data and data_path and not path_overridden and data.get("name") != "synthetic"
                and not os.path.exists(os.path.expanduser(data_path))):
            hint = getattr(module, "DATA_HINT", "") or "set --config.data.path=DIR"
            raise FileNotFoundError(
                f"sweep point {name!r}: data.path {data_path!r} does not exist. {hint}")


def launch_script(must_exist: bool = True) -> Path:
    script = Path(__file__).resolve().parent.parent / "launch.py"
    if must_exist and not script.is_file():
        raise FileNotFoundError(f"launch.py not found at {script}; sweeps run points through it")
    return script


def _display_script(script: Path) -> str:
    try:
        return os.path.relpath(script)
    except ValueError:
        return str(script)


# ----------------------------------------------------------------------------------------------
# Running.


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(run_dir: Path) -> bool:
    results = _read_json(run_dir / "results.json")
    return bool(results) and results.get("status") == "finished"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


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


class _Children:
    """The points' running processes, so that a SIGTERM to the sweep (a scheduler preempting
    it) reaches them (they checkpoint and stop) and no further point starts."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopping = False

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

    def terminate(self, signum, frame) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)


def _run_point(argv: list[str], run_dir: Path, name: str, echo, children: _Children) -> dict:
    if children.stopping:
        return {"status": "not started"}
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log_path = run_dir / LOG_FILE
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        log.flush()
        offset = log.tell()
        proc = children.start(argv, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
        if proc is None:
            return {"status": "not started"}
        _write_json(run_dir / STATUS_FILE, {"status": "running", "pid": proc.pid,
                                            "started": started, "command": shlex.join(argv)})
        returncode = children.finish(proc)
    wall = time.time() - started
    if returncode == 0 and is_finished(run_dir):
        status = {"status": "finished", "wall_time_s": wall, "command": shlex.join(argv)}
    else:
        with open(log_path) as log:
            log.seek(offset)
            text = log.read()
        line = error_line(text, returncode)
        ended = (_read_json(run_dir / "results.json") or {}).get("status")
        if returncode == 0:
            line = (f"run ended with status {ended!r}; re-run the sweep to resume it" if ended
                    else f"exited 0 without a finished results.json (last line: {line})")
        status = {"status": ended if returncode == 0 and ended else "failed",
                  "returncode": returncode, "error": line,
                  "wall_time_s": wall, "command": shlex.join(argv), "log": str(log_path)}
    _write_json(run_dir / STATUS_FILE, status)
    if status["status"] == "finished":
        echo(f"{name}: finished in {wall:.1f}s")
    else:
        echo(f"{name}: {status['status'].upper()} ({status['error']}); log: {log_path}")
    return status


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


def main(config_arg: str, workdir: str, *, dry_run: bool = False, parallel: int = 1,
         overrides: Sequence[str] = ()) -> int:
    """Runs (or with dry_run prints) every point of a sweep file; returns 0 when all finished."""
    if parallel < 1:
        raise ValueError(f"--sweep_parallel={parallel}: give 1 or more processes")
    if not workdir:
        raise ValueError("--workdir is empty: give the sweep's directory")
    for flag in overrides:
        if not flag.startswith(("--config.", "--noconfig.")):
            raise ValueError(f"sweep override {flag!r}: only --config.FIELD=VALUE flags are passed on")
    points = get_points(config_arg)
    commands = {name: point_command(config_arg, workdir, name, ov, overrides)
                for name, ov in points}  # validates every point before anything runs
    preflight(config_arg, points, overrides, check_data=not dry_run)
    script = launch_script(must_exist=not dry_run)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    plan = {"config": config_arg, "overrides": list(overrides),
            "points": [{"name": name, "axes": ov,
                        "command": shlex.join(["python", _display_script(script),
                                               *commands[name]])}
                       for name, ov in points]}
    previous = _read_json(root / SWEEP_FILE) or {}
    if "last_run" in previous:
        plan["last_run"] = previous["last_run"]
    _write_json(root / SWEEP_FILE, plan)
    if dry_run:
        for name, _ in points:
            print(shlex.join(["python", _display_script(script), *commands[name]]))
        return 0

    lock = threading.Lock()

    def echo(msg: str) -> None:
        with lock:
            print(f"[sweep] {msg}", flush=True)

    todo = []
    for name, _ in points:
        if is_finished(root / name):
            echo(f"{name}: already finished, skipped")
        else:
            todo.append(name)
    echo(f"{len(todo)} of {len(points)} points to run, {parallel} at a time, in {root}")
    statuses: dict[str, dict] = {}
    started = time.time()
    children = _Children()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, children.terminate) if in_main_thread else None
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {}
            for name in todo:
                argv = [sys.executable, str(script), *commands[name]]
                futures[pool.submit(_run_point, argv, root / name, name, echo, children)] = name
            for future in concurrent.futures.as_completed(futures):
                statuses[futures[future]] = future.result()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if children.stopping:
        echo("SIGTERM: running points were asked to checkpoint and stop; points not started "
             "were left out. Re-run the same command to continue.")
    if todo:
        plan["last_run"] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "points_run": sum(st["status"] != "not started" for st in statuses.values()),
            "parallel": parallel, "machine": machine_description()}
        _write_json(root / SWEEP_FILE, plan)

    from cnn_jax import report  # late: matplotlib is only needed once the runs are done

    report.write_report(root)
    failed = sorted(n for n, s in statuses.items() if s["status"] not in ("finished", "not started"))
    echo(f"report written to {root}/summary.md" +
         (f"; {len(failed)} not finished: {', '.join(failed)}" if failed else ""))
    return 1 if failed or children.stopping else 0
