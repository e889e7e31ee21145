"""Prints a data set's facts: `python -m cnn_jax.data NAME [--split=S] [--path=P] [--json]`.

Facts: num_examples, image_shape, num_classes, class_names, per-channel mean and std of the
split (on [0, 1] pixels; the split plays the training split) and the label histogram. `--json`
prints one object with those keys (`label_histogram` is a list indexed by label).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from cnn_jax.data import pipeline  # noqa: E402
from cnn_jax.data.sources import NAMES, ArraySplit, FileSplit  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("split", "train", "Split spec in tfds syntax, e.g. train, test, train[:90%].")
flags.DEFINE_string("path", "", "Local data: IDX directory or image tree <root>/<split>/<class>/.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_integer("image_size", -1, "Resize/crop images to this size (<= 0: native size).")
flags.DEFINE_string("cache_dir", "", "Where to cache statistics ('' = beside the data).")
flags.DEFINE_string("tfds_data_dir", "", "tensorflow-datasets data dir ('' = tfds default).")
flags.DEFINE_bool("download", True, "Let tfds download the data set when no copy is found.")


def _config(name: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name, c.path = name, FLAGS.path
    c.train_split, c.eval_split, c.val_split = FLAGS.split, "", ""
    c.normalize, c.image_size = "train_stats", FLAGS.image_size
    c.cache_dir, c.tfds_data_dir, c.download = FLAGS.cache_dir, FLAGS.tfds_data_dir, FLAGS.download
    return c


def _labels(plan: pipeline._Plan, spec: str) -> np.ndarray:
    split = plan.source.load(spec)
    if isinstance(split, (ArraySplit, FileSplit)):
        return split.labels
    import tensorflow_datasets as tfds

    ds = split.builder.as_dataset(split=spec, decoders={"image": tfds.decode.SkipDecoding()})
    return np.fromiter((int(x) for x in ds.map(lambda ex: ex["label"]).as_numpy_iterator()), np.int64)


def facts(name: str) -> dict:
    """The facts of data set `name` at the flags' split as a JSON-ready dict."""
    plan = pipeline._plan(_config(name))
    info = plan.info
    labels = _labels(plan, info.train_split)
    return {
        "name": info.name, "split": info.train_split, "origin": info.origin,
        "num_examples": int(info.num_examples[info.train_split]),
        "image_shape": list(info.image_shape), "num_classes": info.num_classes,
        "class_names": info.class_names, "mean": list(info.mean), "std": list(info.std),
        "label_histogram": np.bincount(labels, minlength=info.num_classes).astype(int).tolist(),
    }


def _print_table(f: dict) -> None:
    print(f"data set      {f['name']}  ({f['origin']})")
    print(f"split         {f['split']}")
    print(f"num_examples  {f['num_examples']}")
    print(f"image_shape   {'x'.join(str(d) for d in f['image_shape'])}")
    print(f"num_classes   {f['num_classes']}")
    print(f"mean          {', '.join(f'{m:.4f}' for m in f['mean'])}")
    print(f"std           {', '.join(f'{s:.4f}' for s in f['std'])}")
    print("label  count  class")
    for i, (count, cls) in enumerate(zip(f["label_histogram"], f["class_names"])):
        print(f"{i:5d}  {count:5d}  {cls}")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError(f"Give one data set name, one of {list(NAMES)}.")
    try:
        f = facts(argv[1])
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if FLAGS.json:
        print(json.dumps(f))
    else:
        _print_table(f)


if __name__ == "__main__":
    app.run(main)
