"""One writer per directory: an exclusive lock on `DIR/.lock` for a training run or a sweep.

    with workdir_lock.hold(workdir, kind="training run"):
        ...  # nothing else can write DIR meanwhile

The lock is `fcntl.flock` on a lock file inside the directory, holding a JSON record of its holder
(pid, host, command line, start time). A second writer is refused at once with a
`WorkdirInUseError` naming the holder and the fix. The kernel releases a flock when its holder
dies, however it dies (SIGKILL included), so a dead holder's lock is taken over by the next
writer without asking anyone; the record it left behind is replaced with a warning naming it.
A holder that ends normally removes the lock file.

Hand-written because nothing in requirements.lock provides it (`filelock` and `portalocker` are
not dependencies, and the lock file is not to change): it is a few lines of `fcntl`, which
exists wherever the engine runs (Linux, macOS). Details that matter:
- the descriptor is opened close-on-exec (Python's default), so the processes a sweep starts do
  not inherit its lock;
- the lock file is removed on release, so an acquirer checks after locking that the path still
  names the file it locked (else it retries on the new file);
- `live_holder` tests the lock with a momentary shared lock; an acquirer retries for about a
  second before refusing, so a test never makes a real start fail.
- With several processes (multi-host), process i locks its own file (`.lock` for process 0,
  `.lock.process<i>` for the others), so the processes of one job never refuse each other but a
  second job is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
from typing import Any, Callable, Iterator

from cnn_jax import files

LOCK_FILE = ".lock"
_RETRIES = 20           # attempts before refusing ...
_RETRY_SLEEP_S = 0.05   # ... this far apart: about a second in all


class WorkdirInUseError(ValueError):
    """Another live process (a training run or a sweep) holds the directory's lock."""


class WorkdirNotWritableError(OSError):
    """The directory (or its lock file) cannot be created or written: no permission, a
    read-only file system, a full disk (errno, strerror and the path as an OSError's)."""


def lock_path(directory: str | os.PathLike, index: int = 0) -> str:
    """The lock file of `directory` for process `index` of a job (see module docstring)."""
    name = LOCK_FILE if not index else f"{LOCK_FILE}.process{index}"
    return os.path.join(os.fspath(directory), name)


def _record(kind: str) -> dict:
    return {"kind": kind, "pid": os.getpid(), "host": socket.gethostname(),
            "command": shlex.join([os.path.basename(sys.executable) or "python", *sys.argv]),
            "cwd": os.getcwd(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
            "started_unix": time.time()}


def _read_record(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 1 << 16, 0)
    except OSError:
        return None
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return {"pid": None, "unparsed": data[:200].decode(errors="replace")}
    return record if isinstance(record, dict) else None


def describe(record: dict | None, command: bool = True) -> str:
    """'pid 123 on host h, started 2026-12-01 20:30:00 UTC, command: python launch.py ...'."""
    if not record or record.get("pid") is None:
        return "holder unknown (its lock record is empty or unreadable)"
    text = f"pid {record.get('pid')} on host {record.get('host', '?')}, started " \
           f"{record.get('started', '?')}"
    if command and record.get("command"):
        text += f", command: {record['command']}"
    return text


def live_holder(directory: str | os.PathLike, index: int = 0) -> dict | None:
    """The record of the live process holding `directory`'s lock, or None when none does.

    Creates nothing. A record whose holder is no longer running (the lock is free) gives None.
    """
    try:
        fd = os.open(lock_path(directory, index), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_record(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _acquire(path: str) -> int:
    """An open descriptor of `path` holding its exclusive flock; WorkdirInUseError if held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(_RETRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 == _RETRIES:
                    record = _read_record(fd)
                    os.close(fd)
                    raise WorkdirInUseError(record) from None
                time.sleep(_RETRY_SLEEP_S)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder before us removed the file after we opened it: start over


@contextlib.contextmanager
def hold(directory: str | os.PathLike, *, kind: str = "run", index: int = 0,
         check_only: bool = False) -> Iterator[dict | None]:
    """Holds `directory`'s exclusive lock for the body (creating the directory when needed).

    Raises WorkdirInUseError (one line: the holder's pid, host, start time, command, and the fix)
    when a live process holds it. `check_only` takes nothing: it only refuses when the lock is
    held (for commands that would rewrite the directory's plan but run nothing). Directories this
    call created (DIR and missing parents) are removed again when the body fails before writing
    anything into them.
    """
    directory = os.fspath(directory)
    if not directory:
        raise ValueError(f"--workdir is empty: give the {kind}'s directory "
                         "(an unset shell variable?).")
    directory = files.user_path(directory)
    if check_only:
        holder = live_holder(directory, index)
        if holder is not None:
            raise WorkdirInUseError(_in_use_message(directory, kind, holder))
        yield None
        return
    created = []  # the directories this call creates, deepest first
    d = directory
    while not os.path.isdir(d) and os.path.dirname(d) != d:
        created.append(d)
        d = os.path.dirname(d)
    path = lock_path(directory, index)
    try:
        os.makedirs(directory, exist_ok=True)
        fd = _acquire(path)
    except WorkdirInUseError as e:
        raise WorkdirInUseError(_in_use_message(directory, kind, e.args[0])) from None
    except OSError as e:
        _remove_created(created)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise WorkdirNotWritableError(e.errno, e.strerror, e.filename or path) from None
        raise
    ok = False
    try:
        stale = _read_record(fd)
        if stale:
            print(f"WARNING: {directory}: replaced the stale lock record of a "
                  f"{stale.get('kind', 'run')} that is no longer running ({describe(stale)}).",
                  flush=True)
        record = _record(kind)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
        except OSError as e:  # a full disk: name the file
            raise WorkdirNotWritableError(e.errno, e.strerror, path) from None
        yield record
        ok = True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: nobody can be using this file
        os.close(fd)
        if not ok:
            _remove_created(created)


def _remove_created(created: list[str]) -> None:
    """Removes the directories a refused start created, deepest first, while they are empty."""
    for d in created:  # fails (rightly) where anything was written
        try:
            os.rmdir(d)
        except OSError:
            break


def _in_use_message(directory: str, kind: str, holder: dict | None) -> str:
    what = (holder or {}).get("kind", "run")
    pid = (holder or {}).get("pid")
    stop = f"stop it (kill {pid}: it checkpoints and stops), " if pid else ""
    return (f"{directory} is in use by a live {what} ({describe(holder)}); refusing to start a "
            f"second {kind} that would write into it. Wait for it to finish, {stop}or give this "
            f"one another --workdir.")


def locked(kind: str, *, dir_arg: str = "workdir", check_only_arg: str | None = None,
           index: Callable[[], int] | None = None) -> Callable:
    """Decorates a function so that it runs holding the lock of its `dir_arg` argument.

    `check_only_arg` names a bool argument that turns the lock into a check (see `hold`);
    `index` returns this process's index in a multi-process job (called before locking).
    """
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check_only = bool(bound.arguments[check_only_arg]) if check_only_arg else False
            with hold(bound.arguments[dir_arg], kind=kind, check_only=check_only,
                      index=index() if index is not None else 0):
                return fn(*args, **kwargs)
        return wrapper
    return decorate

