"""Data sources by `config.data.name`, and the order in which they are looked for.

Resolution for the tfds names: (1) tensorflow-datasets data already prepared in the tfds data dir,
(2) local files (IDX files for `mnist`/`fashion_mnist`, an image tree for the others), (3) a tfds
download. An explicit `data.path` means local files only. When nothing works, one error lists
what was tried and how to fix it.

A `Source` yields examples in one of three forms (`kind`):
  "array": uint8 images in memory (small sets: MNIST, Fashion-MNIST, CIFAR, synthetic, trees at
           their native size); batched by index on the host or on the device.
  "files": image files streamed through tf.data (image trees resized to `data.image_size`).
  "tfds":  a prepared tfds data set streamed through tf.data (ImageNet, Imagenette).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnn_jax.data import cache, idx, image_tree, splits
from cnn_jax.validate import did_you_mean, field

TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette", "imagenet2012")
NAMES = TFDS_NAMES + ("image_folder", "synthetic")
IN_MEMORY_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")
IDX_NAMES = ("mnist", "fashion_mnist")
# ImageNet-sized sets are cropped to this size when data.image_size <= 0.
DEFAULT_IMAGE_SIZE = {"imagenette": 224, "imagenet2012": 224}
DEFAULT_LOCAL_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}
_SYNTHETIC_SEED = 20240613  # fixed: synthetic data does not change with the training seed


class _LazySizes(Mapping):
    """Split name -> size; a split is only loaded when its size is asked for."""

    def __init__(self, names: list[str], size_fn: Callable[[str], int]):
        self._names, self._size_fn, self._sizes = list(names), size_fn, {}

    def __getitem__(self, name: str) -> int:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._sizes:
            self._sizes[name] = self._size_fn(name)
        return self._sizes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """A split in memory: images (N, H, W, C) uint8 and labels (N,) int32."""
    images: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class FileSplit:
    """A split of image files (decoded by tf.data): paths (N,) str and labels (N,) int32."""
    paths: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """A split of a prepared tfds data set, streamed."""
    builder: Any
    spec: str
    num_examples: int


class Source:
    """A resolved data set: its facts and a way to load any split spec (see module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        origin: str,
        class_names: list[str],
        split_names: list[str],
        load_base: Callable[[str], tuple[np.ndarray, np.ndarray]] | None,
        shape: tuple,
        cache_dir: Path | None,
        fingerprint: str | Callable[[], str],
        published: str | None,
        builder: Any = None,
        base_sizes: Mapping[str, int] | None = None,
    ):
        self.name, self.kind, self.origin = name, kind, origin
        self.class_names = list(class_names)
        self.shape = tuple(shape)
        self.cache_dir = cache_dir
        self._fingerprint = fingerprint
        self.published = published
        self.builder = builder
        self._load_base = load_base
        self._loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sizes: Mapping[str, int] = base_sizes or _LazySizes(
            split_names, lambda s: len(self._base(s)[1]))

    @property
    def fingerprint(self) -> str:
        """Changes whenever the data (or how it is decoded) changes; keys the stats cache."""
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        return self._fingerprint

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _base(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._loaded:
            self._loaded[split] = self._load_base(split)
        return self._loaded[split]

    def num_examples(self, spec: str) -> int:
        """Examples selected by a split spec (tfds syntax)."""
        return splits.num_examples(spec, self.sizes, self.origin)

    def load(self, spec: str) -> ArraySplit | FileSplit | TfdsSplit:
        """The examples of a split spec, in the source's fixed order."""
        if self.kind == "tfds":
            return TfdsSplit(self.builder, spec, self.num_examples(spec))
        parts = [(self._base(name), slice(start, stop))
                 for name, start, stop in splits.resolve(spec, self.sizes, self.origin)]
        if len(parts) == 1:  # one range of one base split: a view, no copy
            (data, labels), part = parts[0]
            data, labels = data[part], labels[part]
        else:
            data = np.concatenate([d[part] for (d, _), part in parts])
            labels = np.concatenate([lab[part] for (_, lab), part in parts])
        if len(labels) == 0:
            raise ValueError(
                f"Split {spec!r} of {self.origin} is empty; choose a split spec that selects "
                "at least one example."
            )
        return ArraySplit(data, labels) if self.kind == "array" else FileSplit(data, labels)


def _cache_dir(cfg: Any, data_dir: str | os.PathLike | None) -> Path:
    return cache.resolve_cache_dir(data_dir, field(cfg, "cache_dir", ""))


def _synthetic(cfg: Any) -> Source:
    shape = tuple(int(s) for s in field(cfg, "synthetic_shape", (32, 32, 3)))
    num_classes = int(field(cfg, "synthetic_num_classes", 10))
    n = int(field(cfg, "synthetic_num_examples", 1024))
    if len(shape) != 3 or min(shape) <= 0 or num_classes <= 0 or n <= 0:
        raise ValueError(
            f"Synthetic data needs synthetic_shape=(H, W, C) > 0, synthetic_num_classes > 0 and "
            f"synthetic_num_examples > 0; got {shape}, {num_classes}, {n}."
        )
    sizes = {"train": n, "test": max(1, n // 4)}

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        # Random images with a weak class-dependent template, so that a model can learn them.
        templates = np.random.default_rng([_SYNTHETIC_SEED, 0]).integers(
            0, 256, (num_classes,) + shape, dtype=np.uint8)
        rng = np.random.default_rng([_SYNTHETIC_SEED, 1 + list(sizes).index(split)])
        labels = rng.integers(0, num_classes, sizes[split], dtype=np.int32)
        noise = rng.integers(0, 256, (sizes[split],) + shape, dtype=np.uint8)
        images = (noise >> 1) + (templates[labels] >> 1)
        return images.astype(np.uint8), labels

    return Source(
        name="synthetic", kind="array", origin=f"synthetic data {shape} x {n}",
        class_names=[f"class_{i}" for i in range(num_classes)], split_names=list(sizes),
        load_base=load, shape=shape, cache_dir=None,
        fingerprint=cache.fingerprint(["synthetic", shape, num_classes, n]), published=None,
        base_sizes=sizes,
    )


def _idx_source(cfg: Any, name: str, directory: str) -> Source:
    num_classes = len(CLASS_NAMES[name])
    # A split with one of its two files missing is listed (sized by the file that is there), so
    # that using it names the missing file (idx.read_split) instead of "split does not exist".
    available = [s for s, stems in idx.IDX_FILES.items()
                 if any(idx.find_file(directory, stem) for stem in stems)]
    dims = {}
    for s in available:
        img, lab = (idx.find_file(directory, stem) for stem in idx.IDX_FILES[s])
        dims[s] = idx.read_dims(img, 3) if img else idx.read_dims(lab, 1)
    sizes = {s: d[0] for s, d in dims.items()}
    complete = [s for s in available if all(idx.find_file(directory, stem)
                                            for stem in idx.IDX_FILES[s])]
    files = [idx.find_file(directory, stem) for s in complete for stem in idx.IDX_FILES[s]]

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        return idx.read_split(directory, split, num_classes)

    return Source(
        name=name, kind="array", origin=f"IDX files in {directory}", class_names=CLASS_NAMES[name],
        split_names=available, load_base=load, shape=tuple(dims["train"][1:]) + (1,),
        cache_dir=_cache_dir(cfg, directory), fingerprint=cache.file_fingerprint(files),
        published=name, base_sizes=sizes,
    )


def _tree_source(cfg: Any, name: str, root: str, kind: str, published: str | None) -> Source:
    train = splits.split_names(field(cfg, "train_split", "train"))
    split_names = image_tree.list_splits(root)
    if not split_names:
        raise ValueError(
            f"Image tree {root!r} has no split folders; expected {root}/<split>/<class>/*.jpg "
            "(e.g. train/ and test/)."
        )
    for s in train:
        image_tree.split_dir(root, s)  # a clear error (with a hint for a flat tree) if missing
    # Class names come from the training split(s); other splits must use a subset of them.
    class_names = sorted({c for s in train for c in image_tree.list_classes(root, s)})
    cache_dir = _cache_dir(cfg, root)
    image_size = int(field(cfg, "image_size", -1))
    max_bad = float(field(cfg, "max_bad_fraction", 0.01))
    listings: dict[str, image_tree.Listing] = {}

    def listing(split: str) -> image_tree.Listing:
        if split not in listings:
            listings[split] = image_tree.list_files(root, split, class_names)
        return listings[split]

    if kind == "array":
        def load(split: str) -> tuple[np.ndarray, np.ndarray]:
            return image_tree.decode_split(listing(split), cache_dir=cache_dir,
                                           max_bad_fraction=max_bad, image_size=image_size)
        shape = None  # known after decoding
    else:
        def load(split: str) -> tuple[np.ndarray, np.ndarray]:
            return image_tree.scan_split(listing(split), cache_dir=cache_dir,
                                         max_bad_fraction=max_bad)
        shape = (None, None, 3)

    def fingerprint() -> str:  # of the training split(s): the statistics come from them
        return cache.fingerprint([image_tree.DECODE_VERSION, root, image_size, class_names]
                                 + [listing(s).key for s in train])
    source = Source(
        name=name, kind=kind, origin=f"image tree {root}", class_names=class_names,
        split_names=split_names, load_base=load, shape=shape or (None, None, None),
        cache_dir=cache_dir, fingerprint=fingerprint,
        published=published,
    )
    if shape is None:
        images, _ = source._base(train[0])
        source.shape = images.shape[1:]
    return source


def _tfds_data_dir(cfg: Any) -> str:
    import tensorflow_datasets as tfds

    return (field(cfg, "tfds_data_dir", "") or os.environ.get("TFDS_DATA_DIR")
            or tfds.core.constants.DATA_DIR)


def _tfds_builder(cfg: Any, name: str):
    import tensorflow_datasets as tfds

    data_dir = field(cfg, "tfds_data_dir", "") or None
    return tfds.builder(name, data_dir=data_dir, try_gcs=False)


def _tfds_source(cfg: Any, name: str, builder: Any) -> Source:
    info = builder.info
    sizes = {s: int(v.num_examples) for s, v in info.splits.items()}
    class_names = list(info.features["label"].names)
    shape = tuple(info.features["image"].shape)
    origin = f"tfds {builder.name}:{builder.version} in {builder.data_dir}"
    fingerprint = cache.fingerprint([builder.name, str(builder.version),
                                     getattr(builder.builder_config, "name", ""), sizes])
    common = dict(name=name, origin=origin, class_names=class_names, split_names=list(sizes),
                  cache_dir=_cache_dir(cfg, builder.data_dir), fingerprint=fingerprint,
                  published=name, builder=builder, base_sizes=sizes)
    if name in IN_MEMORY_NAMES:
        def load(split: str) -> tuple[np.ndarray, np.ndarray]:
            import tensorflow_datasets as tfds

            data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
            return data["image"].astype(np.uint8), data["label"].astype(np.int32)
        return Source(kind="array", load_base=load, shape=shape, **common)
    return Source(kind="tfds", load_base=None, shape=(None, None, 3), **common)


def _online(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _has_idx(directory: str) -> bool:
    return all(idx.find_file(directory, stem) for stem in idx.IDX_FILES["train"])


def _is_tree(directory: str) -> bool:
    d = Path(directory)
    return d.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in d.iterdir())


def _local(cfg: Any, name: str, directory: str) -> Source:
    if name in IDX_NAMES and _has_idx(directory):
        return _idx_source(cfg, name, directory)
    kind = "array" if name in IN_MEMORY_NAMES else "files"
    return _tree_source(cfg, name, directory, kind, published=name)


# Sources resolved inside `reuse_sources()`, newest last; None outside it.
_reused: collections.OrderedDict[str, Source] | None = None
REUSED_SOURCES = 2  # data configs kept at once (a sweep in one process holds no more than this)


@contextlib.contextmanager
def reuse_sources() -> Iterator[None]:
    """Within the block, `resolve_source` resolves each data config once and hands back the same
    `Source` (its file listing, decoded arrays and fingerprint) when asked again.

    A training run asks three times (the data set's facts, the training batches, evaluation);
    for CIFAR-10 as an image tree each time re-listed 60,000 files and re-read 150 MB of decoded
    images, 0.6-1.1 s of a re-launched run's start (benchmarks/RESULTS.md, issue 15). The files
    are read once per block, so a run sees one version of them from its start to its end;
    outside a block nothing is kept. Nested blocks share the outer one's sources.
    """
    global _reused
    if _reused is not None:
        yield
        return
    _reused = collections.OrderedDict()
    try:
        yield
    finally:
        _reused = None


def _reuse_key(cfg: Any) -> str:
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    # relative data paths and the tfds data dir depend on these too
    return json.dumps([values, os.getcwd(), os.environ.get("TFDS_DATA_DIR")], sort_keys=True,
                      default=repr)


def resolve_source(cfg: Any) -> Source:
    """Finds the data set named by `cfg.name` (see module docstring for the order); inside
    `reuse_sources()`, the one found before for the same config."""
    if _reused is None:
        return _resolve(cfg)
    key = _reuse_key(cfg)
    if key in _reused:
        _reused.move_to_end(key)
    else:
        _reused[key] = _resolve(cfg)
        while len(_reused) > REUSED_SOURCES:
            _reused.popitem(last=False)
    return _reused[key]


def _resolve(cfg: Any) -> Source:
    name = str(field(cfg, "name", ""))
    if name not in NAMES:
        hint = did_you_mean(name, NAMES)
        raise ValueError(f"Unknown data set data.name={name!r}; valid names: {list(NAMES)}.{hint}")
    path = os.path.expanduser(str(field(cfg, "path", "") or ""))  # configs may keep `~`
    if name == "synthetic":
        return _synthetic(cfg)
    if name == "image_folder":
        if not path:
            raise ValueError(
                "data.name='image_folder' needs --config.data.path=<root> with images laid out "
                "<root>/<split>/<class>/*.jpg.")
        kind = "array" if int(field(cfg, "image_size", -1)) <= 0 else "files"
        return _tree_source(cfg, name, path, kind, published=None)

    if path:  # an explicit path means: these local files, nothing else
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"data.path={path!r} for data set {name!r} does not exist or is not a directory.")
        if name in IDX_NAMES and not _has_idx(path) and not _is_tree(path):
            present = [stem for stems in idx.IDX_FILES.values() for stem in stems
                       if idx.find_file(path, stem)]
            if present:
                missing = [stem for stem in idx.IDX_FILES["train"] if not idx.find_file(path, stem)]
                raise FileNotFoundError(
                    f"data.path={path!r} holds IDX file(s) of {name} ({', '.join(present)}) but "
                    f"not {', '.join(f'{m}[.gz]' for m in missing)}: restore the missing file(s) "
                    "(Fashion-MNIST: apt-get install --reinstall dataset-fashion-mnist).")
            raise FileNotFoundError(
                f"data.path={path!r} holds neither the IDX files of {name} "
                f"(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, ...) nor an image tree "
                "<root>/<split>/<class>/*.png.")
        return _local(cfg, name, path)

    tried = []
    builder = None
    tfds_dir = _tfds_data_dir(cfg)
    if os.path.isdir(os.path.join(tfds_dir, name)):  # else tfds.builder only logs noise
        try:
            builder = _tfds_builder(cfg, name)
            if builder.is_prepared():
                return _tfds_source(cfg, name, builder)
            tried.append(f"prepared tfds data: none in {builder.data_dir}")
        except Exception as e:  # noqa: BLE001 (any tfds failure is reported below)
            tried.append(f"prepared tfds data: tfds.builder({name!r}) failed: {e}")
    else:
        tried.append(f"prepared tfds data: none in {os.path.join(tfds_dir, name)}")

    default_dir = DEFAULT_LOCAL_DIRS.get(name)
    if default_dir and os.path.isdir(default_dir) and (_has_idx(default_dir) or _is_tree(default_dir)):
        return _local(cfg, name, default_dir)
    tried.append(
        f"local files: none at {default_dir}" if default_dir else "local files: data.path is not set")

    if not field(cfg, "download", True):
        tried.append("tfds download: disabled (data.download=False)")
    elif not _online():
        tried.append("tfds download: skipped, no network (storage.googleapis.com:443 unreachable)")
    else:
        try:
            builder = builder or _tfds_builder(cfg, name)
            builder.download_and_prepare()
            return _tfds_source(cfg, name, builder)
        except Exception as e:  # noqa: BLE001
            tried.append(f"tfds download: failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    fixes = ["run once with internet so tfds can download and prepare it",
             f"or point --config.data.tfds_data_dir at a directory where tfds has prepared {name}"]
    if name == "fashion_mnist":
        fixes.insert(0, "apt-get install dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist)")
    if name in IDX_NAMES:
        fixes.append(f"or --config.data.path=<dir with the four IDX files of {name}>")
    else:
        fixes.append("or --config.data.path=<root> of an image tree <root>/<split>/<class>/*.jpg "
                     "(CIFAR-10: extract ../shared/datasets/cifar10-jpeg-train.tar.gz)")
    if name == "imagenet2012":
        fixes.append("(tfds needs the ImageNet tar files placed by hand in its manual_dir)")
    raise FileNotFoundError(
        f"Could not find data set {name!r}. Tried: " + "; ".join(tried) + ". To fix: "
        + "; ".join(fixes) + "."
    )
