"""Reader for the IDX files of MNIST and Fashion-MNIST (plain or gzipped).

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian magic number
`0x0000 <type> <ndim>` (type 0x08 = unsigned byte), then `ndim` big-endian uint32 sizes, then the
data. Every defect is reported with the file's path.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

_UBYTE = 0x08

# (split, file stem) of the four files of an MNIST-style directory.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Image size of the data sets whose file names these are (MNIST, Fashion-MNIST).
MNIST_IMAGE_HW = (28, 28)


def find_file(directory: str | os.PathLike, stem: str) -> Path | None:
    """The IDX file `stem` in `directory`, gzipped or not (also the `stem.idx3-ubyte` spelling)."""
    d = Path(directory)
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (d / name).is_file():
            return d / name
    return None


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(
            f"IDX file {path} is truncated or not valid gzip ({e}); re-install or re-download it "
            "(Fashion-MNIST: apt-get install --reinstall dataset-fashion-mnist)."
        ) from None


def _parse_header(data: bytes, path: Path, ndim_expected: int) -> tuple[tuple[int, ...], int]:
    if len(data) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, no header.")
    zero, dtype, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or dtype != _UBYTE or ndim != ndim_expected:
        raise ValueError(
            f"IDX file {path} has magic number 0x{magic:08x}; expected "
            f"0x{(_UBYTE << 8) | ndim_expected:08x} (unsigned bytes, {ndim_expected} dimension(s)). "
            "Is it the right file (images vs labels) and not corrupted?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header ({len(data)} bytes).")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return dims, header


def read_dims(path: Path, ndim_expected: int) -> tuple[int, ...]:
    """The array shape an IDX file declares, reading only its header."""
    dims, _ = _parse_header(_read_bytes(path, limit=4 + 4 * ndim_expected), path, ndim_expected)
    return dims


def read_idx(path: Path, ndim_expected: int) -> np.ndarray:
    """The uint8 array stored in an IDX file of `ndim_expected` dimensions."""
    data = _read_bytes(path)
    dims, header = _parse_header(data, path, ndim_expected)
    expected = int(np.prod(dims))
    got = len(data) - header
    if got < expected:
        raise ValueError(
            f"IDX file {path} is truncated: header says {dims} ({expected} bytes of data) but "
            f"only {got} bytes follow. Re-install or re-download the file."
        )
    if got > expected:
        raise ValueError(
            f"IDX file {path} has {got - expected} bytes after the {dims} array its header "
            "declares; the file is corrupt."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def check_image_size(path: Path, dims: tuple[int, ...],
                     image_hw: tuple[int, int] | None = MNIST_IMAGE_HW) -> None:
    """ValueError naming the file when an images file's (N, H, W) header is not N x `image_hw`."""
    if image_hw is not None and tuple(dims[1:]) != tuple(image_hw):
        h, w = image_hw
        raise ValueError(
            f"IDX file {path} holds {'x'.join(map(str, dims[1:]))} images, but MNIST and "
            f"Fashion-MNIST images are {h}x{w}: the file belongs to another data set or is "
            "corrupt. Point data.path at the IDX files of the data set named by data.name, or "
            "store other images as <root>/<split>/<class>/*.png and use data.name='image_folder'."
        )


def read_split(directory: str | os.PathLike, split: str, num_classes: int,
               image_hw: tuple[int, int] | None = MNIST_IMAGE_HW) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 1) uint8 and labels (N,) int32 of one split of an MNIST-style directory.

    Its images must be `image_hw` (MNIST's 28x28 by default; None accepts any size).
    """
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = find_file(directory, image_stem), find_file(directory, label_stem)
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        raise FileNotFoundError(
            f"IDX file {missing}[.gz] of split {split!r} not found in {directory}: put the data "
            f"set's four IDX files there, or point data.path at the directory that holds them.")
    check_image_size(image_path, read_dims(image_path, 3), image_hw)
    images = read_idx(image_path, 3)[..., None]
    labels = read_idx(label_path, 1).astype(np.int32)
    if len(images) != len(labels):
        raise ValueError(
            f"IDX files disagree: {image_path} holds {len(images)} images but {label_path} holds "
            f"{len(labels)} labels."
        )
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(
            f"IDX label file {label_path} has label {labels[bad[0]]} at index {bad[0]} "
            f"({bad.size} labels in all) outside [0, {num_classes}); the file is corrupt or "
            "belongs to another data set."
        )
    return images, labels
