"""Host batches computed ahead on a few threads, yielded in order.

Each batch is a pure function of its step, so the threads change only the speed (NumPy releases
the GIL while it copies and converts). concurrent.futures has no ordered, bounded-lookahead map
that can be closed early (Executor.map submits every key at once), hence this class.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class OrderedMap(Iterator):
    """Yields fn(k) for k in `keys`, computed `ahead` items ahead on a few threads, in order.

    Dropping or closing the iterator stops the threads.
    """

    def __init__(self, fn: Callable[[int], Any], keys: Iterable[int], ahead: int = 4):
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cnn_jax_data")
        self._fn, self._keys = fn, iter(keys)
        self._pending: collections.deque = collections.deque()
        for _ in range(max(ahead, workers)):
            self._submit()

    def _submit(self) -> None:
        for k in self._keys:
            self._pending.append(self._pool.submit(self._fn, k))
            return

    def __next__(self) -> Any:
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        self._submit()
        return future.result()

    def close(self) -> None:
        """Cancels the batches computed ahead and stops the threads."""
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self) -> None:
        self.close()
