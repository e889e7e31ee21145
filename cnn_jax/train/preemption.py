"""Preemption and barriers: stopping a run cleanly at a step boundary, and waiting for every
process.

`StopFlag` turns SIGTERM/SIGINT into a request the training loop checks once per dispatch; in a
multi-process run it asks JAX's preemption sync manager instead, so that every process stops at
the same step. A second Ctrl-C stops the run at once (one line, no traceback), except while a
checkpoint is being written (`StopFlag.saving()`): then it waits for the save, and the run stops
at that checkpoint. `barrier` waits for every process (a no-op in single-process runs).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

import jax


class StopFlag:
    """Set by SIGTERM/SIGINT: the loop saves a checkpoint at the next step boundary and exits.

    A second SIGINT (Ctrl-C twice) ends the run at once with one line (SystemExit: no traceback,
    and the `finally` blocks still close the metrics and wait for a save in flight), unless it
    comes during `saving()`: a save is never cut short, and the run then stops at its checkpoint.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._saving = 0

    def install(self) -> None:
        # Multi-process runs leave SIGTERM to JAX's preemption sync manager, which agrees on a
        # step at which every process stops (see `stop_requested`).
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT and not self._saving:
            raise SystemExit("Stopped at once by a second Ctrl-C: nothing was saved since the "
                             "newest checkpoint. Re-run the same command to resume from it.")
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """A checkpoint is being written: a second Ctrl-C meanwhile waits for it (the loop then
        stops at this checkpoint) instead of interrupting the save."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def stop_requested(self, dispatch: int) -> bool:
        """True when the loop should stop; `dispatch` counts calls, the same on every process."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(dispatch):
                self.signum = signal.SIGTERM
        return self.signum is not None


def barrier(name: str) -> None:
    """Waits for every process (a no-op in single-process runs)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
