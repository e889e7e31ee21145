"""Runs launch.py under a simulated file-system fault (the tests run as root in CI, where a
read-only chmod stops nothing, and a real full disk is not to be made):

    python -m tests.fs_faults '{"read_only": ["DIR"], "enospc": ["results.json"]}' ARGS...

read_only: paths under which every write fails with PermissionError(EACCES), as in a directory
    without write permission (open for writing or creating, mkdir, rename, unlink, and the
    temporary files of atomic writes);
enospc: file names ("*" for every file) whose writes fail with OSError(ENOSPC), as on a full
    disk: the open succeeds (the file is created, 0 bytes) and the first write fails;
enospc_checkpoint_from: a step from which every Orbax file write into a checkpoint fails with
    OSError(ENOSPC) (its metadata, meta item and commit marker).
"""

import builtins
import errno
import io
import json
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _install(spec: dict) -> None:
    denied = [os.path.abspath(p) for p in spec.get("read_only", [])]
    full = spec.get("enospc", [])

    def is_denied(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        path = os.path.abspath(os.fsdecode(path))
        return any(path == d or path.startswith(d + os.sep) for d in denied)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def is_full(path) -> bool:
        name = os.path.basename(os.fsdecode(path))
        return any(f == "*" or f == name or name.startswith(f".{f}.") for f in full)

    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_open, real_os_open, real_fdopen = builtins.open, os.open, os.fdopen

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & writes and is_denied(path):
            refuse(path)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def fs_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and is_denied(file):
            refuse(file)
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) \
                and is_full(file):
            f.close()
            return _Full(file)
        return f

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f
        if any(c in mode for c in "wax+") and is_full(path):
            f.close()
            return _Full(path)
        return f

    real_makedirs = os.makedirs

    def guard(fn):
        def wrapped(path, *args, **kwargs):
            if is_denied(path) and not (fn is real_makedirs and os.path.isdir(path)):
                refuse(path)
            return fn(path, *args, **kwargs)
        return wrapped

    def guard2(fn):
        def wrapped(src, dst, *args, **kwargs):
            for p in (src, dst):
                if is_denied(p):
                    refuse(p)
            return fn(src, dst, *args, **kwargs)
        return wrapped

    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if path and is_full(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    if "enospc_checkpoint_from" in spec:  # Orbax's writes into checkpoints >= that step
        from etils.epath import gpath
        from_step, real_gopen = int(spec["enospc_checkpoint_from"]), gpath._GPath.open

        def checkpoint_open(self, mode="r", **kwargs):
            parts = Path(str(self)).parts
            step = next((parts[i + 1].split(".")[0] for i, p in enumerate(parts[:-1])
                         if p == "checkpoints"), "")
            if any(c in mode for c in "wax+") and step.isdigit() and int(step) >= from_step:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real_gopen(self, mode, **kwargs)

        gpath._GPath.open = checkpoint_open
    builtins.open = io.open = fs_open
    os.open, os.fdopen, os.pwrite = os_open, fdopen, pwrite
    for name in ("mkdir", "makedirs", "unlink", "remove", "rmdir"):
        setattr(os, name, guard(getattr(os, name)))
    for name in ("rename", "replace"):
        setattr(os, name, guard2(getattr(os, name)))


class _Full(io.RawIOBase):
    """A file opened for writing on a full disk: every write fails with ENOSPC."""

    def __init__(self, path):
        self.name = os.fsdecode(path)

    def writable(self) -> bool:
        return True

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def main() -> None:
    spec = json.loads(sys.argv[1])
    _install(spec)
    sys.argv = [str(REPO / "launch.py"), *sys.argv[2:]]
    sys.path.insert(0, str(REPO))
    runpy.run_path(str(REPO / "launch.py"), run_name="__main__")


if __name__ == "__main__":
    main()
