"""Compiles cnn_jax's C++ XLA FFI handlers (`cnn_jax/native/*.cc`) into the environment's lib/.

Used by `cnn_jax.onednn` (convolutions on oneDNN) and `cnn_jax.threefry` (JAX's PRNG hash as one
call); each module says why it needs native code. Nothing in jax or setuptools builds an FFI
handler against the installed jaxlib's headers at install time, hence this helper: one compiler
call, named by the source's hash so that an edited source is rebuilt, written atomically.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

SOURCES = Path(__file__).resolve().parent


def library_path(source: Path, stem: str) -> Path:
    """The environment's lib/<stem>-<hash of the source>.so."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return Path(sys.prefix) / "lib" / f"{stem}-{digest}.so"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def compile_library(source: Path, out: Path, flags: list[str], what: str) -> Path:
    """`$CXX -shared source flags -o out`, atomically (a concurrent build or load never sees
    half a file); raises RuntimeError with the compiler's message. `what` names the handlers."""
    import jax

    cxx = compiler()
    if cxx is None:
        raise RuntimeError(f"cannot build {what}: no C++ compiler (g++; Debian: apt-get install "
                           "g++)")
    out.parent.mkdir(parents=True, exist_ok=True)  # the compiler writes tmp beside out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cxx, "-std=c++17", "-shared", "-fPIC", f"-I{jax.ffi.include_dir()}",
           str(source), *flags, "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building {what} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    tmp.replace(out)
    return out


def supported_platform() -> bool:
    """x86-64 Linux: where the handlers (and their x86 instruction-set variants) are built."""
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def build_command(argv: Sequence[str], module: str, build: Callable[[], Path],
                  fallback: str) -> int:
    """`python -m <module> build`: builds, or says why not and what is used instead."""
    if list(argv[1:]) != ["build"]:
        print(f"usage: python -m {module} build", file=sys.stderr)
        return 2
    if not supported_platform():
        print(f"{module}: nothing to build on {platform.system()} {platform.machine()} "
              f"(x86-64 Linux only); {fallback} used")
        return 0
    try:
        build()
    except RuntimeError as e:
        print(f"ERROR: {e}\n{fallback} used instead.", file=sys.stderr)
        return 1
    return 0
