"""Debounce and coalesce file events per key (a sandbox), with one timer for all keys.

Pure logic for the watcher (:mod:`actors.watcher`), independent of watchdog and of
the clock (pass ``clock=``):

- :class:`Debouncer` collects events per key into one batch ``{path: kind}``. A
  batch is due ``delay`` seconds after its last event (trailing edge), but never
  more than ``max_wait`` after its first, so a steady stream of saves still
  reloads. Later events for a path coalesce with earlier ones (:func:`merge`).
  Deadlines sit in one heap, with at most one live entry per key: a burst of 50
  events costs 50 dict updates and one heap entry, not 50 timers.
- :class:`DebounceTimer` is the single thread that sleeps until the earliest
  deadline and hands each due batch to a callback. It is idle (blocked on a
  condition, no periodic wake-up) while nothing is pending.

>>> t = [0.0]
>>> d = Debouncer(0.02, clock=lambda: t[0])
>>> d.add("sb", "/app/m.py", CHANGED); d.add("sb", "/app/n.py", CHANGED)
True
False
>>> t[0] = 0.01; d.due()
[]
>>> t[0] = 0.03; d.due()
[('sb', {'/app/m.py': 'changed', '/app/n.py': 'changed'})]
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHANGED", "CREATED", "DELETED", "Debouncer", "DebounceTimer", "merge"]

#: The file was written and closed, moved into place, or (polling) seen modified.
CHANGED = "changed"
#: The file was just created and no close-after-write was seen for it yet.
CREATED = "created"
#: The file was deleted or moved away.
DELETED = "deleted"


def merge(old: str | None, new: str) -> str:
    """The kind of a path after ``new`` follows ``old`` in one batch.

    A creation never hides an earlier completed write (an editor that deletes,
    re-creates and writes a file ends as ``changed`` however the events interleave);
    otherwise the latest event wins.

    >>> merge(CHANGED, CREATED), merge(DELETED, CREATED), merge(CREATED, CHANGED)
    ('changed', 'created', 'changed')
    """
    if new == CREATED and old == CHANGED:
        return CHANGED
    return new


@dataclass
class _Batch:
    first: float
    deadline: float
    armed: float  # deadline of this key's live heap entry
    items: dict[str, str] = field(default_factory=dict)


class Debouncer:
    """Per-key trailing-edge debounce with a cap; thread-safe.

    ``delay`` is the default quiet time (seconds) per batch; ``add`` may pass
    another one per key (each sandbox has its own). ``max_wait`` caps how long a
    batch can be pushed back by new events (default: ten times the delay, at
    least 0.1 s).
    """

    def __init__(
        self,
        delay: float = 0.02,
        *,
        max_wait: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay}")
        self.delay = delay
        self.max_wait = max_wait
        self.clock = clock
        self._lock = threading.Lock()
        self._batches: dict[Hashable, _Batch] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()

    def _cap(self, delay: float) -> float:
        if self.max_wait is not None:
            return max(self.max_wait, delay)
        return max(10 * delay, 0.1)

    def add(
        self,
        key: Hashable,
        path: str,
        kind: str = CHANGED,
        *,
        delay: float | None = None,
        now: float | None = None,
    ) -> bool:
        """Record an event; returns True if the earliest deadline of all keys moved
        earlier (whoever sleeps until it must wake up and look again)."""
        delay = self.delay if delay is None else delay
        with self._lock:
            now = self.clock() if now is None else now
            head = self._heap[0][0] if self._heap else None
            batch = self._batches.get(key)
            if batch is None:
                deadline = now + delay
                batch = self._batches[key] = _Batch(now, deadline, deadline)
                heapq.heappush(self._heap, (deadline, next(self._seq), key))
            else:
                batch.deadline = min(max(batch.deadline, now + delay),
                                     batch.first + self._cap(delay))
                if batch.deadline < batch.armed:  # only a shorter delay than before can do this
                    batch.armed = batch.deadline
                    heapq.heappush(self._heap, (batch.deadline, next(self._seq), key))
            batch.items[path] = merge(batch.items.get(path), kind)
            return head is None or batch.armed < head

    def next_deadline(self) -> float | None:
        """When the earliest batch may be due (a stale heap entry may make this early)."""
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def due(self, now: float | None = None) -> list[tuple[Hashable, dict[str, str]]]:
        """Remove and return every batch whose deadline has passed, earliest first."""
        out: list[tuple[Hashable, dict[str, str]]] = []
        with self._lock:
            now = self.clock() if now is None else now
            while self._heap and self._heap[0][0] <= now:
                deadline, _seq, key = heapq.heappop(self._heap)
                batch = self._batches.get(key)
                if batch is None or batch.armed != deadline:
                    continue  # stale: the batch was discarded, flushed or re-armed
                if batch.deadline > now:  # pushed back by later events: re-arm
                    batch.armed = batch.deadline
                    heapq.heappush(self._heap, (batch.deadline, next(self._seq), key))
                    continue
                del self._batches[key]
                out.append((key, batch.items))
        return out

    def discard(self, key: Hashable) -> dict[str, str] | None:
        """Drop the pending batch of ``key`` (its watch was removed); returns it."""
        with self._lock:
            batch = self._batches.pop(key, None)
            return batch.items if batch is not None else None

    def has(self, key: Hashable) -> bool:
        """Whether a batch is pending for ``key``."""
        return key in self._batches

    def pending(self, key: Hashable) -> dict[str, str] | None:
        """A copy of the batch waiting for ``key``, if any."""
        with self._lock:
            batch = self._batches.get(key)
            return dict(batch.items) if batch is not None else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._batches)


class DebounceTimer:
    """One thread that delivers due batches of a :class:`Debouncer` to ``on_due``.

    Call :meth:`poke` after an :meth:`Debouncer.add` that returned True. ``on_due``
    runs in this thread: keep it short (the watcher only posts the batch to its
    actor). An exception in it is passed to ``on_error`` and the thread carries on.

    >>> got = threading.Event()
    >>> d = Debouncer(0.0)
    >>> timer = DebounceTimer(d, lambda key, items: got.set()); timer.start()
    >>> timer.poke() if d.add("k", "/p") else None
    >>> got.wait(5)
    True
    >>> timer.stop()
    """

    def __init__(
        self,
        debouncer: Debouncer,
        on_due: Callable[[Hashable, dict[str, str]], Any],
        *,
        name: str = "debounce-timer",
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self.debouncer = debouncer
        self.on_due = on_due
        self.on_error = on_error
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Wake the thread: the earliest deadline changed."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        clock = self.debouncer.clock
        while True:
            with self._cond:
                while not self._stopped:
                    nd = self.debouncer.next_deadline()
                    if nd is None:
                        self._cond.wait()
                        continue
                    wait = nd - clock()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
            for key, items in self.debouncer.due():
                try:
                    self.on_due(key, items)
                except BaseException as exc:  # the timer must outlive a bad callback
                    if self.on_error is not None:
                        self.on_error(exc)
