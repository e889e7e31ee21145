"""cnn_jax.python_gc: what `settle` changes in a fresh interpreter, that cycles are still
collected after it, that CNN_JAX_GC=default leaves CPython's settings, and that the entry points
call it (launch.py's training path here; cnn_jax.benchmark in test_benchmark.py)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import gc, sys, weakref
from cnn_jax import python_gc
default = gc.get_threshold()
modules = [[] for _ in range(1000)]  # containers alive before settle: frozen with the modules
settled = python_gc.settle()
print(settled, python_gc.settled(), default[0], gc.get_threshold()[0], gc.get_freeze_count())
more = [[] for _ in range(1000)]
frozen = gc.get_freeze_count()
assert python_gc.settle() == settled and gc.get_freeze_count() == frozen  # idempotent

class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle: only the collector frees it
alive = weakref.ref(a)
del a, b
junk = [(i,) for i in range(300_000)]  # past the gen-0 threshold: an automatic collection
print(alive() is None)
"""


def _probe(env_value):
    env = {k: v for k, v in os.environ.items() if k != "CNN_JAX_GC"}
    if env_value is not None:
        env["CNN_JAX_GC"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out


def test_settle_freezes_what_exists_and_raises_the_gen0_threshold():
    settled, flag, default0, now0, frozen, cycle_freed = _probe(None)
    assert settled == flag == "True"
    assert int(default0) == 700 and int(now0) == 100_000
    assert int(frozen) > 1000  # the interpreter's own objects and the 1000 above
    assert cycle_freed == "True"  # the collector still runs, at the higher threshold


def test_default_switch_leaves_cpythons_settings():
    settled, flag, default0, now0, frozen, cycle_freed = _probe("default")
    assert settled == flag == "False"
    assert int(now0) == int(default0) and int(frozen) == 0
    assert cycle_freed == "True"


def test_launch_settles_before_training(monkeypatch):
    """launch.run('train') calls settle after its imports and before the trainer; settle is
    replaced here, so this test process's collector is left as it is."""
    from absl import flags

    from cnn_jax import launch, python_gc, train

    calls = []
    monkeypatch.setattr(python_gc, "settle", lambda: calls.append("settle") or True)
    monkeypatch.setattr(train, "train_and_evaluate",
                        lambda *a, **k: calls.append("train") or {"status": "finished"})
    launch.define_flags()
    flags.FLAGS(["launch", "--workdir=w", "--nokeep_host_buffers", "--xla_cpu_flags="])
    try:
        assert launch.run("train") == 0
    finally:
        flags.FLAGS.unparse_flags()
    assert calls == ["settle", "train"]
