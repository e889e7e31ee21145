"""Python's cycle collector, set for a process that imports a large stack and then traces one
large program (issue 15).

By the time a run builds its model, the interpreter holds about 140,000 container objects
(jax, flax, optax, orbax, absl and their modules), and tracing a training step makes hundreds of
thousands more, most of them alive until the program is lowered (ResNet-20's step has 2,162
equations). With CPython's default thresholds (700, 10, 10) the collector walks them again and
again while the program is built: in the benchmark's re-launch path (init program, step
trace, lowering, loading, first run; ResNet-20, 2-core AMD EPYC with AVX2) it ran 116 times
for 0.12-0.17 s, and the whole path took 2.23-2.67 s against 2.08-2.56 s with `settle()`, which
left no collection in it (benchmarks/cpu_logs/2026-12-07b-avx2/probe_gc.txt; the benchmark's
first step, alternating: median 2.50 s against 2.24 s, ab_gc.txt).

`settle()` does what long-running Python services do after start-up: `gc.freeze()` moves every
object alive now (modules, flags, configs) out of the collector's sight for good, and a gen-0
threshold of 100,000 lets a trace run without stopping every 700 allocations. Reference
counting still frees everything as usual; cycles are still collected, less often. Nothing in
jax, flax or the standard library does this, hence this module.

Entry points call it (`launch.py`'s training, eval and predict modes, `cnn_jax.benchmark`)
after their imports and before building a model, never a library function: a test process that
froze its objects before each test would keep every earlier test's cycles alive.
CNN_JAX_GC=default keeps CPython's settings.
"""

from __future__ import annotations

import gc
import os

ENV_SWITCH = "CNN_JAX_GC"  # "default": leave the collector as CPython sets it
GEN0_THRESHOLD = 100_000

_settled = False


def settle() -> bool:
    """Freezes the objects alive now and raises the gen-0 threshold; whether it did.

    Idempotent (a second call freezes nothing more). Off where CNN_JAX_GC=default.
    """
    global _settled
    if os.environ.get(ENV_SWITCH, "") == "default":
        return False
    if not _settled:
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
        _settled = True
    return True


def settled() -> bool:
    """Whether `settle` changed the collector's settings in this process."""
    return _settled
