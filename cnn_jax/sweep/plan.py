"""Planning a sweep: an experiment file's points, checked, and the command that trains each one.

A point is `(name, overrides)`. How an override reaches the point's command:

- a key without a `config.` prefix is an experiment ARG: it is appended to the `:ARGS` part of
  `--config=experiments/X.py:ARGS`, so the file's `get_config(arg)` sees it (e.g. `depth=20`);
- a key with the `config.` prefix is a config field: it becomes `--config.a.b=V` on the command line.

Every point is an ordinary `python -m cnn_jax` command (what `--sweep_dry_run` prints).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from cnn_jax.rundir import CONFIG_PREFIX, format_value, point_name, split_arg

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
ENTRY_POINT = ("-m", "cnn_jax")  # the library's launcher: `python -m cnn_jax --config=...`

Point = tuple[str, dict[str, Any]]


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
                "and ._+=- (no '/', spaces, or a leading dot)")
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


def split_config_arg(config_arg: str) -> tuple[str, str]:
    """'experiments/x.py:runlocal' -> ('experiments/x.py', 'runlocal')."""
    path, _, arg = config_arg.partition(":")
    return path, arg


def experiment_root(path: str) -> str:
    """The folder above the experiment file's folder (experiment files import `experiments.*`)."""
    return str(Path(path).resolve().parent.parent)


def load_experiment(path: str):
    """Imports an experiment file by path (like ml_collections.config_flags does)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"experiment file {path!r} not found (cwd {os.getcwd()})")
    root = experiment_root(path)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_sweep_experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_with_arg(module, name: str, path: str, arg: str):
    """module.NAME(arg), or module.NAME() when it takes no arg (then `arg` must be empty)."""
    fn = getattr(module, name)
    if inspect.signature(fn).parameters:
        return fn(arg)
    if arg:
        raise ValueError(f"{path}: {name}() takes no arg but {arg!r} was given")
    return fn()


def get_points(config_arg: str) -> list[Point]:
    """Calls the experiment's get_sweep(arg) and validates the points."""
    path, arg = split_config_arg(config_arg)
    module = load_experiment(path)
    if getattr(module, "get_sweep", None) is None:
        raise ValueError(
            f"{path} defines no get_sweep(), so it is not a sweep: drop --sweep to train it "
            "once, or pick a sweep file (one that defines get_sweep()).")
    return check_points(call_with_arg(module, "get_sweep", path, arg))


def merge_args(base: str, point_args: dict[str, Any], name: str) -> str:
    """The `:ARGS` of a point: the command line's base args plus the point's experiment args."""
    base_keys = {k for k, _ in split_arg(base)}
    clash = sorted(base_keys & set(point_args))
    if clash:
        raise ValueError(
            f"sweep point {name!r} sets experiment arg(s) {clash} that the --config arg {base!r} "
            "also sets; a sweep axis cannot be fixed from the command line (restrict the sweep "
            "through get_sweep's own args instead)")
    extra = [f"{k}={format_value(v)}" for k, v in point_args.items()]
    bad = [e for e in extra if "," in e or e.count("=") != 1]
    if bad:
        raise ValueError(
            f"sweep point {name!r}: experiment arg(s) {bad} cannot pass through "
            "'--config=FILE:k=v,...' (no ',' or '=' in keys or values); use a config.FIELD key")
    return ",".join([p for p in base.split(",") if p.strip()] + extra)


def override_key(flag: str) -> str:
    key = flag.lstrip("-").split("=", 1)[0]
    return key[2:] if key.startswith("noconfig.") else key


def point_command(config_arg: str, workdir: str, name: str, overrides: dict[str, Any],
                  extra_flags: Sequence[str] = ()) -> list[str]:
    """The launcher flags (without `python -m cnn_jax`) that train one point."""
    path, base = split_config_arg(config_arg)
    args = {k: v for k, v in overrides.items() if not k.startswith(CONFIG_PREFIX)}
    fields = {k: v for k, v in overrides.items() if k.startswith(CONFIG_PREFIX)}
    arg = merge_args(base, args, name)
    flags = [f"--{k}={format_value(v) if not isinstance(v, tuple) else repr(v)}"
             for k, v in fields.items()]
    clash = sorted({override_key(f) for f in extra_flags} & {override_key(f) for f in flags})
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
    if getattr(module, "get_config", None) is None:
        raise ValueError(f"{path} defines get_sweep() but no get_config(arg)")
    path_overridden = any(override_key(f) == "config.data.path" for f in overrides)
    for name, ov in points:
        args = {k: v for k, v in ov.items() if not k.startswith(CONFIG_PREFIX)}
        arg = merge_args(base, args, name)
        try:
            config = call_with_arg(module, "get_config", path, arg)
        except Exception as e:
            raise ValueError(f"sweep point {name!r}: {path}:get_config({arg!r}) failed: {e}") from e
        data = config.get("data", {})
        data_path = data.get("path", "") if hasattr(data, "get") else ""
        if (check_data and data_path and not path_overridden and data.get("name") != "synthetic"
                and not os.path.exists(os.path.expanduser(data_path))):
            hint = getattr(module, "DATA_HINT", "") or "set --config.data.path=DIR"
            raise FileNotFoundError(
                f"sweep point {name!r}: data.path {data_path!r} does not exist. {hint}")


