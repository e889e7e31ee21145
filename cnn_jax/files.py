"""Files the library writes and reads: atomic writes, JSON files, user paths, the compilation cache.

Every file goes down whole or not at all (a temporary file in the same directory, then
`os.replace`), so a reader, a crash or a preemption never sees half of one; the standard library
has no such call, hence `atomic_write`. `read_json` treats a missing or torn file as absent.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def user_path(path: str | os.PathLike) -> str:
    """An absolute path, with `~` expanded (for directories named on the command line)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Calls `write(f)` on a temporary file beside `path`, then renames it to `path` (0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; files beside shared data must be readable
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, newline: bool = True,
               **dump_kwargs: Any) -> None:
    """Writes `obj` as JSON (keys sorted unless sort_keys=False) atomically."""
    dump_kwargs.setdefault("sort_keys", True)
    write_text(path, json.dumps(obj, indent=indent, **dump_kwargs) + ("\n" if newline else ""))


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON value in `path`; None when the file is missing, unreadable or torn."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`; None when it is missing, torn or not an object."""
    obj = read_json(path)
    return obj if isinstance(obj, dict) else None


def enable_compilation_cache(path: str | os.PathLike) -> str | None:
    """JAX's persistent compilation cache in `path`, for every compile however short.

    Returns the directory, or None (with a warning) when it cannot be created.
    """
    import jax

    path = os.path.expanduser(os.fspath(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        logging.warning("Compilation cache disabled: cannot create %s (%s).", path, e)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
