"""Data faults on every input path (tf.data, the PIL fallback without TensorFlow, the streamed
folder index, --mode=predict): each case as it was seen, now skipped-and-counted or named."""

import gzip
import os
import struct
import warnings
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import cache, image_tree, sources
from cnn_jax.train import loop


def _write_png16(path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels.astype(np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")  # a real 16-bit greyscale PNG


def _bomb_png(path, width=100_000, height=100_000) -> None:
    """A PNG whose header declares width x height pixels (far beyond Image.MAX_IMAGE_PIXELS)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _tree(root, n_per_class=4, size=8):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                d / f"{i}.png")
    return root


def _cache(path):
    path.mkdir()
    return path


def _listing(root):
    return image_tree.list_files(root, "train", ["a", "b"])


def test_16bit_png_is_scaled_as_tf_decodes_it_not_clipped(tmp_path):
    pixels = (np.arange(16 * 16).reshape(16, 16) * 256 + 255) % 65536  # spans 0..65535
    path = tmp_path / "deep.png"
    _write_png16(path, pixels)
    want = (pixels >> 8).astype(np.uint8)[..., None]  # libpng's strip-16, as tf.io.decode_png
    got = image_tree._decode_pil(str(path), -1)      # the decoder without TensorFlow
    assert got.dtype == np.uint8 and (got == 255).mean() < 0.01  # was 99.6% 255 (clipped)
    np.testing.assert_array_equal(got, want)
    # --mode=predict reads it the same way (1 channel, /255, no normalisation).
    x = loop.load_image(str(path), (16, 16, 1), None, None)
    np.testing.assert_allclose(x, want / 255.0, atol=1e-6)
    # Resized, it is the 8-bit image resized (what tf.data does: decode to 8 bits, then resize).
    small = image_tree._decode_pil(str(path), 8)
    with Image.open(path) as im:
        ref = Image.fromarray(want[..., 0], "L").resize((8, 8), Image.BILINEAR, box=(0, 0, 16, 16))
    np.testing.assert_array_equal(small[..., 0], np.asarray(ref))


def test_16bit_png_decodes_equal_with_and_without_tensorflow(tmp_path):
    pytest.importorskip("tensorflow")
    pixels = np.random.default_rng(1).integers(0, 65536, (12, 12))
    path = tmp_path / "deep.png"
    _write_png16(path, pixels)
    decoded, bad = image_tree._decode_all([str(path)], -1)
    assert bad == []
    np.testing.assert_array_equal(decoded[0], image_tree._decode_pil(str(path), -1))


def test_decompression_bomb_is_skipped_and_counted_on_every_path(tmp_path):
    root = _tree(tmp_path / "tree", n_per_class=50)
    bomb = root / "train" / "a" / "bomb.png"
    _bomb_png(bomb)
    with pytest.raises(Image.DecompressionBombError):  # what used to escape as a traceback
        Image.open(bomb)
    listing = _listing(root)
    # The PIL decoder (no TensorFlow): skipped, reported as unreadable.
    decoded, bad = image_tree._decode_all_pil(listing.files, -1)
    assert [listing.files[i] for i in bad] == [str(bomb)] and len(decoded) == 100
    # The streamed folder index: counted against max_bad_fraction, named in the warning.
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable.*bomb\.png"):
        paths, labels = image_tree.scan_split(listing, cache_dir=_cache(tmp_path / "c1"),
                                              max_bad_fraction=0.05)
    assert len(paths) == 100 and str(bomb) not in set(paths)
    with pytest.raises(ValueError, match=r"1 of 101 image files.*bomb\.png"):
        image_tree.scan_split(listing, cache_dir=_cache(tmp_path / "c2"), max_bad_fraction=0.0)
    # --mode=predict: the one-line error of any unreadable image, naming the file.
    with pytest.raises(ValueError, match=r"Cannot read image .*bomb\.png"):
        loop.load_image(str(bomb), (8, 8, 3), None, None)


def test_symlink_loop_in_a_class_folder_is_skipped_and_counted(tmp_path):
    root = _tree(tmp_path / "tree", n_per_class=50)
    loop_link = root / "train" / "b" / "loop.png"
    os.symlink(loop_link.name, loop_link)  # points at itself
    with pytest.raises(OSError, match="symbolic links"):
        os.stat(loop_link)
    with pytest.warns(UserWarning, match=r"loop\.png cannot be opened"):
        listing = _listing(root)  # was: OSError: Too many levels of symbolic links
    assert str(loop_link) in listing.files and len(listing.files) == 101
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable.*loop\.png"):
        paths, _ = image_tree.scan_split(listing, cache_dir=_cache(tmp_path / "c1"), max_bad_fraction=0.05)
    assert len(paths) == 100
    decoded, bad = image_tree._decode_all_pil(listing.files, -1)
    assert [listing.files[i] for i in bad] == [str(loop_link)]


def test_truncated_decode_cache_is_rebuilt_with_a_warning(tmp_path):
    root = _tree(tmp_path / "tree")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    images, labels = image_tree.decode_split(_listing(root), cache_dir=cache_dir,
                                             max_bad_fraction=0.0)
    (npz,) = cache_dir.glob("train-decoded-*.npz")
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])  # a run killed while copying the cache, a full disk
    with pytest.warns(UserWarning, match=rf"Cache file .*{npz.name} is unreadable.*rebuilding"):
        again, again_labels = image_tree.decode_split(_listing(root), cache_dir=cache_dir,
                                                      max_bad_fraction=0.0)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_labels, labels)
    assert cache.read_arrays(npz) is not None  # rebuilt: the next run reads it silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image_tree.decode_split(_listing(root), cache_dir=cache_dir, max_bad_fraction=0.0)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_missing_idx_label_file_is_named(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)))
    cfg = ml_collections.ConfigDict(dict(name="fashion_mnist", path=str(d),
                                         cache_dir=str(tmp_path / "cache"), download=False))
    source = sources.resolve_source(cfg)
    assert source.num_examples("train") == 20
    with pytest.raises(FileNotFoundError,
                       match=r"t10k-labels-idx1-ubyte\[\.gz\] of split 'test' not found"):
        source.load("test")  # was: "split 'test' does not exist"
    # The training labels missing: named too (not "holds neither the IDX files nor a tree").
    (d / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"not train-labels-idx1-ubyte\[\.gz\]"):
        sources.resolve_source(cfg)
