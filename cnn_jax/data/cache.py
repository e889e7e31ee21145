"""Where derived data (statistics, decoded arrays, file indexes) is cached, and atomic writes.

A cache lives in `<data dir>/.cnn_jax_cache/` when that is writable, else in
`~/.cache/cnn_jax/<hash of the data dir>/`; `data.cache_dir` overrides both. Every write goes to a
temporary file in the same directory followed by `os.replace` (`cnn_jax.files`), so a reader never
sees half a file and nothing else in the user's data directory is touched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cnn_jax import files

CACHE_SUBDIR = ".cnn_jax_cache"


def _writable_dir(path: Path) -> bool:
    """True when `path` exists (or can be created) and a file can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def resolve_cache_dir(data_dir: str | os.PathLike | None, override: str = "") -> Path:
    """Returns a writable cache directory for data in `data_dir` (see module docstring)."""
    if override:
        path = Path(override).expanduser()
        if not _writable_dir(path):
            raise PermissionError(
                f"data.cache_dir={override!r} is not a writable directory; "
                "point --config.data.cache_dir at a writable path or leave it empty."
            )
        return path
    if data_dir:
        beside = Path(data_dir) / CACHE_SUBDIR
        if _writable_dir(beside):
            return beside
    tag = hashlib.sha1(str(Path(data_dir or "none").resolve()).encode()).hexdigest()[:12]
    name = (Path(data_dir).name if data_dir else "default") or "root"
    fallback = Path.home() / ".cache" / "cnn_jax" / f"{name}-{tag}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def fingerprint(entries: Iterable[Any]) -> str:
    """Short stable hash of an iterable of reprs (file names, sizes, mtimes, settings)."""
    h = hashlib.sha1()
    for entry in entries:
        h.update(repr(entry).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """Fingerprint of files by name, size and modification time (cheap: no content read)."""
    def _entries():
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:  # e.g. a symlink loop: listed, then skipped as unreadable
                yield (os.fspath(p), None, None)
                continue
            yield (os.fspath(p), st.st_size, st.st_mtime_ns)
    return fingerprint(_entries())


def write_json(path: Path, obj: Any) -> None:
    """Writes `obj` as JSON atomically."""
    files.write_json(path, obj, indent=1, newline=False, allow_nan=False)


def read_json(path: Path) -> Any | None:
    """Reads a JSON cache file; None when absent or unreadable (a broken cache is recomputed)."""
    return files.read_json(path)


def write_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Writes arrays as an uncompressed .npz atomically (temp file + os.replace)."""
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def read_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """Reads an .npz cache written by `write_arrays`; None when absent or unreadable.

    An unreadable one (truncated, damaged) is rebuilt by the caller: a warning names it.
    """
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        warnings.warn(f"Cache file {path} is unreadable ({type(e).__name__}: {e}); rebuilding "
                      "it.", stacklevel=2)
        return None

