"""Image trees laid out `<root>/<split>/<class>/*.{jpg,jpeg,png}`: listing, checking, decoding.

Examples of a split are put in a fixed *stratified* order (the k-th of n files of a class, in name
order, sits at position (k + 0.5) / n), so any contiguous tfds slice such as `train[90%:]` takes
the same fraction of every class (for CIFAR-10: the last 500 images of each class).
Small trees are decoded once into a uint8 array cached as .npz (see `cache.py`); large trees are
only header-checked, and the checked file index is cached.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from cnn_jax.data import cache
from cnn_jax.validate import did_you_mean

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DECODE_VERSION = 2


def list_splits(root: str | os.PathLike) -> list[str]:
    """Split directories under `root` (hidden directories, such as the cache, are ignored)."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(
            f"Image tree root {str(r)!r} does not exist or is not a directory; set "
            "--config.data.path to a directory laid out <root>/<split>/<class>/*.jpg."
        )
    return sorted(p.name for p in r.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_dir(root: str | os.PathLike, split: str) -> Path:
    """The directory of `split` under `root`; a clear error when there is none."""
    root = Path(root)
    available = list_splits(root)
    if split not in available:
        hint = did_you_mean(split, available)
        looks_flat = available and all(
            any(f.suffix.lower() in IMAGE_EXTENSIONS for f in (root / d).iterdir()) for d in available[:3]
        )
        flat = (
            " The directories there hold images directly, so they look like class folders: "
            f"move them into {root}/{split}/ (layout <root>/<split>/<class>/*.jpg)."
            if looks_flat else ""
        )
        raise ValueError(
            f"Split {split!r} not found under image tree {str(root)!r}; split directories found: "
            f"{available}.{hint}{flat}"
        )
    return root / split


def list_classes(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted class folder names of one split; errors on an empty split."""
    d = split_dir(Path(root), split)
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"Split folder {str(d)!r} has no class folders; expected {d}/<class>/*.jpg."
        )
    return classes


def _image_files(class_dir: Path) -> list[str]:
    files = []
    for e in os.scandir(class_dir):
        if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            if not e.is_file():
                continue
        except OSError as err:  # e.g. a symlink to itself: "Too many levels of symbolic links"
            # Kept in the listing: decoding fails on it, so it is skipped and counted (against
            # data.max_bad_fraction) like any unreadable image.
            warnings.warn(f"Image file {os.path.join(class_dir, e.name)} cannot be opened "
                          f"({err.strerror or err}); it is skipped as unreadable.", stacklevel=2)
        files.append(os.path.join(class_dir, e.name))
    return sorted(files)


@dataclasses.dataclass(frozen=True)
class Listing:
    """The image files of one split (class folder order, then name order) and their labels."""
    root: str
    split: str
    class_names: list[str]
    files: list[str]
    labels: np.ndarray
    key: str  # fingerprint of names, sizes and modification times

    @property
    def where(self) -> str:
        return str(Path(self.root) / self.split)


def list_files(root: str | os.PathLike, split: str, class_names: list[str]) -> Listing:
    """All image files of a split (class folder order, then name order) and their labels.

    Labels index `class_names` (the training split's classes): a class folder that is not among
    them, or a class folder without images, is an error.
    """
    root = Path(root)
    d = split_dir(root, split)
    folders = list_classes(root, split)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in folders if c not in index]
    if unknown:
        raise ValueError(
            f"Split folder {str(d)!r} has class folder(s) {unknown} that are not among the "
            f"{len(class_names)} training classes {class_names}: their labels would fall outside "
            "num_classes. Rename or remove them, or add the class to the training split."
        )
    files: list[str] = []
    labels: list[int] = []
    for name in folders:
        found = _image_files(d / name)
        if not found:
            raise ValueError(
                f"Class folder {str(d / name)!r} has no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder."
            )
        files.extend(found)
        labels.extend([index[name]] * len(found))
    return Listing(str(root), split, list(class_names), files, np.asarray(labels, np.int32),
                   cache.file_fingerprint(files))


def stratified_order(labels: np.ndarray) -> np.ndarray:
    """Permutation that interleaves classes so every contiguous slice is class-balanced.

    `labels` must be grouped by class in file-name order (as `list_files` returns them).
    """
    labels = np.asarray(labels)
    position = np.empty(len(labels), np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((labels, position))


def _report_bad(bad: list[str], total: int, where: str, max_bad_fraction: float) -> None:
    if not bad:
        return
    fraction = len(bad) / max(total, 1)
    shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
    if fraction > max_bad_fraction:
        raise ValueError(
            f"{len(bad)} of {total} image files ({fraction:.2%}) under {where} are unreadable or "
            f"corrupt, more than data.max_bad_fraction={max_bad_fraction}: {shown}. Fix or remove "
            "them, or raise --config.data.max_bad_fraction."
        )
    warnings.warn(
        f"Skipped {len(bad)} unreadable or corrupt image file(s) of {total} under {where} "
        f"({fraction:.2%}, within data.max_bad_fraction={max_bad_fraction}): {shown}",
        stacklevel=3,
    )


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    c = image.shape[-1]
    if c in (2, 4):  # grey+alpha, RGBA: drop alpha
        image = image[..., : c - 1]
    if image.shape[-1] == 1 and channels == 3:
        image = np.repeat(image, 3, axis=-1)
    return image


def _decode_all(files: list[str], image_size: int) -> tuple[dict[int, np.ndarray], list[int]]:
    """Decodes files in parallel with tf.data; returns {index: HWC uint8} and bad indices.

    Without TensorFlow (e.g. a GPU image that has only JAX), PIL decodes them in threads.
    """
    try:
        import tensorflow as tf  # local: only loaded when a tree is decoded
    except ImportError:
        return _decode_all_pil(files, image_size)

    def decode(path, i):
        data = tf.io.read_file(path)
        # INTEGER_ACCURATE: the libjpeg reference IDCT, as PIL decodes (TF's default shifts colours).
        image = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, expand_animations=False))
        if image_size > 0:
            image = center_crop_resize_tf(image, image_size, crop_fraction=1.0)
        return tf.reshape(image, [-1]), tf.shape(image), i

    ds = (
        tf.data.Dataset.from_tensor_slices((files, np.arange(len(files), dtype=np.int64)))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .ragged_batch(1024)
    )
    decoded: dict[int, np.ndarray] = {}
    for flat, shapes, idx in ds:
        values, lengths = flat.flat_values.numpy(), flat.row_lengths().numpy()
        shapes, idx = shapes.numpy(), idx.numpy()
        for chunk, shape, i in zip(np.split(values, np.cumsum(lengths)[:-1]), shapes, idx):
            decoded[int(i)] = chunk.reshape(shape)
    bad = [i for i in range(len(files)) if i not in decoded]
    return decoded, bad


def unreadable_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a file that is not a readable image (a decompression bomb included:
    a header declaring more than 2 * Image.MAX_IMAGE_PIXELS pixels)."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_8bit(im):
    """A PIL image with 8-bit channels: 16-bit greyscale (PNG) is scaled by >> 8, as the tf.data
    path decodes it (libpng's strip-16), instead of clipped by PIL's convert("L")."""
    from PIL import Image

    if im.mode == "I" or im.mode.startswith("I;16"):
        x = np.asarray(im).astype(np.int64)
        return Image.fromarray((np.clip(x, 0, 65535) >> 8).astype(np.uint8), "L")
    return im


def _decode_pil(path: str, image_size: int) -> np.ndarray | None:
    """One file as HWC uint8 (libjpeg's accurate IDCT, like the tf.data path), None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = to_8bit(im)
            im = im.convert("L" if im.mode in ("L", "LA", "1") else "RGB")
            if image_size > 0:
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.resize((image_size, image_size), Image.BILINEAR,
                               box=(left, top, left + side, top + side))
            image = np.asarray(im, np.uint8)
    except unreadable_errors():
        return None
    return image[..., None] if image.ndim == 2 else image


def _decode_all_pil(files: list[str], image_size: int) -> tuple[dict[int, np.ndarray], list[int]]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda f: _decode_pil(f, image_size), files, chunksize=256))
    decoded = {i: im for i, im in enumerate(images) if im is not None}
    return decoded, [i for i, im in enumerate(images) if im is None]


def center_crop_resize_tf(image, size: int, crop_fraction: float = 1.0):
    """Central square crop (`crop_fraction` of the shorter side) resized to size x size, uint8."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * crop_fraction, tf.int32)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top: top + side, left: left + side]
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def decode_split(listing: Listing, *, cache_dir: Path, max_bad_fraction: float,
                 image_size: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels (N,) of a split, stratified order, cached as .npz.

    All images must share one size unless `image_size` > 0 (then each is center-cropped to a
    square and resized). Unreadable files are skipped with a warning (error past the fraction).
    """
    files, labels, where, split = listing.files, listing.labels, listing.where, listing.split
    key = cache.fingerprint([DECODE_VERSION, image_size, listing.class_names, listing.key])
    path = cache_dir / f"{split}-decoded-{key}.npz"
    cached = cache.read_arrays(path)
    if cached is not None:
        bad = [str(b) for b in cached["bad"]]
        _report_bad(bad, len(files), where, max_bad_fraction)
        return cached["images"], cached["labels"]

    decoded, bad_idx = _decode_all(files, image_size)
    bad = [files[i] for i in bad_idx]
    _report_bad(bad, len(files), where, max_bad_fraction)
    keep = np.asarray(sorted(decoded), np.int64)
    if keep.size == 0:
        raise ValueError(f"No readable images under {where}.")
    sizes: dict[tuple[int, int], int] = {}
    for i in keep:
        sizes.setdefault(decoded[i].shape[:2], int(i))
    if len(sizes) > 1:
        examples = "; ".join(f"{files[i]} is {h}x{w}" for (h, w), i in list(sizes.items())[:3])
        raise ValueError(
            f"Images under {where} come in {len(sizes)} different sizes ({examples}), but this "
            "source needs one size. Set --config.data.image_size=N to resize every image to NxN."
        )
    channels = 1 if all(decoded[i].shape[-1] in (1, 2) for i in keep) else 3
    images = np.stack([_to_channels(decoded[i], channels) for i in keep])
    labels = labels[keep]
    order = stratified_order(labels)
    images, labels = np.ascontiguousarray(images[order]), labels[order]
    cache.write_arrays(path, images=images, labels=labels, bad=np.asarray(bad, dtype=str))
    return images, labels


def _readable(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 (parses the header)
        return True
    except unreadable_errors():  # UnidentifiedImageError is an OSError
        return False


def scan_split(listing: Listing, *, cache_dir: Path, max_bad_fraction: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """File paths and labels of a split (stratified order) whose headers parse; cached index.

    Used for trees streamed with tf.data: only image headers are read here, so a file whose header
    parses but whose data is broken becomes a zero image of weight 0 in training (a warning).
    """
    files, labels, where, split = listing.files, listing.labels, listing.where, listing.split
    key = cache.fingerprint([DECODE_VERSION, listing.class_names, listing.key])
    path = cache_dir / f"{split}-index-{key}.npz"
    cached = cache.read_arrays(path)
    if cached is not None:
        _report_bad([str(b) for b in cached["bad"]], len(files), where, max_bad_fraction)
        return cached["paths"], cached["labels"]
    ok = np.asarray([_readable(f) for f in files], bool)
    bad = [f for f, good in zip(files, ok) if not good]
    _report_bad(bad, len(files), where, max_bad_fraction)
    paths = np.asarray(files, dtype=str)[ok]
    labels = labels[ok]
    if paths.size == 0:
        raise ValueError(f"No readable images under {where}.")
    order = stratified_order(labels)
    paths, labels = paths[order], labels[order]
    cache.write_arrays(path, paths=paths, labels=labels, bad=np.asarray(bad, dtype=str))
    return paths, labels
