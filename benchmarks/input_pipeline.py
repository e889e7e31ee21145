"""Images per second delivered by each input path, against what a ResNet-20 train step consumes.

    python benchmarks/input_pipeline.py [--batch_size=128] [--seconds=10] [--num_jpegs=512]

Paths measured (all through the public cnn_jax.data interface):
  host in-memory   CIFAR-shaped uint8 set (50,000 x 32x32x3) -> crop(pad 4) + flip + normalise
  host JPEG        image_folder of generated 500x375 JPEGs -> tf.data decode + Inception
                   random-resized crop at 224 + flip + normalise
  on-device        the same CIFAR-shaped set under jit: permutation, crop, flip, normalise
  model            one jitted SGD train step of cnn_jax.models.build('resnet20') on 32x32x3
Each path reports images per wall-clock second and images per CPU-second of this process (all
its threads): on a shared machine the second is the per-core rate an idle core would give.
The on-device row also gives its ratio to the model's consumption.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from cnn_jax import data  # noqa: E402
from cnn_jax.data.on_device import OnDeviceData  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Global batch size for the CIFAR-style paths.")
flags.DEFINE_integer("jpeg_batch_size", 64, "Batch size of the JPEG path.")
flags.DEFINE_float("seconds", 10.0, "Measuring time per path (after warm-up).")
flags.DEFINE_integer("num_jpegs", 512, "JPEG files generated for the ImageNet-style path.")


def _cfg(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        name="synthetic", path="", train_split="train", eval_split="", val_split="",
        normalize="train_stats", image_size=-1, crop_padding=4, flip=True,
        random_resized_crop=False, mixup_alpha=0.0, cutmix_alpha=0.0, shuffle_buffer=10_000,
        max_bad_fraction=0.01, synthetic_shape=(32, 32, 3), synthetic_num_classes=10,
        synthetic_num_examples=50_000, cache_dir="", download=False, stats_max_examples=2000))
    c.update(overrides)
    return c


def _rate(next_batch, batch_size: int, seconds: float, warmup: int = 5) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of `next_batch()`.

    CPU seconds count every thread of the process (tf.data, XLA, NumPy workers), so images per
    CPU second is what one otherwise idle core delivers, even when other jobs share the machine.
    """
    for _ in range(warmup):
        next_batch()
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next_batch()
        n += 1
    return (n * batch_size / (time.perf_counter() - start),
            n * batch_size / max(time.process_time() - cpu, 1e-9))


def _write_jpegs(root: Path, count: int) -> None:
    """Photo-like JPEGs (smooth colour fields + mild noise), 500x375 like an average ImageNet image."""
    rng = np.random.default_rng(0)
    for i in range(count):
        d = root / "train" / f"class_{i % 8}"
        d.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(d / f"{i:05d}.jpg", quality=90)


def _model_rate(batch_size: int, seconds: float) -> tuple[float, str]:
    """Train images/s of one SGD step of ResNet-20 (or a small conv net if it is missing)."""
    import optax

    try:
        from cnn_jax import models
        model, name = models.build("resnet20", num_classes=10), "resnet20 (cnn_jax.models)"
    except Exception as e:  # noqa: BLE001 (the benchmark still reports the data paths)
        import flax.linen as nn

        class Small(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                for f in (16, 32, 64):
                    x = nn.relu(nn.Conv(f, (3, 3), strides=2)(x))
                return nn.Dense(10)(x.mean((1, 2)))
        model, name = Small(), f"minimal conv net (resnet20 unavailable: {e})"
    x = jnp.zeros((batch_size, 32, 32, 3))
    y = jnp.zeros((batch_size,), jnp.int32)
    variables = model.init(jax.random.key(0), x, train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.sgd(0.1, momentum=0.9)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, x, y):
        def loss_fn(p):
            out, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), new
        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), new.get("batch_stats", {}), opt, loss

    state = [params, stats, opt]

    def next_step():
        *s, loss = step(*state, x, y)
        state[:] = s
        loss.block_until_ready()
    return _rate(next_step, batch_size, seconds, warmup=2), name


def main(argv: list[str]) -> None:
    del argv
    B, secs = FLAGS.batch_size, FLAGS.seconds
    cores = os.cpu_count() or 1
    rows = []

    with tempfile.TemporaryDirectory() as cache:
        cifar = _cfg(cache_dir=cache)
        it = data.create_train_iterator(cifar, global_batch_size=B, seed=0)
        rows.append(("host in-memory, CIFAR-style (crop+flip+normalise)", _rate(lambda: next(it), B, secs)))
        it.close()

        with tempfile.TemporaryDirectory() as tree:
            _write_jpegs(Path(tree), FLAGS.num_jpegs)
            jpeg = _cfg(name="image_folder", path=tree, image_size=224, random_resized_crop=True,
                        crop_padding=0, cache_dir=cache)
            jb = FLAGS.jpeg_batch_size
            it = data.create_train_iterator(jpeg, global_batch_size=jb, seed=0)
            rows.append(("host tf.data JPEG decode + random-resized crop 224", _rate(lambda: next(it), jb, secs, warmup=3)))
            del it

        device = OnDeviceData(cifar, B, seed=0)
        fn = jax.jit(device.batch_fn)
        counter = [0]

        def next_device_batch():
            counter[0] += 1
            fn(device.arrays, counter[0])["image"].block_until_ready()
        rows.append(("on-device CIFAR-style (jit: permute+crop+flip+normalise)", _rate(next_device_batch, B, secs)))

    (model_wall, model_cpu), model_name = _model_rate(B, secs)
    load = os.getloadavg()
    print(f"devices: {jax.devices()}; CPU cores: {cores}; batch {B} (JPEG path "
          f"{FLAGS.jpeg_batch_size}); load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print()
    print("| path | images/s (wall) | images per CPU-second (= per idle core) | note |")
    print("| --- | ---: | ---: | --- |")
    for name, (wall, cpu) in rows:
        note = ""
        if name.startswith("on-device"):
            note = (f"{wall / model_wall:,.0f}x the model's consumption (wall), "
                    f"{cpu / model_cpu:,.0f}x per CPU-second")
        print(f"| {name} | {wall:,.0f} | {cpu:,.0f} | {note} |")
    print(f"| model: {model_name} train step (consumption) | {model_wall:,.1f} | {model_cpu:,.1f} | |")


if __name__ == "__main__":
    app.run(main)
