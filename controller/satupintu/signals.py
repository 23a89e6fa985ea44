"""Signal handling for long-running processes: handlers set flags and wake the main loop."""

from __future__ import annotations

import contextlib
import queue
import signal


class Signals:
    """Signal handlers only set a flag and wake the main loop, which does the work at once.

    The wake-up is a queue.SimpleQueue, not a threading.Event: Event.set() takes the Event's own
    lock, which is not reentrant, and the handler runs in the main thread, so a signal arriving
    while that thread holds the lock inside wait() or clear() hangs the daemon for good (a
    SIGHUP storm does it within seconds). SimpleQueue.put() is reentrant by design."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, *_: object) -> None:
        self.stop = True
        self._wake.put(None)

    def _on_reload(self, *_: object) -> None:
        self.reload = True
        self._wake.put(None)

    def wait(self, timeout: float) -> bool:
        """Sleep until a signal comes or `timeout` passes; True when the daemon should stop."""
        with contextlib.suppress(queue.Empty):
            self._wake.get(timeout=max(0.0, timeout))
        while not self._wake.empty():  # one pass of the loop answers every signal so far
            self._wake.get_nowait()
        return self.stop

    def take_reload(self) -> bool:
        """Whether a SIGHUP came; reset before the reload, so one during it brings another."""
        requested, self.reload = self.reload, False
        return requested
