"""The launcher: train (default), evaluate, predict, or run a sweep; `python -m cnn_jax ...`.

    python -m cnn_jax --config=experiments/NAME.py[:ARGS] --workdir=DIR [--config.a.b=V ...]
    python -m cnn_jax --workdir=DIR --mode=eval        # DIR/config.json -> DIR/eval_metrics.json
    python -m cnn_jax --workdir=DIR --mode=predict --images=a.jpg,b.png [--config.a.b=V ...]
    python -m cnn_jax --config=experiments/SWEEP.py --workdir=DIR --sweep [--sweep_parallel=N]
    python -m cnn_jax --config=experiments/SWEEP.py --workdir=DIR --sweep --sweep_executor=slurm \
        [--slurm_partition=P --slurm_gpus_per_node=8 --slurm_nodes=2 --slurm_time_min=600]

`python launch.py ...` in a checkout is the same. Re-running a train command resumes from the
newest good checkpoint in DIR; re-running a sweep skips its finished points.
"""

from __future__ import annotations

import difflib
import glob
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def _define(define, name: str, *args, **kwargs) -> None:
    if name not in FLAGS:
        define(name, *args, **kwargs)


def define_flags() -> None:
    """Defines the launcher's flags; a flag already defined is left as it is (so a second call,
    e.g. `python launch.py` importing this module, is a no-op)."""
    if "workdir" not in FLAGS:
        flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
        flags.mark_flag_as_required("workdir")
    if "config" not in FLAGS:  # config.model gets every field of its model (model_config.py)
        from cnn_jax import model_config
        model_config.define_config_flag("config", None,
                                        "Experiment file, e.g. experiments/x.py:arg=1")
    _define(flags.DEFINE_enum, "mode", "train", ["train", "eval", "predict"],
            "train (evaluates periodically), eval (newest checkpoint on data.eval_split), "
            "predict (top-5 classes of --images).")
    _define(flags.DEFINE_bool, "force", False, "Resume even though the stored config or "
            "training data differs (the run then mixes two configs).")
    _define(flags.DEFINE_bool, "extend", False, "Resume a finished or stopped run with a larger "
            "--config.total_steps or num_epochs (the schedule is rebuilt for the new length).")
    _define(flags.DEFINE_list, "images", [], "Image files for --mode=predict.")
    _define(flags.DEFINE_bool, "multihost", False,
            "Call jax.distributed.initialize() (one process per host).")
    _define(flags.DEFINE_string, "coordinator_address", None, "Multi-host: host:port of process "
            "0 (default: $JAX_COORDINATOR_ADDRESS or the cluster's own discovery).")
    _define(flags.DEFINE_integer, "num_processes", None,
            "Multi-host: process count ($JAX_NUM_PROCESSES).")
    _define(flags.DEFINE_integer, "process_id", None,
            "Multi-host: this process's index ($JAX_PROCESS_ID).")
    _define(flags.DEFINE_integer, "multihost_timeout_s", 300, "Multi-host: seconds to wait for "
            "every process to join the coordinator before giving up with an error.")
    _define(flags.DEFINE_bool, "sweep", False,
            "Run every point of the experiment's get_sweep() in DIR/<point>.")
    _define(flags.DEFINE_bool, "sweep_dry_run", False, "Print one launch command per sweep point.")
    _define(flags.DEFINE_integer, "sweep_parallel", 1, "Sweep points run at once (processes, "
            "or SLURM jobs of the sweep's job array).")
    _define(flags.DEFINE_enum, "sweep_executor", "local", ["local", "slurm"],
            "Where sweep points run: local (child processes, --sweep_parallel at a time) or "
            "slurm (one job per point through submitit; resources from the experiment's "
            "get_slurm(arg) and the --slurm_* flags).")
    for kind, name, default, text in (
            (flags.DEFINE_string, "slurm_partition", None, "partition."),
            (flags.DEFINE_integer, "slurm_nodes", None, "nodes per point (above 1 the point runs "
             "with --multihost, one process per node)."),
            (flags.DEFINE_integer, "slurm_gpus_per_node", None, "GPUs per node."),
            (flags.DEFINE_integer, "slurm_cpus_per_task", None, "CPU cores per process."),
            (flags.DEFINE_integer, "slurm_time_min", None, "time limit per point, in minutes."),
            (flags.DEFINE_list, "slurm_sbatch", [], "extra sbatch options, e.g. "
             "--slurm_sbatch=--account=abc,--qos=high.")):
        _define(kind, name, default, f"--sweep_executor=slurm: {text}")
    _define(flags.DEFINE_string, "xla_cpu_flags", "auto", "XLA:CPU compiler flags added to "
            "$XLA_FLAGS before JAX starts; 'auto' = cnn_jax.benchmark.RECOMMENDED_CPU_XLA_FLAGS "
            "(faster small-channel convolutions), '' = none. Flags already in $XLA_FLAGS win.")
    _define(flags.DEFINE_bool, "keep_host_buffers", True, "Set glibc's malloc (one arena, no "
            "mmap, no trimming) so that XLA:CPU's large per-step buffers are reused instead of "
            "mapped again every step (cnn_jax/host_memory.py; about 1.3x on a CPU ResNet-20 "
            "training run, about twice the peak resident memory); false = the C library's "
            "defaults.")


