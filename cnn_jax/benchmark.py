"""Training and inference throughput of any registered model on any JAX backend.

    python -m cnn_jax.benchmark --model=resnet20 --batch=128 --image_size=32 [--json]

Measures, on random non-zero data resident on the device: images per second for a full training
step (forward, softmax cross-entropy, backward, SGD-momentum update, BatchNorm statistics, buffers
donated) and for inference, as the median over `--repeats` timed runs after a warm-up; the time
to the first training step (state init + trace + compile or persistent-cache load + one run,
after the imports, as the trainer and benchmarks/torch_baseline.py time theirs);
compile time; and peak device memory where the backend reports it (`memory_stats()`, None on the
CPU). The training step is the engine's `cnn_jax.train.steps.train_step` on the engine's
`TrainState`, so the figures are those of the step that training runs.

CPU speed knobs (see benchmarks/RESULTS.md): `--xla_flags` (default: `RECOMMENDED_CPU_XLA_FLAGS`,
which only touch the XLA CPU compiler), `--keep_host_buffers` (default on: glibc malloc settings,
cnn_jax/host_memory.py) and `--steps_per_dispatch` (lax.scan over k steps per call).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

# YNNPACK's convolution kernels make XLA:CPU's weight-gradient convolutions 3-5x slower than
# Eigen's for the small channel counts of CIFAR/MNIST nets (benchmarks/RESULTS.md, "CPU
# throughput"); YNNPACK's dots and other fusions stay on.
RECOMMENDED_CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

MODES = ("train", "infer", "both")
DATA = ("synthetic", "on_device")
DTYPES = ("float32", "bfloat16")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's absl flags, defined only when run as a program: importing this module (for
    `apply_xla_flags`, say) adds no flags to another program."""
    flags.DEFINE_string("model", "resnet20",
                        "Registered model name (see cnn_jax.models.list_models).")
    flags.DEFINE_integer("batch", 128, "Global batch size.")
    flags.DEFINE_integer("image_size", 0, "Input height = width; <= 0: the model's designed size.")
    flags.DEFINE_integer("channels", 0, "Input channels; <= 0: the model's designed channels.")
    flags.DEFINE_integer("num_classes", 0, "Classes; <= 0: the model's designed class count.")
    flags.DEFINE_enum("dtype", "float32", DTYPES, "Compute dtype (parameters stay float32).")
    flags.DEFINE_integer("steps", 20, "Steps per timed repeat.")
    flags.DEFINE_integer("warmup", 2, "Untimed calls after the first, before timing.")
    flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
    flags.DEFINE_enum("mode", "both", MODES, "Measure training, inference or both.")
    flags.DEFINE_integer("steps_per_dispatch", 1,
                         "Train steps per jitted call (lax.scan when > 1).")
    flags.DEFINE_string("xla_flags", "auto",
                        "Appended to $XLA_FLAGS before the backend starts; 'auto' = "
                        "RECOMMENDED_CPU_XLA_FLAGS, '' = none.")
    flags.DEFINE_bool("keep_host_buffers", True,
                      "cnn_jax.host_memory.keep_host_buffers() first, as launch.py does.")
    flags.DEFINE_string("cache_dir", "",
                        "Persistent compilation cache directory ('' = off). A second run with the "
                        "same directory shows the first step of a re-launched run.")
    flags.DEFINE_enum("data", "synthetic", DATA,
                      "synthetic: one random batch resident on the device; on_device: each step "
                      "draws its batch from a uint8 split on the device with the data module's "
                      "on-device augmentation (crop+flip+normalise) fused into the jitted step.")
    flags.DEFINE_integer("data_examples", 50_000, "Split size for --data=on_device.")
    flags.DEFINE_multi_string("set", [], "Model field override KEY=VALUE (repeatable).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures (plain values, so it can come from flags or tests)."""

    model: str = "resnet20"
    batch: int = 128
    image_size: int = 0
    channels: int = 0
    num_classes: int = 0
    dtype: str = "float32"
    steps: int = 20
    warmup: int = 2
    repeats: int = 3
    mode: str = "both"
    steps_per_dispatch: int = 1
    data: str = "synthetic"
    data_examples: int = 50_000
    overrides: tuple[tuple[str, Any], ...] = ()


def apply_xla_flags(extra: str) -> str:
    """Appends `extra` ('auto' = the recommended CPU flags) to $XLA_FLAGS; returns the result.

    Must run before the first JAX computation: XLA reads the variable when a backend starts.
    Flags already present in $XLA_FLAGS win over the same flag in `extra`.
    """
    extra = " ".join(RECOMMENDED_CPU_XLA_FLAGS if f == "auto" else f for f in extra.split())
    current = os.environ.get("XLA_FLAGS", "")
    have = {f.split("=", 1)[0] for f in current.split()}
    added = [f for f in extra.split() if f.split("=", 1)[0] not in have]
    merged = " ".join([current, *added]).strip()
    if merged:
        os.environ["XLA_FLAGS"] = merged
    return merged


def _parse_value(text: str) -> Any:
    """A Python literal (1, 0.5, (16, 32), 'x') or true/false; anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """KEY=VALUE strings -> ((key, value), ...); values are Python literals or true/false."""
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set norm=group")
        key, value = item.split("=", 1)
        out.append((key.strip(), _parse_value(value.strip())))
    return tuple(out)


def _check(cfg: BenchConfig) -> None:
    for name in ("batch", "steps", "repeats", "steps_per_dispatch"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name}={getattr(cfg, name)} must be >= 1")
    if cfg.warmup < 0:
        raise ValueError(f"--warmup={cfg.warmup} must be >= 0")
    if cfg.mode not in MODES:
        raise ValueError(f"--mode={cfg.mode!r} is not one of {MODES}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype={cfg.dtype!r} is not one of {DTYPES}")
    if cfg.data not in DATA:
        raise ValueError(f"--data={cfg.data!r} is not one of {DATA}")
    if cfg.data == "on_device" and cfg.data_examples < cfg.batch:
        raise ValueError(f"--data_examples={cfg.data_examples} must be >= --batch={cfg.batch}")
    if cfg.steps % cfg.steps_per_dispatch:
        raise ValueError(f"--steps={cfg.steps} must be a multiple of "
                         f"--steps_per_dispatch={cfg.steps_per_dispatch}")


def _make_train(model: Any, input_shape: tuple[int, ...], num_classes: int
                ) -> tuple[Callable[[], Any], Callable]:
    """(init_fn, step(state, batch)): the engine's state and train step, SGD-momentum at 0.1."""
    import jax
    import optax

    from cnn_jax.train.state import create_train_state
    from cnn_jax.train.steps import StepConfig, train_step

    tx = optax.sgd(0.1, momentum=0.9)
    scfg = StepConfig(apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(0.1),
                      num_classes=num_classes)
    init = jax.jit(lambda: create_train_state(model, tx, 0, input_shape, ema=False))
    return init, lambda s, b: train_step(s, b, scfg)


def _on_device_data(cfg: BenchConfig, input_shape: tuple[int, ...], num_classes: int
                    ) -> tuple[dict, Callable]:
    """(uint8 split on the device, batch_fn(arrays, step)) from cnn_jax.data.on_device.

    The split is random uint8 images (no files, no TensorFlow); augmentation is CIFAR's
    (4-pixel padded crop, flip, per-channel normalisation) as the data module does it.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnn_jax.data import on_device

    n = cfg.data_examples
    settings = on_device._Settings(
        seed=0, batch_size=cfg.batch, steps_per_epoch=n // cfg.batch, padding=4, flip=True,
        mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=num_classes,
        scale=(1 / 63.0,) * input_shape[-1], bias=(-2.0,) * input_shape[-1])
    rng = np.random.default_rng(0)
    arrays = {"images": jnp.asarray(rng.integers(0, 256, (n, *input_shape), dtype=np.uint8)),
              "labels": jnp.asarray(rng.integers(0, num_classes, n, dtype=np.int32))}
    return jax.block_until_ready(arrays), lambda a, step: on_device._batch(settings, a, step)


def _timed(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for `calls` calls of fn, blocking on the last result."""
    import jax

    t0, c0 = time.perf_counter(), time.process_time()
    out = None
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - t0, time.process_time() - c0


def peak_memory_bytes() -> int | None:
    """Peak bytes in use on the first local device, or None where the backend does not say."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without the API raise various errors
        return None
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Runs the benchmark described by `cfg`; returns the result as a JSON-ready dict."""
    _check(cfg)
    import flax
    import jax
    import jax.numpy as jnp
    import optax

    from cnn_jax import host_memory, models, python_gc
    # The training engine's modules (Orbax among them: 0.2-0.3 s) load here, before the timed
    # window, as the trainer and the PyTorch baseline import theirs before their first step's.
    from cnn_jax.train import state, steps  # noqa: F401

    h, w, c = models.default_input_shape(cfg.model)
    if cfg.image_size > 0:
        h = w = cfg.image_size
    if cfg.channels > 0:
        c = cfg.channels
    num_classes = cfg.num_classes if cfg.num_classes > 0 else models.default_num_classes(cfg.model)
    model = models.build(cfg.model, num_classes=num_classes, dtype=cfg.dtype,
                         **dict(cfg.overrides))
    input_shape = (h, w, c)
    k = cfg.steps_per_dispatch
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    lead = (k,) if k > 1 else ()
    batch = {"image": jax.random.normal(kx, (*lead, cfg.batch, *input_shape), jnp.float32) + 0.5,
             "label": jax.random.randint(ky, (*lead, cfg.batch), 0, num_classes)}
    jax.block_until_ready(batch)
    dev = jax.local_devices()[0]
    result: dict[str, Any] = {
        "model": cfg.model, "batch": cfg.batch, "input_shape": list(input_shape),
        "num_classes": num_classes, "dtype": cfg.dtype, "steps": cfg.steps,
        "repeats": cfg.repeats, "steps_per_dispatch": k, "overrides": dict(cfg.overrides),
        "data": cfg.data,
        "backend": jax.default_backend(), "device": dev.device_kind,
        "num_devices": jax.device_count(), "jax": jax.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cache_dir": jax.config.jax_compilation_cache_dir or "",
        "keep_host_buffers": host_memory.kept(),
        "python_gc_settled": python_gc.settled(),
        "loadavg_start": round(os.getloadavg()[0], 2),
    }

    state = None
    if cfg.mode in ("train", "both"):
        t_start = time.perf_counter()
        init, step = _make_train(model, input_shape, num_classes)
        state = init()
        arrays, batch_fn = None, None
        if cfg.data == "on_device":
            arrays, batch_fn = _on_device_data(cfg, input_shape, num_classes)
            batch = {"step": jnp.zeros((k,) if k > 1 else (), jnp.int32)}

        def one(s, b, split):
            if batch_fn is not None:  # draw and augment the batch of step s.step in the step
                b = batch_fn(split, s.step)
            return step(s, b)

        def many(s, b, split):
            return jax.lax.scan(lambda s, b: one(s, b, split), s, b)

        fn = jax.jit(many if k > 1 else one, donate_argnums=0)
        t0 = time.perf_counter()
        compiled = fn.lower(state, batch, arrays).compile()
        compile_s = time.perf_counter() - t0
        state, metrics = compiled(state, batch, arrays)
        jax.block_until_ready(metrics)
        first_step_s = time.perf_counter() - t_start
        holder = [state]

        def call():
            holder[0], m = compiled(holder[0], batch, arrays)
            return m

        _timed(call, cfg.warmup)
        walls, cpus = [], []
        for _ in range(cfg.repeats):
            wall, cpu = _timed(call, cfg.steps // k)
            walls.append(wall)
            cpus.append(cpu)
        state = holder[0]
        loss = jax.device_get(metrics["loss"])
        rates = [cfg.batch * cfg.steps / t for t in walls]
        result.update({
            "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "train_img_per_s": statistics.median(rates),
            "train_img_per_s_all": rates,
            "train_step_ms": 1e3 * statistics.median(walls) / cfg.steps,
            "train_cpu_ms_per_step": 1e3 * statistics.median(cpus) / cfg.steps,
            "train_compile_s": compile_s,
            "first_step_s": first_step_s,
            "first_loss_finite": bool(jnp.all(jnp.isfinite(loss))),
        })

    if cfg.mode in ("infer", "both"):
        if state is None:
            state = _make_train(model, input_shape, num_classes)[0]()
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        images = jax.random.normal(kx, (cfg.batch, *input_shape), jnp.float32) + 0.5
        infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
        t0 = time.perf_counter()
        compiled_infer = infer.lower(variables, images).compile()
        infer_compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled_infer(variables, images))
        call = lambda: compiled_infer(variables, images)  # noqa: E731
        _timed(call, cfg.warmup)
        walls = [_timed(call, cfg.steps)[0] for _ in range(cfg.repeats)]
        rates = [cfg.batch * cfg.steps / t for t in walls]
        result.update({"infer_img_per_s": statistics.median(rates), "infer_img_per_s_all": rates,
                       "infer_compile_s": infer_compile_s})

    result["peak_memory_bytes"] = peak_memory_bytes()
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    return result


def format_table(r: dict[str, Any]) -> str:
    """A short human-readable summary of one result."""
    def f(key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "-"

    mem = r.get("peak_memory_bytes")
    mem_txt = "n/a (backend does not report it)" if mem is None else f"{mem / 2**20:,.0f} MiB"
    lines = [
        f"{r['model']}  batch {r['batch']}  input {'x'.join(map(str, r['input_shape']))}  "
        f"{r['dtype']}  on {r['backend']} ({r['device']}), jax {r['jax']}",
        f"  train:  {f('train_img_per_s', ',.1f')} img/s  ({f('train_step_ms', '.1f')} ms/step, "
        f"{f('train_cpu_ms_per_step', '.0f')} CPU-ms/step, engine step, "
        f"{r['steps_per_dispatch']} step(s)/dispatch)",
        f"  infer:  {f('infer_img_per_s', ',.1f')} img/s",
        f"  first step {f('first_step_s', '.2f')} s, train compile {f('train_compile_s', '.2f')} s,"
        f" infer compile {f('infer_compile_s', '.2f')} s",
        f"  peak device memory: {mem_txt}",
        f"  load average {r['loadavg_start']} -> {r['loadavg_end']}; XLA_FLAGS={r['xla_flags']!r}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.keep_host_buffers:
        from cnn_jax import host_memory

        host_memory.keep_host_buffers()
    apply_xla_flags(FLAGS.xla_flags)
    if FLAGS.cache_dir:
        from cnn_jax import files

        files.enable_compilation_cache(FLAGS.cache_dir)
    cfg = BenchConfig(
        model=FLAGS.model, batch=FLAGS.batch, image_size=FLAGS.image_size,
        channels=FLAGS.channels, num_classes=FLAGS.num_classes, dtype=FLAGS.dtype,
        steps=FLAGS.steps, warmup=FLAGS.warmup, repeats=FLAGS.repeats, mode=FLAGS.mode,
        steps_per_dispatch=FLAGS.steps_per_dispatch,
        data=FLAGS.data, data_examples=FLAGS.data_examples,
        overrides=parse_overrides(FLAGS.set))
    # What run() imports, loaded here so that python_gc.settle() freezes it with the rest.
    import flax  # noqa: F401
    import optax  # noqa: F401

    from cnn_jax import models, python_gc  # noqa: F401
    from cnn_jax.train import state, steps  # noqa: F401

    python_gc.settle()
    try:
        result = run(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result) if FLAGS.json else format_table(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
