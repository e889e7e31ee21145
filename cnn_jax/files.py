"""Files the library writes and reads: atomic writes, JSON files, user paths, the compilation cache.

Every file goes down whole or not at all (a temporary file in the same directory, then
`os.replace`), so a reader, a crash or a preemption never sees half of one; the standard library
has no such call, hence `atomic_write`. `read_json` treats a missing or torn file as absent.
"""

from __future__ import annotations

import errno
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


def config_value(key: str, value: Any) -> Any:
    """A config field's value as runs compare it: `data.path` with `~` expanded, since configs
    record it as written ("~/data/...") and older records hold it expanded."""
    return os.path.expanduser(value) if key == "data.path" and isinstance(value, str) else value


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Calls `write(f)` on a temporary file beside `path`, then renames it to `path` (0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; files beside shared data must be readable
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno and not e.filename:  # a write(): name the file
            raise OSError(e.errno, e.strerror, str(path)) from e
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


# Why the file system refused, and what the user can do about it (see `refusal_line`).
_FIXES = {
    errno.EACCES: "make it writable for this user (check its owner and mode with ls -ld) or "
                  "give another --workdir",
    errno.EROFS: "its file system is mounted read-only: give a --workdir on a writable one",
    errno.ENOSPC: "the disk is full: free space (df -h shows what is left) or give a --workdir "
                  "on another disk, then re-run the same command (a run resumes from its last "
                  "complete checkpoint)",
    errno.ENAMETOOLONG: "a component of the path is longer than the file system allows (255 "
                        "bytes): give a shorter --workdir",
    errno.ENOTDIR: "a component of the path is a file, not a directory: give another --workdir",
    errno.EEXIST: "it exists and is not a directory: give another --workdir, or move it away",
    errno.EISDIR: "it is a directory where a file was expected: move it away",
}
_FIXES[errno.EPERM] = _FIXES[errno.EACCES]
_FIXES[errno.EDQUOT] = _FIXES[errno.ENOSPC].replace("the disk is full", "the disk quota is used up")


def refusal_line(e: BaseException) -> str | None:
    """One line for a file-system refusal (permissions, read-only, full disk, bad path): the
    path, the reason and the fix; None for any other error."""
    if not isinstance(e, OSError) or e.errno not in _FIXES:
        return None
    path = e.filename if e.filename else "a file of the run"
    return f"{e.strerror or os.strerror(e.errno)}: {path}. Fix: {_FIXES[e.errno]}."


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
