"""A checkpoint save that fails (a full disk, permissions): which step it was, and Orbax's
tracebacks kept out of the way of the one ERROR line that reports it.

An asynchronous save fails in Orbax's background threads; the failure surfaces at the next
`save` or `wait`, i.e. under a later step than the one that failed, so `failed_step` reads the
step from the path in the error (`checkpoints/<step>.orbax-checkpoint-tmp/...`). Meanwhile each
of Orbax's threads logs its own traceback at ERROR (one per file it could not write, and more
while the manager shuts down: hundreds of lines). `condense_orbax_errors` installs, once per
process, a filter on absl's logger that turns an Orbax record into one short line without its
traceback, and drops Orbax's records altogether once `mark_failed` was called (the failure is
reported by then; what follows is the shutdown of Orbax's threads). `--verbosity` given on the
command line, or CNN_JAX_TRACEBACK set, keeps the full records.
"""

from __future__ import annotations

import logging as pylogging
import os
import re

from absl import logging

_ORBAX = f"{os.sep}orbax{os.sep}"
_MAX_CHARS = 240
_state = {"installed": False, "failed": False}


class _CondenseOrbax(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        if _ORBAX not in (record.pathname or "") or record.levelno < pylogging.ERROR:
            return True
        if _state["failed"]:
            return False
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that does not format: keep it as it is
            return True
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            text = f"{text.splitlines()[0] if text else ''} ({type(e).__name__}: {e})"
        text = " ".join(text.split())
        record.msg = text[:_MAX_CHARS] + (" ..." if len(text) > _MAX_CHARS else "")
        record.args = None
        record.exc_info = record.exc_text = None
        record.stack_info = None
        return True


def _wanted_verbose() -> bool:
    if os.environ.get("CNN_JAX_TRACEBACK"):
        return True
    try:
        from absl import flags
        return bool(flags.FLAGS["verbosity"].present)
    except Exception:  # noqa: BLE001 - flags not defined or not parsed (a library caller)
        return False


def condense_orbax_errors() -> None:
    """Installs the filter (see the module docstring) on absl's logger and handler, once."""
    if _state["installed"] or _wanted_verbose():
        return
    _state["installed"] = True
    f = _CondenseOrbax()
    for target in (logging.get_absl_logger(), logging.get_absl_handler()):
        target.addFilter(f)


def mark_failed() -> None:
    """A save failure has been reported: Orbax's records from now on are dropped."""
    _state["failed"] = True


def reset() -> None:
    """Orbax's records are condensed again, not dropped (a new save in the same process)."""
    _state["failed"] = False


def failed_step(e: BaseException, directory: str, default: int | None) -> int | None:
    """The step whose save failed, read from a path in `e` (or its causes) under `directory`;
    `default` when none names one."""
    pattern = re.compile(re.escape(directory.rstrip(os.sep)) + r"/(\d+)(?:\.orbax-checkpoint-tmp|/|\b)")
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        m = pattern.search(f"{getattr(e, 'filename', '') or ''} {e}")
        if m:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return default
