"""Data parallelism: `jit` over a device mesh (default) or `pmap`, on one or many hosts.

Both strategies take host-local batches (this process's share of the global batch) and keep
the train state replicated; checkpoints and metrics go through plain numpy trees on the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn_jax.train import steps
from cnn_jax.train.state import TrainState, host_tree
from cnn_jax.validate import check_choice

PARALLEL_MODES = ("jit", "pmap")
PMAP_AXIS = "batch"


def check_divisible(batch_size: int, what: str) -> None:
    """Raises a ValueError unless `batch_size` splits evenly over all devices and processes."""
    devices, processes = jax.device_count(), jax.process_count()
    if batch_size <= 0 or batch_size % devices or batch_size % processes:
        raise ValueError(
            f"{what}={batch_size} must be a positive multiple of the device count "
            f"({devices} devices over {processes} process(es)): each device gets an equal share. "
            f"Use e.g. --config.{what}={max(devices, (batch_size // devices) * devices or devices)}.")


class JitStrategy:
    """`jax.jit` over a 1-D mesh of every device: batch sharded on 'data', state replicated.

    BatchNorm computes its statistics over the global batch (synchronised BN for free).
    """

    name = "jit"

    def __init__(self, step_cfg: steps.StepConfig):
        self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.data = NamedSharding(self.mesh, P("data"))
        self.stacked_data = NamedSharding(self.mesh, P(None, "data"))
        repl = self.replicated
        self._train = jax.jit(functools.partial(steps.train_step, cfg=step_cfg),
                              in_shardings=(repl, self.data), out_shardings=(repl, repl),
                              donate_argnums=0)
        self._train_many = jax.jit(functools.partial(steps.train_steps, cfg=step_cfg),
                                   in_shardings=(repl, self.stacked_data),
                                   out_shardings=(repl, repl), donate_argnums=0)
        self._eval = jax.jit(functools.partial(steps.eval_step, cfg=step_cfg),
                             in_shardings=(repl, self.data), out_shardings=repl)

    def create_state(self, init_fn: Callable[[], TrainState]) -> TrainState:
        return jax.jit(init_fn, out_shardings=self.replicated)()

    def place_state(self, host_state: TrainState) -> TrainState:
        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])
        return jax.tree.map(put, host_state)

    def host_state(self, state: TrainState) -> TrainState:
        return host_tree(state)

    def place_batch(self, batch: dict, stacked: bool = False) -> dict:
        sharding = self.stacked_data if stacked else self.data
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
                for k, v in batch.items()}

    def train(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return self._train(state, batch)

    def train_many(self, state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        return self._train_many(state, batches)

    def eval_sums(self, state: TrainState, batch: dict) -> dict:
        return self._eval(state, batch)

    def sync_state(self, state: TrainState) -> TrainState:
        return state

    def fetch(self, tree: Any) -> Any:
        return host_tree(tree)


def pmap_devices() -> list:
    """Every device of every process, grouped by process (the order pmap's own default uses).

    A pmap over these spans all processes: each process feeds and gets back one row per local
    device, and the collectives (gradient, metric and BN means, evaluation sums) reduce over
    all of them. In one process this is `jax.local_devices()`.
    """
    if jax.process_count() == 1:
        return jax.local_devices()
    return [d for p in range(jax.process_count()) for d in jax.local_devices(process_index=p)]


class PmapStrategy:
    """`jax.pmap` over every device of every process with a named axis.

    Gradients and metrics are pmean'ed and evaluation sums psum'ed over all devices of all
    processes, so several processes train one model and count a split once. BN statistics are
    synchronised across all devices when the model was built with `bn_axis_name=PMAP_AXIS`;
    otherwise each device normalises with its own share of the batch and `sync_state` averages
    the running statistics before evaluation and checkpoints.
    """

    name = "pmap"

    def __init__(self, step_cfg: steps.StepConfig, average_bn: bool = False):
        self.average_bn = average_bn
        self.devices = pmap_devices()
        local = jax.local_devices()
        self._n = len(local)  # rows this process feeds: one per local device
        self._stacked = NamedSharding(Mesh(np.asarray(local), (PMAP_AXIS,)), P(PMAP_AXIS))
        self._train = jax.pmap(functools.partial(steps.train_step, cfg=step_cfg),
                               axis_name=PMAP_AXIS, donate_argnums=0, devices=self.devices)
        self._train_many = jax.pmap(functools.partial(steps.train_steps, cfg=step_cfg),
                                    axis_name=PMAP_AXIS, donate_argnums=0, devices=self.devices)
        self._eval = jax.pmap(functools.partial(steps.eval_step, cfg=step_cfg),
                              axis_name=PMAP_AXIS, devices=self.devices)
        self._mean_stats = jax.pmap(lambda t: jax.lax.pmean(t, PMAP_AXIS), axis_name=PMAP_AXIS,
                                    devices=self.devices)

    def create_state(self, init_fn: Callable[[], TrainState]) -> TrainState:
        return self.place_state(host_tree(jax.jit(init_fn)()))

    def place_state(self, host_state: TrainState) -> TrainState:
        """One copy per device, laid out exactly as pmap returns its outputs.

        Matching pmap's output sharding keeps the second call from compiling the step again.
        """
        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback((self._n, *x.shape), self._stacked,
                                                lambda idx: x[None])
        return jax.tree.map(put, host_state)

    def host_state(self, state: TrainState) -> TrainState:
        return self.fetch(state)

    def place_batch(self, batch: dict, stacked: bool = False) -> dict:
        def shard(x):
            x = np.asarray(x)
            axis = 1 if stacked else 0
            if x.shape[axis] % self._n:
                raise ValueError(f"Host batch of {x.shape[axis]} does not split over "
                                 f"{self._n} local devices.")
            if stacked:  # (k, b, ...) -> (devices, k, b / devices, ...)
                x = x.reshape(x.shape[0], self._n, -1, *x.shape[2:]).swapaxes(0, 1)
            else:
                x = x.reshape(self._n, -1, *x.shape[1:])
            return x
        return {k: shard(v) for k, v in batch.items()}

    def train(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return self._train(state, batch)

    def train_many(self, state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        state, metrics = self._train_many(state, batches)
        return state, metrics

    def eval_sums(self, state: TrainState, batch: dict) -> dict:
        return self._eval(state, batch)

    def sync_state(self, state: TrainState) -> TrainState:
        """Averages per-device BN running statistics, and their EMA, (skipped when BN is
        synchronised)."""
        if not self.average_bn or not jax.tree.leaves(state.batch_stats):
            return state
        if state.ema_batch_stats is not None:
            state = state.replace(ema_batch_stats=self._mean_stats(state.ema_batch_stats))
        return state.replace(batch_stats=self._mean_stats(state.batch_stats))

    def fetch(self, tree: Any) -> Any:
        """Device 0's copy of a replicated per-device tree, as numpy."""
        return jax.tree.map(lambda x: np.array(x.addressable_data(0))[0], tree)


def create_strategy(mode: str, step_cfg: steps.StepConfig,
                    bn_sync: bool = True) -> JitStrategy | PmapStrategy:
    """The strategy for `config.parallel` (`bn_sync` matters for pmap only)."""
    mode = check_choice("parallel", mode, PARALLEL_MODES)
    if mode == "jit":
        return JitStrategy(step_cfg)
    return PmapStrategy(step_cfg, average_bn=not bn_sync)