# Launcher flags other than --config.*: those a sweep passes on to every point's command (they
# mean there what they mean for one run), and those that cannot apply to a sweep (refused).
PASSED_ON = ("force", "extend", "xla_cpu_flags", "keep_host_buffers")
NOT_FOR_SWEEPS = {
    "mode": "a sweep trains its points; evaluate or predict with one point's directory: "
            "--mode=eval --workdir=DIR/POINT",
    "images": "--images is for --mode=predict on one point's directory",
    "multihost": "the points of a sweep are single-host runs here; multi-node points run "
                 "through --sweep_executor=slurm --slurm_nodes=N",
    "coordinator_address": "see --multihost", "num_processes": "see --multihost",
    "process_id": "see --multihost",
}
SLURM_ONLY = ("slurm_partition", "slurm_nodes", "slurm_gpus_per_node", "slurm_cpus_per_task",
              "slurm_time_min", "slurm_sbatch")


def point_flags(flag_values: Any, executor: str = "local") -> list[str]:
    """The launcher flags given on the command line that every point's command gets (PASSED_ON,
    as given); a flag that cannot apply to a sweep is refused with one ValueError line."""
    given = [name for name in flag_values if flag_values[name].present]
    for name in given:
        if name in NOT_FOR_SWEEPS and flag_values[name].value != flag_values[name].default:
            raise ValueError(f"--{name} cannot be used with --sweep: {NOT_FOR_SWEEPS[name]}.")
        if name in SLURM_ONLY and executor != "slurm":
            raise ValueError(f"--{name} applies to --sweep_executor=slurm only; drop it, or "
                             f"add --sweep_executor=slurm.")
    return [flag_values[name].serialize() for name in PASSED_ON if name in given]


def point_config(flags: Sequence[str]) -> dict:
    """The config a point's command trains (its --config and --config.* flags, parsed by
    ml_collections as the launcher parses them), as plain JSON types (like its config.json)."""
    import json

    from absl import flags as absl_flags
    from ml_collections import config_flags

    argv = ["sweep", *[f for f in flags if f.startswith(("--config", "--noconfig"))]]
    values = absl_flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "the point's config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    return json.loads(values.config.to_json_best_effort())


def finished_config_changes(run_dir: Path, flags: Sequence[str], extend: bool = False
                            ) -> list[tuple[str, Any, Any]]:
    """(field, stored, new) where the finished run in `run_dir` (its config.json) differs from
    what the point's command `flags` would train, outside the fields a resume may change
    (checkpoint.RESUME_SAFE_FIELDS; with `extend` also the run length). Fields on one side only
    (defaults added since the run) are not compared."""
    import json

    from cnn_jax.train import checkpoint

    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return []  # nothing to compare (a run from before config.json): as a single run
    try:
        new = point_config(flags)
    except Exception:  # noqa: BLE001 - e.g. a model field the launcher fills in (model_config):
        return []      # not comparable here; the point's own run still checks its config
    a, b = checkpoint.flatten_config(stored), checkpoint.flatten_config(new)
    skip = set(checkpoint.RESUME_SAFE_FIELDS) | (set(checkpoint.EXTEND_FIELDS) if extend else set())
    return [(k, a[k], b[k]) for k in sorted(set(a) & set(b)) if k not in skip and a[k] != b[k]]


def launcher() -> list[str]:
    """The interpreter command that starts a point (followed by its flags)."""
    return [sys.executable, *ENTRY_POINT]


def display_command(flags: Sequence[str]) -> str:
    """A point's command as printed (dry run, sweep.json): runnable from where the sweep ran."""
    return shown_argv([*launcher(), *flags])


def shown_argv(argv: Sequence[str]) -> str:
    """`argv` as recorded in a point's status file and log: this interpreter written `python`,
    so that records carry no path of the machine that ran them."""
    argv = list(argv)
    if argv and argv[0] == sys.executable:
        argv[0] = "python"
    return shlex.join(argv)


def point_env(config_arg: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a point's process: `base` (default: this process's), with the
    experiment files importable (their root first on PYTHONPATH)."""
    return with_pythonpath(experiment_root(split_config_arg(config_arg)[0]), base)


def with_pythonpath(root: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with `root` first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
