"""Probe: CPU seconds to trace and lower a model's init and train step (no compile, no run).

`python benchmarks/trace_cost.py resnet20 LABEL` prints one line. Part of a re-launched run's
first step (issue 15): with the compilation cache warm, tracing and lowering are what is left
of compilation. Run it in fresh processes, alternating the variants compared.
"""

import sys
import time

from cnn_jax.benchmark import RECOMMENDED_CPU_XLA_FLAGS, _make_train, apply_xla_flags

apply_xla_flags(RECOMMENDED_CPU_XLA_FLAGS)

import jax  # noqa: E402 - after the XLA flags
import jax.numpy as jnp  # noqa: E402

from cnn_jax import models  # noqa: E402

name, label = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
num_classes, shape = 10, models.default_input_shape(name)
init, step = _make_train(models.build(name, num_classes=num_classes), shape, num_classes)
jax.devices()
clock = time.process_time
c0 = clock()
traced = init.trace()
c1 = clock()
traced.lower()
c2 = clock()
abstract_state = jax.eval_shape(init)  # the init's trace, cached: no cost
batch = {"image": jax.ShapeDtypeStruct((128, *shape), jnp.float32),
         "label": jax.ShapeDtypeStruct((128,), jnp.int32)}
c3 = clock()
traced_step = jax.jit(step).trace(abstract_state, batch)
c4 = clock()
traced_step.lower()
c5 = clock()
print(f"{label} {name}: init trace {c1 - c0:.3f} lower {c2 - c1:.3f}  step trace {c4 - c3:.3f} "
      f"lower {c5 - c4:.3f}  cpu-s", flush=True)
