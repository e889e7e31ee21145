"""jax.random's Threefry-2x32 hash as one XLA FFI call on the CPU backend (issue 15).

JAX lowers its `threefry2x32` primitive on the CPU to a rolled loop (a `while` over five groups
of four rounds), lowered and compiled once per distinct shape of a random draw. Initialising a
model draws one array per weight, so its init program is mostly these loops. For ResNet-20 (21
draws; 2-core AMD EPYC with AVX2; benchmarks/cpu_logs/2026-12-07-avx2/probe_init_threefry.txt)
lowering took 0.31-0.34 s instead of 0.12-0.13 s, loading the compiled program from the
persistent cache 0.24-0.33 s instead of 0.08-0.11 s, and its cold compile 6.3 s instead of 1.5 s.
Here the primitive lowers to one call of a C++ handler (`cnn_jax/native/threefry.cc`) doing the
same integer arithmetic, so the bits are the same: initial states, dropout masks and
augmentation draws do not change (the test suite checks known-answer vectors, a NumPy reference
and JAX's own lowering). JAX has such a kernel only for GPUs
(`jax_threefry_gpu_kernel_lowering`), hence this module.

`install()` (run when `cnn_jax.ops` is imported, so by every model) registers this lowering for
the CPU platform where the handler library is built (`python -m cnn_jax.threefry build`; `make
venv` runs it) and loads. Without it, or with CNN_JAX_THREEFRY=0, JAX's own lowering stays.
Under jit over several devices with sharded random draws, XLA's partitioner does not split the
call: each device computes the whole draw and keeps its part (same bits, more work). Draws of
256k values or more are split over OpenMP threads; the handler was faster than JAX's loop from
4k to 4M values (`probe_threefry_speed.txt` in the same folder).
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

from cnn_jax import native

SOURCE = native.SOURCES / "threefry.cc"
ENV_SWITCH = "CNN_JAX_THREEFRY"  # "0" keeps JAX's own lowering
TARGET = "cnn_jax_threefry2x32"
_state: dict[str, bool] = {}


def library_path():
    return native.library_path(SOURCE, "libcnn_jax_threefry")


def build(quiet: bool = False):
    """Compiles the handler against this environment's jaxlib; returns the .so path."""
    out = library_path()
    if not out.exists():
        native.compile_library(SOURCE, out, ["-O3", "-fopenmp"], "the Threefry handler")
        if not quiet:
            print(f"built {out}")
    return out


def _hash(k1, k2, x1, x2):
    shape = jnp.broadcast_shapes(k1.shape, k2.shape, x1.shape, x2.shape)
    if 0 in shape:
        zeros = jnp.zeros(shape, jnp.uint32)
        return [zeros, zeros]
    out = jax.ShapeDtypeStruct(shape, jnp.uint32)
    return list(jax.ffi.ffi_call(TARGET, (out, out))(
        *(jnp.broadcast_to(v, shape) for v in (k1, k2, x1, x2))))


def install() -> bool:
    """Lowers `threefry2x32` on the CPU to the handler, once per process; whether it is on."""
    if "on" in _state:
        return _state["on"]
    on = False
    path = library_path()
    if os.environ.get(ENV_SWITCH, "1") != "0" and native.supported_platform() and path.exists():
        try:
            # libgomp reads this when it loads: threads that sleep after a large draw instead
            # of spinning for the CPU that XLA's threads need (as cnn_jax.onednn sets it).
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            lib = ctypes.CDLL(str(path))
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.CnnJaxThreefry2x32),
                                        platform="cpu")
            mlir.register_lowering(threefry2x32_p, mlir.lower_fun(_hash, multiple_results=True),
                                   platform="cpu")
            on = True
        except (OSError, AttributeError) as e:  # a damaged or foreign library file
            warnings.warn(f"cnn_jax: cannot load {path} ({e}); JAX's own Threefry lowering is "
                          f"used. Delete the file and run `python -m cnn_jax.threefry build`, or "
                          f"set {ENV_SWITCH}=0 to silence this.", stacklevel=2)
    _state["on"] = on
    return on


def main(argv) -> int:
    return native.build_command(argv, "cnn_jax.threefry", build, "JAX's own Threefry lowering is")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
