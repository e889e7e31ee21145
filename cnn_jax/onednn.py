"""oneDNN convolutions for the XLA CPU backend, through XLA's FFI (issue 15).

jaxlib 0.10.2's CPU backend runs convolutions on Eigen's tensor contractions and routes none to
oneDNN whatever the XLA flags say (benchmarks/RESULTS.md). Per op, on the CIFAR ResNets' 3x3
convolutions at batch 128 (2-core AMD EPYC, AVX-512; `benchmarks/probe_onednn.py`), oneDNN's
forward pass takes 2.4-3.5 ms against XLA's 3.4-5.9, the input gradient 2.4-3.9 against 3.4-5.9
and the weight gradient 2.5-3.7 against 4.6-11.4: XLA's weight gradient also transposes the
layer's input to (C, H, W, N) first. PyTorch's CPU convolutions are oneDNN's. Nothing in jax,
flax or XLA exposes oneDNN's convolutions, hence this module and its C++ handlers
(`cnn_jax/native/onednn_conv.cc`): forward, backward-data and backward-weights primitives on
NHWC activations and HWIO kernels, float32, cached per shape, tied together here by a
`jax.custom_vjp`; and for inference (`conv_bias`) a forward primitive that also adds a bias
and a residual and applies a ReLU as it writes its output, which `cnn_jax.ops.conv_bn_inference`
uses with BatchNorm folded into the kernel and the bias. The library is PyPI's
`onednn-cpu-gomp` (oneDNN 3.2, GNU OpenMP threads), its headers `onednn-devel-cpu-gomp`; the
handlers are compiled with the system's C++ compiler into the environment's `lib/` by
`python -m cnn_jax.onednn build` (`make venv` runs it). On CPUs with AVX2 but not AVX-512 the
handlers take oneDNN's direct kernels instead of its first choice (brgemm) for the forward pass of
1x1 convolutions and both passes of strided ones, which were faster there (benchmarks/RESULTS.md);
CNN_JAX_ONEDNN_PICK=first keeps oneDNN's first choice.

`conv` is used by `cnn_jax.ops.conv_general_dilated` on the CPU backend for float32 NHWC
convolutions without dilation or groups, when `available()`; everything else, and every
convolution when the library cannot be built or loaded (no compiler, another OS or CPU
architecture) or when CNN_JAX_ONEDNN=0 is set, stays XLA's. Values and gradients agree with
XLA's convolution to float32 rounding (the test suite checks both). Limits: no forward-mode
derivative (`jax.jvp`) and no second derivative through these convolutions; set
CNN_JAX_ONEDNN=0 for those.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import native

SOURCE = native.SOURCES / "onednn_conv.cc"
ENV_SWITCH = "CNN_JAX_ONEDNN"  # "0" turns the oneDNN convolutions off
_TARGETS = ("Forward", "ForwardBias", "BackwardData", "BackwardWeights")
_state: dict[str, object] = {}


def _prefix() -> Path:
    return Path(sys.prefix)


def library_path() -> Path:
    """Where the compiled handlers live: the environment's lib/, named by the source's hash."""
    return native.library_path(SOURCE, "libcnn_jax_onednn")


def _dnnl_lib() -> Path:
    return _prefix() / "lib" / "libdnnl.so.3"


def build(quiet: bool = False) -> Path:
    """Compiles the handlers against this environment's jaxlib and oneDNN; returns the .so path.

    Raises RuntimeError naming what is missing (compiler, oneDNN headers or library).
    """
    out = library_path()
    if out.exists():
        return out
    include = _prefix() / "include"
    missing = [what for what, ok in (
        ("a C++ compiler (g++; Debian: apt-get install g++)", native.compiler()),
        (f"oneDNN headers in {include} (pip install onednn-devel-cpu-gomp)",
         (include / "oneapi" / "dnnl" / "dnnl.hpp").exists()),
        (f"oneDNN in {_dnnl_lib()} (pip install onednn-cpu-gomp)", _dnnl_lib().exists()),
    ) if not ok]
    if missing:
        raise RuntimeError("cannot build the oneDNN convolutions: missing " + "; ".join(missing))
    native.compile_library(SOURCE, out, ["-O2", f"-I{include}", f"-L{_dnnl_lib().parent}",
                                         "-l:libdnnl.so.3", "-Wl,-rpath,$ORIGIN"],
                           "the oneDNN convolutions")
    if not quiet:
        print(f"built {out}")
    return out


def available() -> bool:
    """Whether the oneDNN convolutions are on: built (or buildable now), loaded and registered.

    Decided once per process; False with one warning saying why when they cannot be used.
    """
    if "ok" in _state:
        return bool(_state["ok"])
    ok = False
    if os.environ.get(ENV_SWITCH, "1") == "0" or not native.supported_platform():
        _state["ok"] = False
        return False
    try:
        path = library_path()
        if not path.exists():
            build(quiet=True)
        # OpenMP threads that sleep at once after each convolution instead of spinning for the
        # CPU that XLA's own threads need next; read by libgomp when it loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        ctypes.CDLL(str(_dnnl_lib()), mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(str(path))
        for name in _TARGETS:
            jax.ffi.register_ffi_target(f"cnn_jax_onednn_conv_{name}",
                                        jax.ffi.pycapsule(getattr(lib, f"CnnJaxOnednnConv{name}")),
                                        platform="cpu")
        ok = True
    except (OSError, RuntimeError, AttributeError) as e:
        warnings.warn(f"cnn_jax: oneDNN convolutions unavailable, using XLA's ({e}). "
                      f"Run `python -m cnn_jax.onednn build` to see why; set {ENV_SWITCH}=0 to "
                      "silence this.", stacklevel=2)
    _state["ok"] = ok
    _state["lib"] = lib if ok else None
    return ok


def supports(lhs_shape: Sequence[int], rhs_shape: Sequence[int], dtype: object,
             lhs_dilation: Sequence[int] | None, rhs_dilation: Sequence[int] | None,
             feature_group_count: int, pads: Sequence[tuple[int, int]]) -> bool:
    """Whether `conv` handles this NHWC/HWIO convolution (oneDNN's availability aside)."""
    return (len(lhs_shape) == 4 and len(rhs_shape) == 4 and jnp.dtype(dtype) == jnp.float32
            and feature_group_count == 1 and lhs_shape[3] == rhs_shape[2]
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and all(lo >= 0 and hi >= 0 for lo, hi in pads) and min(lhs_shape) > 0
            and min(rhs_shape) > 0 and all(
                lhs_shape[1 + i] + pads[i][0] + pads[i][1] >= rhs_shape[i] for i in range(2)))


def _attrs(strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> dict:
    (pt, pb), (pl, pr) = pads
    return {"stride_h": np.int64(strides[0]), "stride_w": np.int64(strides[1]),
            "pad_top": np.int64(pt), "pad_bottom": np.int64(pb), "pad_left": np.int64(pl),
            "pad_right": np.int64(pr)}


def _call(name: str, shape: tuple[int, ...], *args: jax.Array, strides, pads, aliases=None,
          **attrs):
    return jax.ffi.ffi_call(f"cnn_jax_onednn_conv_{name}", jax.ShapeDtypeStruct(shape, jnp.float32),
                            vmap_method="sequential", input_output_aliases=aliases)(
        *args, **_attrs(strides, pads), **attrs)


def output_shape(x_shape, w_shape, strides, pads) -> tuple[int, ...]:
    """The NHWC output shape of an NHWC x HWIO convolution with explicit padding."""
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    return (n, (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1,
            (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
         pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """NHWC x HWIO -> NHWC float32 cross-correlation on oneDNN (call `available()` first)."""
    return _call("Forward", output_shape(x.shape, w.shape, strides, pads), x, w, strides=strides,
                 pads=pads)


def _conv_fwd(x, w, strides, pads):
    return conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, saved, g):
    x, w = saved
    g = g.astype(jnp.float32)
    dx = _call("BackwardData", x.shape, g, w, strides=strides, pads=pads)
    dw = _call("BackwardWeights", w.shape, x, g, strides=strides, pads=pads)
    return dx, dw


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_bias(x: jax.Array, w: jax.Array, b: jax.Array, residual: jax.Array | None,
              strides: tuple[int, int], pads: tuple[tuple[int, int], ...],
              relu: bool) -> jax.Array:
    """conv(x, w) + b (+ residual), then ReLU if `relu`, as one oneDNN primitive: the bias, the
    residual (oneDNN's `sum` post-op, into the residual's buffer) and the ReLU are applied as
    each output tile is written. For inference; differentiable all the same (the backward pass
    is `conv`'s, through the ReLU's mask)."""
    add = residual is not None
    r = residual.astype(jnp.float32) if add else jnp.zeros((0,), jnp.float32)
    return _conv_bias(x, w, b, r, tuple(strides), tuple(pads), bool(relu), add)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _conv_bias(x, w, b, r, strides, pads, relu, add):
    return _call("ForwardBias", output_shape(x.shape, w.shape, strides, pads), x, w, b, r,
                 strides=strides, pads=pads, aliases={3: 0} if add else None,
                 relu=np.int64(relu), add=np.int64(add))


def _conv_bias_fwd(x, w, b, r, strides, pads, relu, add):
    y = _conv_bias(x, w, b, r, strides, pads, relu, add)
    return y, (x, w, y)


def _conv_bias_bwd(strides, pads, relu, add, saved, g):
    x, w, y = saved
    g = g.astype(jnp.float32)
    if relu:
        g = jnp.where(y > 0, g, 0.0)
    dx, dw = _conv_bwd(strides, pads, (x, w), g)
    return dx, dw, jnp.sum(g, axis=(0, 1, 2)), g if add else jnp.zeros((0,), jnp.float32)


_conv_bias.defvjp(_conv_bias_fwd, _conv_bias_bwd)


def main(argv: Sequence[str]) -> int:
    return native.build_command(argv, "cnn_jax.onednn", build, "XLA's convolutions are")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
