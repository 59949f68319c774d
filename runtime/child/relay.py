"""Who reads a sandbox's socket: the main thread, and a helper while a handler runs long.

A call to an idle actor costs one thread hand-off if the reader posts it to the
actor's mailbox (the actor's thread wakes up, takes the GIL, runs the handler); on
a virtual machine that wake-up is most of a call's cost. So the main thread runs
such a call itself (:meth:`runtime.actor.ActorRef.call_into` with ``run_here``),
as a bare process would, and the actor's semantics hold (one message at a time,
order per sender: see ``Actor._run_here``).

While the main thread runs a handler nobody reads the socket, and the other
actors' messages would wait behind it. So while calls run in place a periodic
``ITIMER_REAL`` timer ticks every :data:`SLICE` seconds; ``SIGALRM`` is blocked
in every other thread, so the tick always lands in the main thread, and Python
runs its handler there between two bytecodes of the handler (or after an
interrupted sleep or wait). A tick that finds the same handler running as the tick
before lets a helper thread take the reading over: the helper posts what it
reads to mailboxes, never runs a handler itself, and gives the reading back as
soon as the main thread is free. A long handler thus holds the others up for one
to two slices plus one hand-off (a handler spinning in Python holds them up for
the GIL's switch interval anyway).

The timer is armed when a call is about to run in place. What happens when the
main thread is about to block on an empty socket depends on the traffic: a call
that came more than a slice after the one before (sparse calls) disarms the timer
there, so an idle sandbox gets no ticks and a lone call pays one arming and one
disarming (about 2 us each on a virtual machine, where a system call can cost
more than the Python around it); calls that come closer together (a caller
calling back to back) leave it armed, so they pay no timer system call at all,
and the tick that finds no call since the tick before, twice in a row, disarms
it (a few ticks after the last call of a burst).

Frames already read but not dispatched wait in a queue the helper drains first, so
the order of dispatch is the order of arrival whichever thread dispatches.

If the app installs its own ``SIGALRM`` handler, nothing runs in place any more
(every call goes through the mailbox, as before): a long handler must never stop
the reading for good.

>>> import socket
>>> from runtime.wire.channel import Channel
>>> from runtime.wire.mailbox import Codec, CAST
>>> a, b = socket.socketpair()
>>> left, right = Channel(a, Codec()), Channel(b, Codec())
>>> seen = []
>>> relay = Relay(right.recv, lambda unit, here: seen.append((unit, here)))
>>> left.send(CAST, None, "log", 1); left.send(CAST, None, "log", 2)
>>> relay.step()
>>> [[e.payload for e in unit] for unit, _ in seen]
[[1, 2]]
>>> left.close(); right.close(); relay.close()
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # getsignal without signal's enum lookup
import collections
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime.wire.mailbox import CALL, CAST

__all__ = ["SLICE", "Relay"]

#: Period of the tick while calls run in place: a handler running in the reading
#: thread for one to two of these is handed off (another actor's message waits that
#: long at most, plus the hand-off).
SLICE = 0.002
#: Ticks in a row finding no call since the tick before, after which the timer is
#: disarmed (how back-to-back traffic ends; sparse calls disarm it before blocking).
_IDLE_TICKS = 2

Unit = list[Any]  # one envelope, or consecutive casts to one target (one mailbox item)

_clock = time.perf_counter
# Every call in place looks the handler up: one global each, not a global and a
# module attribute, and an int, not the signal module's enum member.
_getsignal = _signal.getsignal
_SIGALRM = int(signal.SIGALRM)


class Relay:
    """Reads envelopes with ``recv()`` and hands them to ``dispatch(unit, here)``.

    ``here`` says whether the dispatcher may run a call in the calling thread
    (main thread, with the time slice armed) or must post it (helper thread).
    ``call_here(envelope)``, tried first for a call that may run in place, runs it
    the short way and says whether it did (else ``dispatch`` gets it).
    ``done()`` true makes the helper give the reading back (the server is exiting).
    ``in_place=False``: nothing runs in place (every call goes to a mailbox).
    ``token``: the lock held by the thread reading and dispatching (a new one if
    None); a channel's :attr:`~runtime.wire.channel.Channel.recv_lock`, with its
    :meth:`~runtime.wire.channel.Channel.recv_held` as ``recv``, makes a read take
    one lock instead of two.
    :meth:`step` is called in a loop by the main thread; it raises what ``recv``
    raised (``ChannelClosed``, ``ProtocolError``), also when the helper hit it.
    """

    def __init__(
        self,
        recv: Callable[[], list[Any]],
        dispatch: Callable[[Unit, bool], None],
        *,
        done: Callable[[], bool] = lambda: False,
        in_place: bool = True,
        slice_seconds: float = SLICE,
        call_here: Callable[[Any], bool] = lambda env: False,
        token: threading.Lock | None = None,
    ) -> None:
        self._recv = recv
        self._done = done
        self._dispatch = dispatch
        self._call_here = call_here
        self._slice = slice_seconds
        self._queue: collections.deque[Any] = collections.deque()
        # Held by the thread reading (and dispatching).
        self._token = token if token is not None else threading.Lock()
        self._turn = threading.Condition(self._token)  # the helper's turn ended
        self._go = threading.Lock()  # released to give the helper a turn
        self._go.acquire()
        self._error: BaseException | None = None
        self._handed = False  # the helper has the reading (main thread only)
        self._want_back = False
        self._running = False  # a handler runs in place (main thread only)
        self._runs = 0  # handlers run in place so far
        self._seen = -1  # self._runs at the last tick
        self._idle = 0  # ticks in a row that found no call since the tick before
        self._armed = False
        self._last_call = 0.0  # perf_counter() when the last call ran in place
        self._dense = False  # that call came within a slice of the one before
        self._closed = False
        self._helper: threading.Thread | None = None
        self._on_alarm = self._alarm  # one object, so getsignal() can recognise it
        self._timer = False
        if in_place and threading.current_thread() is threading.main_thread():
            try:
                _signal.signal(signal.SIGALRM, self._on_alarm)
                _signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
                self._timer = True
            except (ValueError, OSError):  # no signals here: nothing runs in place
                pass

    # -- main thread -------------------------------------------------------------------
    def step(self) -> None:
        """Dispatch the next unit (reading first if none is queued)."""
        token = self._token  # the lock of self._turn: taken directly, it is every call's path
        token.acquire()  # acquire/release, not ``with``: half the cost
        try:
            while self._handed:  # after a hand-off: until the helper gives the reading back
                self._turn.wait()
            if self._error is not None:
                raise self._error
            queue = self._queue
            if queue:
                first = queue.popleft()
            else:
                if self._armed and not self._dense:
                    self._disarm()  # sparse calls: an idle sandbox gets no ticks
                got = self._recv()
                if len(got) == 1:  # the common case (a call): no trip through the queue
                    first = got[0]
                else:
                    queue.extend(got)
                    first = queue.popleft()
            kind = first.kind
            if kind == CAST:
                unit = self._casts(first)
        finally:
            token.release()
        # Only calls run in place: casts and system ops never do, so they need no tick.
        if (kind != CALL or not self._timer
                or _getsignal(_SIGALRM) is not self._on_alarm):
            self._dispatch(unit if kind == CAST else [first], False)
            return
        self._running = True  # first: a tick now must not disarm the timer
        self._runs += 1
        now = _clock()
        self._dense = now - self._last_call < self._slice
        self._last_call = now
        if not self._armed:
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self._slice, self._slice)
        try:
            if not self._call_here(first):
                self._dispatch([first], True)
        finally:
            self._running = False
            if self._handed:
                self._want_back = True

    def _pop(self) -> Unit:
        first = self._queue.popleft()
        return [first] if first.kind != CAST else self._casts(first)

    def _casts(self, first: Any) -> Unit:
        """``first`` and the casts to the same actor right behind it: one mailbox item."""
        queue = self._queue
        unit = [first]
        while queue and queue[0].kind == CAST and queue[0].target == first.target:
            unit.append(queue.popleft())
        return unit

    def _disarm(self) -> None:
        self._armed = False
        self._idle = 0
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _alarm(self, signum: int, frame: Any) -> None:
        seen, runs = self._seen, self._runs
        self._seen = runs
        if not self._running:
            self._idle = self._idle + 1 if seen == runs else 0
            if self._idle >= _IDLE_TICKS or self._closed:
                self._disarm()
            return
        self._idle = 0
        if seen != runs or self._handed or self._closed:
            return  # another handler than at the last tick: give this one its slice
        self._handed = True
        self._want_back = False
        if self._helper is None:
            self._helper = threading.Thread(target=self._help, name="sandbox-reader", daemon=True)
            self._helper.start()
        self._go.release()

    # -- helper thread -----------------------------------------------------------------
    def _help(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # ticks go to the main thread
        while True:
            self._go.acquire()
            if self._closed:
                return
            with self._turn:
                try:
                    while not (self._want_back or self._error is not None or self._done()):
                        if not self._queue:
                            try:
                                self._queue.extend(self._recv())
                            except BaseException as exc:  # the main thread raises it
                                self._error = exc
                                break
                            continue  # the main thread may be free by now: it runs them
                        self._dispatch(self._pop(), False)
                finally:
                    self._handed = False
                    self._turn.notify()

    def close(self) -> None:
        """Let the helper thread end (when it is not reading)."""
        self._closed = True
        if self._timer:
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
            except ValueError:
                pass
        helper = self._helper
        if helper is not None and not self._handed:
            self._handed = True
            self._go.release()
            helper.join(1.0)
