"""Threads for the sandbox's threaded SYSTEM ops (reload, snapshot, restore), kept
for the next op.

Starting a thread per op cost a reload about 0.2 ms on a loaded 2-vCPU VM (the
reader thread waits in ``Thread.start`` for the new thread to be scheduled, then
the op waits for the GIL): a thread that finished an op waits for the next one
instead, and takes it with one queue hand-off. Each op still runs at once: when
no thread is idle, a new one is started, so an op never waits behind another
(a reload waiting for its actors does not hold up a snapshot).

>>> import threading
>>> done = threading.Event()
>>> OpThreads().run(done.set)
>>> done.wait(5)
True
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["OpThreads"]

log = logging.getLogger("runtime.child.opthreads")


class OpThreads:
    """Runs each submitted function at once on an idle thread, or on a new one."""

    def __init__(self, name: str = "sysop") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Threads between two jobs; each job queued takes one, or starts a thread.
        self._idle = 0

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on another thread (its exceptions are logged, not raised)."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        while True:
            fn, args = self._jobs.get()
            try:
                fn(*args)
            except BaseException:  # an op answers its own errors; this is a last resort
                log.exception("threaded op %r failed", getattr(fn, "__name__", fn))
            del fn, args  # do not keep the last op's payload alive while idle
            with self._lock:
                self._idle += 1