def check_config_arg(argv: list[str]) -> None:
    """Fails early, listing the experiments, when --config names no existing file."""
    if any(a in ("--help", "-h", "--helpfull", "--helpshort", "-?") for a in argv):
        return  # absl prints the usage
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = value.split(":", 1)[0]
        if not os.path.isfile(path):
            root = os.path.dirname(path) or "experiments"
            names = sorted(glob.glob(os.path.join(root, "*.py")))
            names = [n for n in names if not os.path.basename(n).startswith("_")]
            close = difflib.get_close_matches(path, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            sys.exit(f"ERROR: experiment file {path!r} not found. Experiments in {root}/: "
                     f"{', '.join(os.path.basename(n) for n in names) or '(none)'}.{hint}")
        return
    sys.exit("ERROR: --config=experiments/NAME.py is required.")


def _flag_value(argv: list[str], name: str) -> str | None:
    """The (last) value of `--name=V` or `--name V` on the command line, else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def with_workdir_config(argv: list[str]) -> list[str]:
    """`--mode=eval|predict --workdir=DIR` without --config: the command line with the run's own
    resolved config, DIR/config.json, as --config (`cnn_jax.workdir_config`); --config.a.b=V
    overrides apply on top. An explicit --config wins. No config.json there: one ERROR line."""
    mode, workdir = _flag_value(argv, "mode"), _flag_value(argv, "workdir")
    if (mode not in ("eval", "predict") or not workdir or _flag_value(argv, "config") is not None
            or any(a in ("--help", "-h", "--helpfull", "--helpshort", "-?") for a in argv)):
        return argv
    from cnn_jax import workdir_config
    try:
        config = workdir_config.config_arg(workdir, mode)
    except ValueError as e:
        sys.exit(f"ERROR: {e}")
    return [*argv[:1], config, *argv[1:]]  # before any --config.a.b=V override


def config_overrides(argv: list[str]) -> list[str]:
    """The --config.a.b=V flags of the command line (for sweeps to pass on to every point)."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--config.") or arg.startswith("--noconfig."):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                arg = f"{arg}={argv[i + 1]}"
            out.append(arg)
    return out


def slurm_flags() -> dict:
    """The --slurm_* flags given on the command line (they override the experiment's get_slurm)."""
    return {"partition": FLAGS.slurm_partition, "nodes": FLAGS.slurm_nodes,
            "gpus_per_node": FLAGS.slurm_gpus_per_node, "cpus_per_task": FLAGS.slurm_cpus_per_task,
            "time_min": FLAGS.slurm_time_min, "sbatch": list(FLAGS.slurm_sbatch)}


def multihost_requested() -> bool:
    """--multihost, or a launcher that set JAX's coordinator variables.

    Under SLURM (a multi-node sweep point) --multihost is enough: jax.distributed.initialize()
    reads the coordinator, the process count and this process's rank from SLURM's variables.
    """
    return bool(FLAGS.multihost or FLAGS.coordinator_address
                or os.environ.get("JAX_COORDINATOR_ADDRESS"))


