"""Probe: one training step data-parallel over N host devices (one core each) against one device.

`python benchmarks/cpu_data_parallel.py --devices=2 --xla_flags="--xla_cpu_multi_thread_eigen=false"`
prints one line: img/s (median of 3 repeats of 10 steps), CPU-ms per step and the loss. The step
is the engine's (`cnn_jax.benchmark._make_train`), jitted with the batch sharded over a 1-D mesh
and the state replicated, so BatchNorm sees the global batch. XLA flags are read when the backend
starts, so each variant is its own process; interleave them (RESULTS.md, issue 15).
"""

import argparse
import os
import statistics
import time

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--xla_flags", default="")
parser.add_argument("--model", default="resnet20")
parser.add_argument("--cache_dir", default="")
parser.add_argument("--tag", default="")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} "
                           + args.xla_flags).strip()

import jax  # noqa: E402 - after XLA_FLAGS
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from cnn_jax import files, models  # noqa: E402
from cnn_jax.benchmark import _make_train  # noqa: E402

if args.cache_dir:
    files.enable_compilation_cache(args.cache_dir)
num_classes, shape = 10, models.default_input_shape(args.model)
init, step = _make_train(models.build(args.model, num_classes=num_classes), shape, num_classes)
mesh = jax.make_mesh((args.devices,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
replicated = NamedSharding(mesh, PartitionSpec())
state = jax.device_put(init(), replicated)
kx, ky = jax.random.split(jax.random.PRNGKey(1))
batch = jax.device_put({"image": jax.random.normal(kx, (128, *shape)) + 0.5,
                        "label": jax.random.randint(ky, (128,), 0, num_classes)},
                       NamedSharding(mesh, PartitionSpec("batch")))
fn = jax.jit(step, donate_argnums=0, out_shardings=(replicated, None))
for _ in range(3):
    state, metrics = fn(state, batch)
jax.block_until_ready(metrics)
rates, cpu_ms = [], []
for _ in range(3):
    t, c = time.perf_counter(), time.process_time()
    for _ in range(10):
        state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    rates.append(1280 / (time.perf_counter() - t))
    cpu_ms.append((time.process_time() - c) * 100)
print(f"{args.tag}: devices={args.devices} img/s median {statistics.median(rates):.1f} "
      f"all {[round(x) for x in rates]} cpu-ms/step {statistics.median(cpu_ms):.0f} "
      f"loss {float(metrics['loss']):.5f}", flush=True)
