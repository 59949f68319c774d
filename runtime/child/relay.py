"""Who reads a sandbox's socket: the main thread, and a helper while a handler runs long.

A call to an idle actor costs one thread hand-off if the reader posts it to the
actor's mailbox (the actor's thread wakes up, takes the GIL, runs the handler); on
a virtual machine that wake-up is most of a call's cost. So the main thread runs
such a call itself (:meth:`runtime.actor.ActorRef.call_into` with ``run_here``),
as a bare process would, and the actor's semantics hold (one message at a time,
order per sender: see ``Actor._run_here``).

While the main thread runs a handler nobody reads the socket, and the other
actors' messages would wait behind it. So a periodic ``ITIMER_REAL`` timer ticks
every :data:`SLICE` seconds while messages may be waiting; ``SIGALRM`` is blocked
in every other thread, so the tick always lands in the main thread, and Python
runs its handler there between two bytecodes of the handler (or after an
interrupted sleep or wait). A tick that finds the same handler running as the tick
before lets a helper thread take the reading over: the helper posts what it
reads to mailboxes, never runs a handler itself, and gives the reading back as
soon as the main thread is free. A long handler thus holds the others up for at
most one to two slices plus one hand-off (a handler spinning in Python holds them
up for the GIL's switch interval anyway).

The timer runs only while messages may be waiting, and the kernel says when they
do: the socket is in signal-driven mode (``O_ASYNC``, ``F_SETSIG`` to ``SIGALRM``,
owned by the main thread), in which input that arrives while no thread waits in a
read of it raises ``SIGALRM`` in the main thread; input that finds a reader blocked
in ``recv`` (the usual case: a call to an idle sandbox) raises nothing. That signal
arms the timer (and leaves signal-driven mode, so a burst raises it once); so does
a call run in place while frames already read wait in the queue. Ticks that find no
call since the tick before, twice in a row, disarm it and return the socket to
signal-driven mode. A call to an idle sandbox thus pays no timer system call at
all, however sparse or dense the calls; a burst of overlapping traffic pays one
signal, two ``setitimer``, four ``fcntl`` and one ``ioctl`` (``FIONREAD``: input
that came while the socket was not watched raised nothing, so the timer stays on
while some waits). Without a socket to watch (``fd=None``) every call run in place
arms the timer, as nothing could tell the relay of input waiting behind it.

Frames already read but not dispatched wait in a queue the helper drains first, so
the order of dispatch is the order of arrival whichever thread dispatches.

If the app installs its own ``SIGALRM`` handler, nothing runs in place any more
(every call goes through the mailbox, as before) and, from the relay's next
message on, the socket is no longer watched (the app's handler gets no input
signals): a long handler must never stop the reading for good.

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
import fcntl
import os
import signal
import struct
import termios
import threading
from collections.abc import Callable
from typing import Any

from runtime.wire.mailbox import CALL, CAST

__all__ = ["SLICE", "Relay"]

#: Period of the tick while calls run in place: a handler running in the reading
#: thread for one to two of these is handed off (another actor's message waits that
#: long at most, plus the hand-off).
SLICE = 0.002
#: Ticks in a row finding no call since the tick before, after which the timer is
#: disarmed (and the socket watched again: see the module's docstring).
_IDLE_TICKS = 2

Unit = list[Any]  # one envelope, or consecutive casts to one target (one mailbox item)

# Every call in place looks the handler up: one global each, not a global and a
# module attribute, and an int, not the signal module's enum member.
_getsignal = _signal.getsignal
_SIGALRM = int(signal.SIGALRM)
# fcntl commands the module may lack (Linux values); F_OWNER_TID: one thread owns it.
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
_F_SETOWN_EX = getattr(fcntl, "F_SETOWN_EX", 15)
_F_OWNER_TID = 0


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
    ``fd``: the socket ``recv`` reads, watched for input that arrives while nobody
    reads it (see the module's docstring; None: the timer runs with every call in
    place); the caller keeps it open while the relay runs.
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
        fd: int | None = None,
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
        self._switching = False  # _arm or _disarm runs (see there)
        self._fd = fd  # the socket recv reads, watched while the timer is off
        self._watching = False  # it is in signal-driven mode (O_ASYNC)
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
        if self._timer and fd is not None:
            try:
                owner = struct.pack("ii", _F_OWNER_TID, threading.get_native_id())
                fcntl.fcntl(fd, _F_SETOWN_EX, owner)
                fcntl.fcntl(fd, _F_SETSIG, _SIGALRM)
            except OSError:  # not watchable: every call in place arms the timer
                self._fd = None
            else:
                self._watch(True)

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
        if kind != CALL or not self._timer or _getsignal(_SIGALRM) is not self._on_alarm:
            if self._watching and _getsignal(_SIGALRM) is not self._on_alarm:
                self._watch(False)  # the app's SIGALRM now: it gets no input signals
            self._dispatch(unit if kind == CAST else [first], False)
            return
        self._running = True  # first: a tick now must not disarm the timer
        self._runs += 1
        if not self._armed and (self._queue or not self._watching):
            self._arm()  # frames wait behind this call (or none would be told of)
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

    def _watch(self, on: bool) -> None:
        """Put the socket in signal-driven mode (input that finds no reader raises
        ``SIGALRM`` here) or take it out. Called from the tick's handler too, so it
        never raises: a socket that cannot be watched any more (closed under the
        relay) is let go, and every call in place arms the timer from then on."""
        fd = self._fd
        assert fd is not None
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC if on else flags & ~os.O_ASYNC)
        except OSError:
            self._fd = None
            self._watching = False
            return
        self._watching = on

    def _input_waiting(self) -> bool:
        """Bytes wait in the socket (``FIONREAD``); True when that cannot be told."""
        try:
            got = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")  # type: ignore[arg-type]
            return bool(struct.unpack("i", got)[0])
        except OSError:
            return True

    # _arm and _disarm run in the main thread between its bytecodes, and so can the
    # signal's handler (a tick, or input): _switching makes the handler leave them
    # alone half-way (else a tick inside _disarm could re-arm the timer that _disarm
    # then stops, leaving it marked armed and no tick to come).
    def _arm(self) -> None:
        self._switching = True
        try:
            self._armed = True
            self._idle = 0
            self._seen = self._runs  # a handler running now gets a slice before a hand-off
            signal.setitimer(signal.ITIMER_REAL, self._slice, self._slice)
            if self._watching:
                self._watch(False)  # the ticks look after waiting input from here on
        finally:
            self._switching = False

    def _disarm(self) -> None:
        self._switching = True
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed = False
            self._idle = 0
            if self._fd is not None and not self._closed and _getsignal(_SIGALRM) is self._on_alarm:
                self._watch(True)
        finally:
            self._switching = False
        # From here on input that finds no reader raises the signal (which arms). Input
        # that came while the socket was not watched raised nothing: if some waits now,
        # keep the timer on (the main thread may be about to run a handler in place
        # before it reads again).
        if self._watching and not self._armed and self._input_waiting():
            self._arm()

    def _alarm(self, signum: int, frame: Any) -> None:
        if self._switching:
            return  # see _arm: the timer is being set as this runs
        if not self._armed:  # input while nobody reads: from now on the ticks look after it
            if not self._closed:
                self._arm()
            return
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
        if self._watching:
            self._watch(False)  # the host's end of the stream raises nothing after this
        helper = self._helper
        if helper is not None and not self._handed:
            self._handed = True
            self._go.release()
            helper.join(1.0)