def init_distributed() -> None:
    """jax.distributed.initialize, giving up after --multihost_timeout_s with one ERROR line
    naming the coordinator and the processes that did not join (JAX's own deadline aborts the
    process from C++ with a stack dump, so a watchdog thread ends it first)."""
    import threading

    import jax
    num = FLAGS.num_processes or os.environ.get("JAX_NUM_PROCESSES")
    pid = FLAGS.process_id if FLAGS.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    timeout = int(FLAGS.multihost_timeout_s)
    if timeout < 1:
        raise ValueError(f"--multihost_timeout_s={timeout} must be at least 1 second.")
    address = (FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
               or "(found by the cluster's auto-detection)")
    who = f"process {pid} of {num}" if pid is not None and num else "this process"
    others = ([str(i) for i in range(int(num)) if str(i) != str(pid)]
              if num and pid is not None else [])
    print(f"jax.distributed: {who} joining the coordinator at {address} (waiting up to "
          f"{timeout} s for every process)", flush=True)

    def give_up() -> None:
        missing = f"processes {', '.join(others)}" if others else "some processes"
        print(f"ERROR: jax.distributed: {who} waited {timeout} s at the coordinator {address}, "
              f"but {missing} did not join. Start every process with the same "
              f"--coordinator_address and --num_processes and its own --process_id (0 runs the "
              f"coordinator), check that the address is reachable from each host, or raise "
              f"--multihost_timeout_s.", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=int(num) if num is not None else None,
            process_id=int(pid) if pid is not None else None,
            initialization_timeout=timeout + 60)  # the watchdog speaks first
    finally:
        watchdog.cancel()
    print(f"jax.distributed: process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and JAX are chatty at INFO
    try:
        return run(FLAGS.mode)
    except Exception as e:  # noqa: BLE001 - user errors become one line, the rest propagate
        from cnn_jax import files
        refused = files.refusal_line(e)  # the file system said no: the path and the fix
        if refused and not os.environ.get("CNN_JAX_TRACEBACK"):
            print(f"ERROR: {refused}", file=sys.stderr, flush=True)
            return 1
        if not is_user_error(e) or os.environ.get("CNN_JAX_TRACEBACK"):
            raise
        print(f"ERROR: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


def is_user_error(e: Exception) -> bool:
    """Errors a user can cause and fix (bad value, missing file, diverged run, checkpoints)."""
    if isinstance(e, (ValueError, FileNotFoundError, FloatingPointError)):
        return True
    checkpoint = sys.modules.get("cnn_jax.train.checkpoint")
    return checkpoint is not None and isinstance(e, checkpoint.CheckpointError)


def run(mode: str) -> int:
    """Dispatches to the sweep runner or the training engine (imported only when needed)."""
    if not FLAGS.workdir.strip():  # `--workdir=$DIR` with DIR unset: not the current directory
        raise ValueError("--workdir is empty (an unset shell variable?): give the run's "
                         "directory, e.g. --workdir=runs/NAME.")
    if FLAGS.sweep or FLAGS.sweep_dry_run:
        from cnn_jax import sweep
        return sweep.main(FLAGS["config"].config_filename, FLAGS.workdir,
                          dry_run=FLAGS.sweep_dry_run, parallel=FLAGS.sweep_parallel,
                          overrides=config_overrides(sys.argv), executor=FLAGS.sweep_executor,
                          slurm_flags=slurm_flags(),
                          point_flags=sweep.point_flags(FLAGS, FLAGS.sweep_executor))
    if FLAGS.keep_host_buffers:
        from cnn_jax import host_memory
        host_memory.keep_host_buffers()  # before XLA's pool threads make their first allocation
    if FLAGS.xla_cpu_flags:
        from cnn_jax.benchmark import apply_xla_flags
        apply_xla_flags(FLAGS.xla_cpu_flags)  # read by XLA when the backend starts
    if multihost_requested():
        init_distributed()  # before anything initialises a JAX backend
    from cnn_jax import python_gc, train
    python_gc.settle()  # after the imports, before a model is built and traced
    config = FLAGS.config
    if mode == "train":
        results = train.train_and_evaluate(config, FLAGS.workdir, force=FLAGS.force,
                                           extend=FLAGS.extend)
        return 0 if results.get("status") in ("finished", "preempted") else 1
    if mode == "eval":
        train.evaluate_checkpoint(config, FLAGS.workdir)
        return 0
    train.predict(config, FLAGS.workdir, FLAGS.images)
    return 0


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose user errors end in one ERROR line instead of a traceback."""
    try:
        return FLAGS(argv)
    except (flags.Error, ValueError, TypeError, KeyError, AttributeError) as e:
        lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
        if any(l.startswith("Traceback") for l in lines):
            lines = lines[-1:]  # the experiment file's own error, at the end of its traceback
        msg = " ".join(lines)
        if isinstance(e, AttributeError):  # ConfigDict: the repr of a KeyError with a hint
            msg = msg.strip("'").replace("\\'", "'").replace("\\n", " ")
            msg = f"unknown config field {msg}"
        sys.exit(f"ERROR: {msg}\n(--helpfull lists the flags)")


def cli(argv: list[str] | None = None) -> None:
    """The command line: defines the flags, checks --config, parses, runs; exits with its status."""
    define_flags()
    argv = with_workdir_config(list(sys.argv if argv is None else argv))
    check_config_arg(argv)
    app.run(main, argv=argv, flags_parser=parse_flags)
