"""Library chatter below the default verbosity: Orbax's INFO lines and warnings on read-only
restores (`--mode=eval|predict`, `init_from`, the report's pictures).

A read-only CheckpointManager warns twice on creation ("read_only=True, setting
save_interval_steps=0", "Given directory is read only") and a restore logs a dozen INFO lines;
none says anything the user can act on. `orbax_read_only` drops Orbax's records below ERROR while
it is active, unless the command line asked for them with `--verbosity` (e.g. `--verbosity=0`).
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import os
from collections.abc import Iterator

from absl import flags, logging

_ORBAX = f"{os.sep}orbax{os.sep}"


class _DropOrbax(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.ERROR or _ORBAX not in (record.pathname or "")


def verbosity_asked() -> bool:
    """Whether `--verbosity` was given on the command line."""
    try:
        return bool(flags.FLAGS["verbosity"].present)
    except KeyError:
        return False


@contextlib.contextmanager
def orbax_read_only() -> Iterator[None]:
    """Orbax's records below ERROR are dropped inside (unless `--verbosity` was given); also a
    decorator."""
    if verbosity_asked():
        yield
        return
    drop = _DropOrbax()
    targets = (logging.get_absl_logger(), logging.get_absl_handler())
    for t in targets:
        t.addFilter(drop)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(drop)
