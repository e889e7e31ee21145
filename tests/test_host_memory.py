"""cnn_jax.host_memory: with its malloc settings, a large buffer freed and allocated again on a
worker thread (as XLA:CPU's convolutions do every step) reuses its pages instead of faulting in
new ones. Each case runs in a fresh interpreter, whose malloc state nothing else has touched."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_jax import host_memory

REPO = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's; elsewhere keep_host_buffers does nothing")

_PROBE = """
import ctypes, resource, sys, threading
from cnn_jax import host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "on":
    assert host_memory.keep_host_buffers() and host_memory.keep_host_buffers()  # idempotent
assert host_memory.kept() == (sys.argv[1] == "on")
faults = []
def work():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = libc.malloc(80 * 2**20)  # 80 MB with plain malloc, as Eigen's buffers are
        ctypes.memset(buf, 1, 80 * 2**20)  # written
        libc.free(buf)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(sum(faults[2:]))  # after the first allocations
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@glibc_only
def test_reallocated_buffers_reuse_their_pages():
    off, on = _faults("off"), _faults("on")
    # 4 x 80 MB = 80,000 pages of 4 KiB faulted in again by default; a few hundred at most kept
    assert off > 40_000, off
    assert on < off // 20, (on, off)


_TRIM_PROBE = """
import ctypes, resource, sys
from cnn_jax import host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
assert host_memory.keep_host_buffers()
if sys.argv[1] == "int_max":  # the previous setting, the largest positive int
    assert libc.mallopt(host_memory.M_TRIM_THRESHOLD, 2**31 - 1) == 1
size = 720 * 2**20  # three of them free at the top of the heap: more than 2 GiB
bufs = [libc.malloc(size) for _ in range(3)]
for b in bufs:
    ctypes.memset(b, 1, size)
for b in reversed(bufs):
    libc.free(b)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
bufs = [libc.malloc(size) for _ in range(3)]
for b in bufs:
    ctypes.memset(b, 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc_only
def test_a_heap_with_more_than_2_gib_free_is_not_trimmed():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _TRIM_PROBE, mode], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    trimmed, kept = faults("int_max"), faults("default")
    assert trimmed > 400_000, trimmed  # 2160 MiB faulted in again (552,960 pages of 4 KiB)
    assert kept < trimmed // 100, (kept, trimmed)


def test_keep_host_buffers_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setattr(host_memory, "_libc", lambda: None)
    assert host_memory.keep_host_buffers() is False
    assert host_memory.kept() is False
