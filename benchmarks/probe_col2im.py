"""Per-op time of a stride-1 convolution's input gradient: XLA's transposed convolution against
`cnn_jax.ops._col2im_input_grad` (one dot over the output channels, then a col2im), on the
shapes that set `ops.COL2IM_MAX_CHANNELS` and `ops.COL2IM_MAX_BYTES`.

    python benchmarks/probe_col2im.py

Batch 128, float32, each op jitted alone; best of 5 x 10 calls, wall and process CPU time. Also
prints each shape's column tensor size and the largest difference between the two gradients.
"""

from __future__ import annotations

import time

from cnn_jax.benchmark import RECOMMENDED_CPU_XLA_FLAGS, apply_xla_flags

apply_xla_flags(RECOMMENDED_CPU_XLA_FLAGS)

import jax  # noqa: E402
from jax import lax  # noqa: E402

from cnn_jax import ops  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# (spatial size, input channels, output channels, kernel, padding)
SHAPES = [(14, 6, 16, 5, 0), (16, 4, 8, 3, 1), (16, 8, 8, 3, 1), (16, 8, 16, 3, 1),
          (20, 6, 16, 5, 0), (24, 6, 16, 5, 0), (32, 8, 8, 3, 1), (32, 8, 16, 3, 1),
          (32, 3, 16, 5, 2), (32, 16, 16, 3, 1)]


def best(f, *args) -> tuple[float, float]:
    jax.block_until_ready(f(*args))
    out = (float("inf"), float("inf"))
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(10):
            y = f(*args)
        jax.block_until_ready(y)
        out = min(out, ((time.perf_counter() - t) * 100, (time.process_time() - c) * 100))
    return out  # ms per call


def main() -> None:
    print(f"jax {jax.__version__}; ms per call (wall / CPU), batch 128")
    for hw, ci, co, k, p in SHAPES:
        kx, kw = jax.random.split(jax.random.PRNGKey(0))
        x = jax.random.normal(kx, (128, hw, hw, ci))
        w = jax.random.normal(kw, (k, k, ci, co))
        pads = ((p, p), (p, p))
        dy = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC)
        xla = jax.jit(lambda w, dy: jax.vjp(lambda x: lax.conv_general_dilated(
            x, w, (1, 1), pads, dimension_numbers=NHWC), x)[1](dy)[0])
        col = jax.jit(lambda w, dy: ops._col2im_input_grad(dy, w, pads, (hw, hw)))
        diff = float(abs(xla(w, dy) - col(w, dy)).max())
        cols_mb = 128 * dy.shape[1] * dy.shape[2] * k * k * ci * 4 / 1e6
        (xw, xc), (cw, cc) = best(xla, w, dy), best(col, w, dy)
        print(f"{hw:2}x{hw:<2} {ci:2} -> {co:2} {k}x{k} pad {p}: columns {cols_mb:5.1f} MB | XLA "
              f"{xw:6.2f} / {xc:6.2f} | col2im {cw:6.2f} / {cc:6.2f} | col2im/XLA wall "
              f"{cw / xw:4.2f} | max |diff| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
