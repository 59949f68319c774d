"""The code barrier: a readers-writer lock every actor's message handling passes.

Each GenServer holds the read side while it handles one message; a hot reload
takes the write side. Taking it waits for the handlers in flight to finish and
holds every new message at the door (mailboxes keep filling, nothing is dropped),
so suspending 1,000 actors costs one lock acquisition, not 1,000 round trips.
Writers have priority: a steady stream of messages cannot starve a reload. A
handler that calls another actor of the same process while holding the read side
passes its right of way on (``nested=True``): otherwise the callee would wait for
the writer, the writer for the caller, and the caller for the callee.

>>> b = CodeBarrier()
>>> with b.reading():
...     b.readers
1
>>> with b.writing():
...     b.writer
True
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CodeBarrier", "BARRIER"]

_get_ident = threading.get_ident


class CodeBarrier:
    """Readers-writer lock with writer priority; re-entrant for readers of one thread."""

    def __init__(self) -> None:
        # The readers' path enters the condition's lock directly (a Condition's
        # __enter__ is a Python call, twice on every message).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.readers = 0
        self.writer = False
        self._writers_waiting = 0
        # How deep each thread holding the read side is, by thread ident (a thread
        # holding none has no entry). A dict, not a threading.local: each access to a
        # thread-local attribute costs several dict lookups, and every message takes
        # and leaves the read side. Each thread only writes its own key, one atomic
        # dict operation under the GIL. It is also how a writer sees the readers that
        # came in without the lock (try_read): it waits for the dict to empty, as for
        # ``readers``, so a quick reader costs no count of its own.
        self._depth: dict[int, int] = {}
        #: How many times the write side was taken (one per reload, whatever the
        #: number of actors suspended).
        self.writes = 0
        self._writer_thread: int | None = None

    def held(self) -> bool:
        """Whether the current thread holds the read side."""
        return _get_ident() in self._depth

    def owned(self) -> bool:
        """Whether the current thread holds the write side (it is running a swap).

        An actor this thread starts meanwhile must not wait for the barrier in its
        ``init``: the swap is waiting for that ``init`` (see ``ServerActor``).
        """
        return self.writer and self._writer_thread == threading.get_ident()

    def acquire_read(self, *, nested: bool = False) -> None:
        me = _get_ident()
        depth = self._depth.get(me)
        if depth:
            self._depth[me] = depth + 1
            return
        with self._lock:
            if nested:  # the caller holds a read: no writer can be active, only waiting
                while self.writer:
                    self._cond.wait()
            else:
                while self.writer or self._writers_waiting:
                    self._cond.wait()
            self.readers += 1
        self._depth[me] = 1

    def try_read(self) -> bool:
        """Take the read side without the lock when no writer is active or waiting
        (every message's common case); False, with nothing taken, otherwise (then
        :meth:`acquire_read`, which waits). Release with :meth:`release_quick`.

        A reader announces itself first and looks for a writer second; a writer
        says it is waiting first and counts readers second (both under the GIL's
        order): one of the two always sees the other.

        >>> b = CodeBarrier(); b.try_read(), b.held(), b.release_quick(), b.held()
        (True, True, None, False)
        """
        me = _get_ident()
        depths = self._depth
        if me in depths:
            return False  # re-entered: acquire_read counts the depth
        depths[me] = 1  # announced: a writer now waits for this entry to go
        if self.writer or self._writers_waiting:
            del depths[me]
            with self._lock:  # the writer may be waiting for this reader to leave
                self._cond.notify_all()
            return False
        return True

    def release_quick(self) -> None:
        """Leave the read side taken by :meth:`try_read`."""
        del self._depth[_get_ident()]
        if self._writers_waiting:
            with self._lock:
                self._cond.notify_all()

    def release_read(self) -> None:
        me = _get_ident()
        depth = self._depth[me] - 1
        if depth:
            self._depth[me] = depth
            return
        del self._depth[me]
        with self._lock:
            self.readers -= 1
            # Only a writer waits for the readers to drain (readers wait for writers,
            # woken by release_write): skip the notify, on every message's path.
            if not self.readers and self._writers_waiting:
                self._cond.notify_all()

    def acquire_write(self, timeout: float | None = None) -> bool:
        """Suspend every actor; False if handlers in flight did not finish in time."""
        with self._cond:
            self._writers_waiting += 1
            try:
                ok = self._cond.wait_for(lambda: not (self.writer or self.readers or self._depth), timeout)
                if ok:
                    self.writer = True
                    self._writer_thread = threading.get_ident()
                    self.writes += 1
                return ok
            finally:
                self._writers_waiting -= 1
                if not ok:
                    self._cond.notify_all()

    def release_write(self) -> None:
        with self._cond:
            self.writer = False
            self._writer_thread = None
            self._cond.notify_all()

    @contextmanager
    def reading(self, *, nested: bool = False) -> Iterator[None]:
        self.acquire_read(nested=nested)
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def writing(self, timeout: float | None = None) -> Iterator[None]:
        if not self.acquire_write(timeout):
            raise TimeoutError(
                f"actors still busy after {timeout}s; cannot suspend them for the swap"
            )
        try:
            yield
        finally:
            self.release_write()


#: The process-wide barrier (one per sandbox process).
BARRIER = CodeBarrier()
