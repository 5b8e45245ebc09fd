"""`InferenceGate`: bounded concurrent inference with a bounded queue (503 beyond it).

Two counters, because the two decisions are made in different places:

- `admit()` runs in the event loop (serve/guard.py) before the request body is read: requests
  already in flight on the model routes (running + waiting) are counted, and one over
  `max_concurrent + max_queue` is answered 503 at once, without reading its upload and
  without taking one of the thread pool's workers (anyio lends 40 to sync endpoints; a queue
  that waited inside them could starve every other route).
- `slot()` runs in the endpoint's worker thread once the upload is parsed: at most
  `max_concurrent` threads decode images and run the models; the others wait up to
  `queue_timeout_s`. Holding the slot only after the upload arrived means a slow uploader
  delays nobody's inference.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Busy", "InferenceGate"]


class Busy(Exception):
    """The server is at its limit; answered 503 with `Retry-After`."""


class InferenceGate:
    """Counts model requests in flight and lends at most `max_concurrent` model slots.

    Args:
        max_concurrent: Model calls at once.
        max_queue: Requests that may wait beyond those.
        timeout_s: The longest wait for a slot.
    """

    def __init__(self, max_concurrent: int, max_queue: int, timeout_s: float) -> None:
        self.max_concurrent = max_concurrent
        self.capacity = max_concurrent + max_queue
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self.in_flight = 0

    def admit(self) -> None:
        """Counts one more request in flight; raises Busy when the queue is full."""
        with self._lock:
            if self.in_flight >= self.capacity:
                raise Busy(
                    f"server busy: {self.max_concurrent} requests running and "
                    f"{self.capacity - self.max_concurrent} waiting; retry later"
                )
            self.in_flight += 1

    def leave(self) -> None:
        """The admitted request has finished (its response is sent)."""
        with self._lock:
            self.in_flight -= 1

    def acquire(self) -> None:
        """Waits for a model slot; raises Busy after `timeout_s`."""
        if not self._slots.acquire(timeout=self.timeout_s):
            raise Busy(f"server busy: no model slot free after {self.timeout_s:g} s; retry later")

    def release(self) -> None:
        self._slots.release()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """A model slot for the body of a `with` block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()
