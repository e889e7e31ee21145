"""Input pipeline: data sets by name, the lecture's preprocessing, augmentation, exact evaluation.

Public interface (used by the training engine):
  DatasetInfo, get_info(data_cfg)
  create_train_iterator(data_cfg, *, global_batch_size, seed, start_step=0, process_index=0,
                        process_count=1)
  create_eval_iterator(data_cfg, split, *, global_batch_size, process_index=0, process_count=1)
  num_train_examples(info), steps_per_epoch(info, global_batch_size),
  num_eval_batches(info, split, global_batch_size)
  OnDeviceData (cnn_jax.data.on_device): the whole training split on the accelerator
                (single process; multi-host runs use the host iterators).

Validation: `data.val_split` (e.g. "train[90%:]") is a deterministic carve-out that the engine
evaluates during training; set `data.train_split` to the complement ("train[:90%]"), otherwise
a warning says that the two overlap. Local image trees are stored in a class-stratified order,
so such slices are class-balanced (CIFAR-10: the last 500 images of each class).

Modules: `sources` (data sets by name) with `idx`, `image_tree`, `splits` and `cache`;
`preprocess` (statistics, normalisation); `augment` (each augmentation defined once, applied by
the same code on the host and on the device); `seeds` (every iterator's random streams);
`pipeline` (the host iterators) with `prefetch`; `on_device` (batches drawn inside the step).

Why not grain for the host pipeline. grain (an IndexSampler with ShardByJaxProcess, per-record
seeds, checkpointable iterators, worker processes) would replace `prefetch` and the ordering
code, but it is not in requirements.lock (a new dependency for every install), and its sampler
and per-record seeds would change every batch that the three host paths produce today: exact
resume of runs in flight, and the recorded results' batches, would be lost. So the pipeline
stays on NumPy threads and tf.data, with each augmentation written once (`augment`) and one
seed table (`seeds`) used by all iterators.
"""

from cnn_jax.data.pipeline import (DatasetInfo, create_eval_iterator, create_train_iterator,
                                   get_info, num_eval_batches, num_train_examples,
                                   steps_per_epoch)
from cnn_jax.data.sources import NAMES


def __getattr__(name: str):
    # OnDeviceData imports JAX; loaded on first use so host-only tools stay light.
    if name == "OnDeviceData":
        from cnn_jax.data.on_device import OnDeviceData
        return OnDeviceData
    raise AttributeError(f"module 'cnn_jax.data' has no attribute {name!r}")


__all__ = ["NAMES", "DatasetInfo", "OnDeviceData", "create_eval_iterator", "create_train_iterator",
           "get_info", "num_eval_batches", "num_train_examples", "steps_per_epoch"]
