"""Where a train step's CPU time goes: per-op time from a `jax.profiler` trace, summed by op.

    python benchmarks/profile_step.py --model=resnet20 [--batch=128] [--steps=3]

Runs the engine's `train_step` (SGD momentum, as `cnn_jax.benchmark` does) on random data, traces
`--steps` steps with `jax.profiler`, reads the trace's XPlane protobuf and prints, per XLA op
(fusion, convolution, YNNPACK fusion), the milliseconds per step summed over threads, then the
same grouped by op family (`transpose_copy_fusion`, `ynn_fusion`, ...). It also writes the
compiled step's HLO next to the trace so that a fusion's inputs can be looked up by name.

Written by hand because nothing in the stack prints a per-op table from a trace without a
TensorBoard/xprof front end; reading the XPlane needs TensorFlow's `xplane_pb2` (the `tf` extra).
Not every cycle is labelled: on XLA:CPU the Eigen convolutions' work runs in pool tasks the trace
does not name, so the table covers XLA's own fusions and thunks (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="", help="trace directory (default: a new temporary one)")
    args = p.parse_args()
    if args.batch < 1 or args.steps < 1:
        raise SystemExit(f"ERROR: --batch={args.batch} and --steps={args.steps} must be >= 1")

    from cnn_jax.benchmark import RECOMMENDED_CPU_XLA_FLAGS, _make_train, apply_xla_flags
    apply_xla_flags(RECOMMENDED_CPU_XLA_FLAGS)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnn_jax import models
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as e:
        raise SystemExit("ERROR: reading the trace needs TensorFlow's xplane_pb2; install the tf "
                         f"extra (pip install -e '.[tf]') ({e})")

    if args.model not in models.list_models():
        raise SystemExit(f"ERROR: --model={args.model!r} is not registered; one of "
                         f"{', '.join(models.list_models())}")
    num_classes = models.default_num_classes(args.model)
    model = models.build(args.model, num_classes=num_classes)
    shape = models.default_input_shape(args.model)
    init, train_step = _make_train(model, shape, num_classes)  # the benchmark's step and state
    state = init()
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(args.batch, *shape)).astype(np.float32)),
             "label": jnp.asarray(rng.integers(0, num_classes, args.batch).astype(np.int32))}
    step = jax.jit(train_step, donate_argnums=0)
    hlo = step.lower(state, batch).compile().as_text()
    for _ in range(2):
        state, m = step(state, batch)
    jax.block_until_ready(m)

    out = args.out or tempfile.mkdtemp(prefix=f"profile_{args.model}_")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "step_hlo.txt"), "w") as f:
        f.write(hlo)
    t0 = time.perf_counter()
    with jax.profiler.trace(out):
        for _ in range(args.steps):
            state, m = step(state, batch)
        jax.block_until_ready(m)
    wall = (time.perf_counter() - t0) / args.steps

    files = glob.glob(os.path.join(out, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(files[0], "rb") as f:
        space.ParseFromString(f.read())
    per_op, calls = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                name = names.get(ev.metadata_id, "?")
                if "Thunk" in name or "$" in name or "Execute" in name:
                    continue  # wrappers around the ops, not ops
                per_op[name] += ev.duration_ps / 1e9 / args.steps
                calls[name] += 1
    total = sum(per_op.values())
    print(f"{args.model}, batch {args.batch}: {1000 * wall:.1f} ms wall per step under the "
          f"profiler; {total:.1f} ms per step in labelled XLA ops (summed over threads)")
    print(f"trace and HLO: {out}")
    for name, ms in per_op.most_common(args.top):
        print(f"{ms:9.2f} ms {100 * ms / total:5.1f}%  {name}")
    families = collections.Counter()
    for name, ms in per_op.items():
        families[re.sub(r"\.\d+$", "", name)] += ms
    print("by op family:")
    for name, ms in families.most_common(args.top):
        print(f"{ms:9.2f} ms {100 * ms / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
