"""cnn_jax.threefry: jax.random's Threefry-2x32 as one FFI call on the CPU gives the same bits as
JAX's own lowering (known-answer vectors, a NumPy reference, random draws, model initial states,
sharded draws), and the switch keeps JAX's lowering."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p, threefry_2x32

from cnn_jax import ops, threefry  # noqa: F401  (ops installs the lowering)

needs_kernel = pytest.mark.skipif(
    not threefry.install(), reason="Threefry handler not built here (make venv builds it)")


def _np_threefry(k1, k2, x1, x2):
    """Threefry-2x32, 20 rounds, in NumPy (uint32 arithmetic wraps)."""
    k1, k2, x1, x2 = np.broadcast_arrays(*(np.asarray(a, np.uint32) for a in (k1, k2, x1, x2)))
    ks = [k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA)]
    v0, v1 = x1 + ks[0], x2 + ks[1]
    for s in range(5):
        for r in ((13, 15, 26, 6), (17, 29, 16, 24))[s % 2]:
            v0 = v0 + v1
            v1 = (v1 << np.uint32(r)) | (v1 >> np.uint32(32 - r))
            v1 = v1 ^ v0
        v0 = v0 + ks[(s + 1) % 3]
        v1 = v1 + ks[(s + 2) % 3] + np.uint32(s + 1)
    return v0, v1


@needs_kernel
@pytest.mark.parametrize("key, count, expected", [
    # Random123's known answers for threefry2x32_20 (Salmon et al. 2011), as JAX's tests use.
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_known_answer_vectors(key, count, expected):
    fn = jax.jit(threefry_2x32)
    args = (np.uint32(key), np.uint32(count))
    assert threefry.TARGET in fn.lower(*args).as_text()  # the handler computes it, not JAX's loop
    np.testing.assert_array_equal(np.asarray(fn(*args)), np.uint32(expected))


@needs_kernel
@pytest.mark.parametrize("shapes", [
    ((), (), (1000,), (1000,)),            # one key, many counters (how jax.random calls it)
    ((3, 1), (3, 1), (3, 7), (3, 7)),      # broadcast keys
    ((2, 3, 5),) * 4,
    ((1, 4), (1, 4), (0, 4), (0, 4)),      # empty
])
def test_equals_numpy_reference(shapes):
    rng = np.random.default_rng(0)
    args = [rng.integers(0, 2**32, s, dtype=np.uint64).astype(np.uint32) for s in shapes]
    got = jax.jit(lambda *a: threefry2x32_p.bind(*a))(*args)
    for g, w in zip(got, _np_threefry(*args)):
        assert g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), w)


PROBE = r"""
import hashlib, json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from cnn_jax import models, threefry
from cnn_jax.train.state import init_variables
def h(tree):
    return hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(tree))
                          ).hexdigest()[:20]
key = jax.random.PRNGKey(7)
draws = {
    "normal": lambda: jax.random.normal(key, (3, 3, 16, 17)),
    "bits_odd": lambda: jax.random.bits(key, (7, 5)),
    "split_fold": lambda: jax.random.fold_in(jax.random.split(key, 5)[3], 11),
    "vmap": lambda: jax.vmap(lambda k: jax.random.uniform(k, (3,)))(jax.random.split(key, 4)),
    "trunc": lambda: jax.random.truncated_normal(key, -2.0, 2.0, (64, 10)),
    "perm": lambda: jax.random.permutation(key, 50),
    "bern": lambda: jax.random.bernoulli(key, 0.3, (128, 33)),
    "typed_key": lambda: jax.random.normal(jax.random.key(3), (9,)),
}
out = {name: h(jax.jit(f)()) for name, f in draws.items()}
for name in ("lenet5", "mlp"):
    model = models.build(name, num_classes=10)
    shape = models.default_input_shape(name)
    out[name] = h(jax.jit(lambda: init_variables(model, jax.random.PRNGKey(0), shape))())
mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
sharded = jax.jit(lambda k: jax.random.normal(k, (8, 6)), out_shardings=NamedSharding(mesh, P("x")))
out["sharded"] = h(sharded(key))
out["sharded_equal"] = bool((np.asarray(sharded(key)) == np.asarray(
    jax.jit(lambda k: jax.random.normal(k, (8, 6)))(key))).all())
out["kernel"] = threefry.TARGET in jax.jit(draws["normal"]).lower().as_text()
print(json.dumps(out))
"""


def _probe(switch: str) -> dict:
    env = {**os.environ, "CNN_JAX_THREEFRY": switch, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_kernel
def test_same_bits_as_jax_lowering_for_draws_initial_states_and_sharded_draws():
    ours, jaxs = _probe("1"), _probe("0")
    assert ours.pop("kernel") is True and jaxs.pop("kernel") is False  # the switch works
    assert ours["sharded_equal"] and jaxs["sharded_equal"]
    assert ours == jaxs


@pytest.mark.skipif(not os.environ.get("CNN_JAX_EXPECT_THREEFRY"),
                    reason="only where the environment promises a build (.ci/run sets it)")
def test_threefry_handler_is_built_where_expected():
    assert threefry.library_path().exists(), "python -m cnn_jax.threefry build says why"
    assert threefry.install()
