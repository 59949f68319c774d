"""Timers, as OTP's ``erlang:send_after``: deliver a message to an actor later.

:func:`send_after` schedules ``message`` for ``target`` (an :class:`ActorRef` or a
registered name, resolved when the timer fires); the message arrives as a plain
message (a GenServer's ``handle_info``). :func:`cancel_timer` cancels it and says
how much time was left. A timer for an actor is cancelled when that actor ends (as
OTP cancels a timer whose destination process is gone); one for a name nobody
holds when it fires is dropped.

One scheduler thread per process serves every timer, while any is pending. Its
clock is injectable: :func:`use_clock` with a :class:`ManualClock` makes time move
only when a test calls :meth:`ManualClock.advance`, which fires what fell due
before it returns, so tests never sleep.

>>> from runtime.actor import Actor
>>> class Inbox(Actor):
...     def on_init(self):
...         self.got = []
...     def on_info(self, message):
...         self.got.append(message)
...     def on_call(self, request):
...         return self.got
>>> clock = ManualClock()
>>> with use_clock(clock):
...     ref = Inbox.start()
...     t = send_after(ref, "tick", 5.0)
...     clock.advance(4.0)
...     cancel_timer(send_after(ref, "never", 1.0))
...     clock.advance(1.0)
1.0
>>> ref.call("got")  # the call queues behind the tick
['tick']
>>> _ = ref.stop()
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from runtime.actor import ActorRef, monitor
from runtime.errors import ActorDead, ConfigError
from runtime.registry import whereis

__all__ = [
    "ManualClock",
    "TimerRef",
    "cancel_timer",
    "read_timer",
    "send_after",
    "set_clock",
    "use_clock",
]


@dataclass(frozen=True)
class TimerRef:
    """Names one pending timer (plain data: it survives a hot reload's state copy).

    ``pid`` is the process that owns it: a ref carried into another process (a
    state restored after a restart) names no timer there.
    """

    id: int
    pid: int = field(default_factory=os.getpid)


class ManualClock:
    """A clock that moves only when told: :meth:`advance` fires the timers due.

    >>> c = ManualClock(10.0); c.advance(2.5); c()
    12.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and deliver every timer due by then, in due order."""
        if not seconds >= 0:
            raise ConfigError("seconds", seconds, "a number of seconds >= 0")
        with self._lock:
            self._now += seconds
        _scheduler.fire_due()


@dataclass(order=True)
class _Entry:
    due: float
    id: int
    target: Any = None  # ActorRef or registered name
    message: Any = None
    cancelled: bool = False


class _Scheduler:
    """The process's timers: a heap under a condition, one daemon thread for real time
    that runs only while timers are pending (so a test that leaves none pending leaves
    no thread behind).

    Written by hand (not ``threading.Timer``, which costs a thread per timer; not
    ``sched``, which cannot wait on a clock that tests move).
    """

    def __init__(self) -> None:
        self.clock: Callable[[], float] = time.monotonic
        self._cond = threading.Condition()
        self._heap: list[_Entry] = []
        self._live: dict[int, _Entry] = {}
        #: Pending timer ids per target actor: cancelled when that actor ends (as
        #: OTP cancels a timer whose destination process is gone).
        self._by_target: dict[ActorRef, set[int]] = {}
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def add(self, target: Any, message: Any, seconds: float) -> TimerRef:
        watch = False
        with self._cond:
            entry = _Entry(self.clock() + seconds, next(self._ids), target, message)
            heapq.heappush(self._heap, entry)
            self._live[entry.id] = entry
            if isinstance(target, ActorRef):
                ids = self._by_target.get(target)
                if ids is None:
                    ids = self._by_target[target] = set()
                    watch = True
                ids.add(entry.id)
            self._wake()
        if watch:
            # Outside the lock: an actor that has already ended calls back at once.
            monitor(target, lambda _down: self._drop_target(target))
        return TimerRef(entry.id)

    def _wake(self) -> None:
        """(Under the lock) make the thread see a change; start it if timers are due on
        the real clock and it is not running."""
        if self._live and not isinstance(self.clock, ManualClock):
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="runtime-timers", daemon=True
                )
                self._thread.start()
        self._cond.notify()

    def _forget(self, entry: _Entry) -> None:
        """(Under the lock) ``entry`` fired or was cancelled."""
        self._live.pop(entry.id, None)
        ids = self._by_target.get(entry.target) if isinstance(entry.target, ActorRef) else None
        if ids is not None:
            ids.discard(entry.id)

    def _drop_target(self, target: ActorRef) -> None:
        with self._cond:
            for timer_id in self._by_target.pop(target, ()):
                entry = self._live.pop(timer_id, None)
                if entry is not None:
                    entry.cancelled = True
            self._cond.notify()

    def cancel(self, timer: TimerRef) -> float | None:
        if timer.pid != os.getpid():
            return None
        with self._cond:
            entry = self._live.get(timer.id)
            if entry is None:
                return None
            entry.cancelled = True  # left in the heap; skipped when it surfaces
            self._forget(entry)
            self._cond.notify()
            return max(0.0, entry.due - self.clock())

    def read(self, timer: TimerRef) -> float | None:
        if timer.pid != os.getpid():
            return None
        with self._cond:
            entry = self._live.get(timer.id)
            return None if entry is None else max(0.0, entry.due - self.clock())

    def fire_due(self) -> None:
        """Deliver every timer due now (the caller's thread does the posting)."""
        for entry in self._take_due():
            _deliver(entry.target, entry.message)

    def _take_due(self) -> list[_Entry]:
        due: list[_Entry] = []
        with self._cond:
            now = self.clock()
            while self._heap and (self._heap[0].cancelled or self._heap[0].due <= now):
                entry = heapq.heappop(self._heap)
                if not entry.cancelled:
                    self._forget(entry)
                    due.append(entry)
        return due

    def _wait_time(self) -> float | None:
        if isinstance(self.clock, ManualClock) or not self._heap:
            return None  # a manual clock's advance() fires timers itself
        return max(0.0, self._heap[0].due - self.clock())

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._live or isinstance(self.clock, ManualClock):
                    # Nothing pending (or advance() delivers): end; add() starts anew.
                    self._heap = [e for e in self._heap if not e.cancelled]
                    heapq.heapify(self._heap)
                    self._thread = None
                    return
                wait = self._wait_time()
                if wait is None or wait > 0:
                    self._cond.wait(wait)
            self.fire_due()

    def set_clock(self, clock: Callable[[], float]) -> None:
        with self._cond:
            self.clock = clock
            self._wake()

    def _after_fork(self) -> None:
        # A forked child has no scheduler thread (only the forking thread survives)
        # and the parent's timers are not its own.
        self._cond = threading.Condition()
        self._heap, self._live, self._by_target, self._thread = [], {}, {}, None


_scheduler = _Scheduler()
os.register_at_fork(after_in_child=_scheduler._after_fork)


def _deliver(target: Any, message: Any) -> None:
    ref = whereis(target) if isinstance(target, str) else target
    if ref is None:
        return
    try:
        ref.tell(message)
    except ActorDead:
        pass  # as in OTP: a message to an ended actor is dropped


def send_after(target: ActorRef | str, message: Any, seconds: float) -> TimerRef:
    """Deliver ``message`` to ``target`` (a ref, or a name looked up when it fires)
    after ``seconds``; returns a :class:`TimerRef` for :func:`cancel_timer`.

    >>> send_after("nobody-doc", "hi", -1)
    Traceback (most recent call last):
    ...
    runtime.errors.ConfigError: invalid seconds=-1: expected a finite number of seconds >= 0
    """
    if not isinstance(target, (ActorRef, str)):
        raise ConfigError("target", target, "an ActorRef or a registered name")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 0 <= seconds < math.inf
    ):
        raise ConfigError("seconds", seconds, "a finite number of seconds >= 0")
    return _scheduler.add(target, message, float(seconds))


def cancel_timer(timer: TimerRef) -> float | None:
    """Cancel ``timer``; returns the seconds it had left, or None if it had already
    fired or been cancelled (OTP's ``false``).

    >>> cancel_timer(TimerRef(-1)) is None
    True
    """
    if not isinstance(timer, TimerRef):
        raise ConfigError("timer", timer, "a TimerRef returned by send_after")
    return _scheduler.cancel(timer)


def read_timer(timer: TimerRef) -> float | None:
    """Seconds left before ``timer`` fires, or None if it has fired or was cancelled."""
    return _scheduler.read(timer)


def set_clock(clock: Callable[[], float]) -> Callable[[], float]:
    """Run the process's timers on ``clock`` from now on; returns the previous one.

    Timers pending across a clock change keep their due time in the old clock's
    numbers, so switch clocks when none are pending (an app that wants a
    :class:`ManualClock` sets it when its entry runs).

    >>> previous = set_clock(ManualClock()); _ = set_clock(previous)
    """
    if not callable(clock):
        raise ConfigError("clock", clock, "a callable returning seconds (like time.monotonic)")
    previous = _scheduler.clock
    _scheduler.set_clock(clock)
    return previous


@contextmanager
def use_clock(clock: Callable[[], float]) -> Iterator[Callable[[], float]]:
    """Run the process's timers on ``clock`` inside the block (a :class:`ManualClock`
    in tests); the previous clock is back afterwards."""
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)
