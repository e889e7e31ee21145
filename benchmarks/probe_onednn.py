"""Per-op time of oneDNN's convolutions (cnn_jax.onednn) against XLA's on the CPU backend.

    python benchmarks/probe_onednn.py [--batch=128] [--calls=20]

For each convolution shape of the CIFAR ResNets (and LeNet-5's conv2), the forward pass, the
input gradient and the weight gradient, each jitted alone: median wall milliseconds per call,
and the largest difference from XLA's result relative to its largest magnitude. XLA's gradients
come from `jax.vjp` of `lax.conv_general_dilated`, which includes the transposes XLA adds around
its weight-gradient convolution. Host buffers are kept as the trainer keeps them
(cnn_jax.host_memory). Prints the CPU's model first.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

SHAPES = [  # (H=W, C_in, C_out, kernel, stride, padding)
    (32, 16, 16, 3, 1, 1), (16, 32, 32, 3, 1, 1), (8, 64, 64, 3, 1, 1),
    (32, 16, 32, 3, 2, 1), (32, 16, 32, 1, 2, 0), (14, 6, 16, 5, 1, 0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()
    if args.batch < 1 or args.calls < 1:
        raise SystemExit(f"ERROR: --batch={args.batch} and --calls={args.calls} must be >= 1")

    from cnn_jax import host_memory
    host_memory.keep_host_buffers()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from cnn_jax import onednn
    if not onednn.available():
        raise SystemExit("ERROR: oneDNN convolutions unavailable: python -m cnn_jax.onednn build")
    model = [line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines()
        if line.startswith("Model name")]
    print(f"CPU: {model[0] if model else 'unknown'}; jax {jax.__version__}; batch {args.batch}")

    def ms(fn, *a):
        jax.block_until_ready(fn(*a))
        times = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    for hw, cin, cout, k, s, pad in SHAPES:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((args.batch, hw, hw, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.1)
        strides, pads = (s, s), ((pad, pad), (pad, pad))

        def xla(x, w):
            return lax.conv_general_dilated(x, w, strides, pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def dnn(x, w):
            return onednn.conv(x, w, strides, pads)

        g = jnp.asarray(rng.standard_normal(xla(x, w).shape, np.float32))
        row = []
        for f in (dnn, xla):
            fwd = jax.jit(f)
            dx = jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g)[0])
            dw = jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g)[1])
            row.append(([ms(fwd, x, w), ms(dx, x, w, g), ms(dw, x, w, g)],
                        [fwd(x, w), dx(x, w, g), dw(x, w, g)]))
        errs = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(row[0][1], row[1][1])]
        (d_f, d_dx, d_dw), (x_f, x_dx, x_dw) = row[0][0], row[1][0]
        print(f"{hw}x{hw}x{cin}->{cout} k{k} s{s}: fwd / dx / dw ms  oneDNN {d_f:.2f} / "
              f"{d_dx:.2f} / {d_dw:.2f}  XLA {x_f:.2f} / {x_dx:.2f} / {x_dw:.2f}  ratio "
              f"{x_f / d_f:.2f} / {x_dx / d_dx:.2f} / {x_dw / d_dw:.2f}  max rel diff "
              + " / ".join(f"{e:.1e}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
