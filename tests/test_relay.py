"""The sandbox's reading loop (runtime.child.relay), in this process's main thread.

How the time-slice timer follows the traffic: with the socket watched (as a
sandbox runs it), calls to an idle relay never arm it, input that arrives while a
call runs in place does, and ticks without a call disarm it, so an idle sandbox
gets no ticks. Real sockets, the real SIGALRM timer and the kernel's input signal.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_for

from runtime.child import relay as relay_module
from runtime.child.relay import Relay
from runtime.wire.channel import Channel
from runtime.wire.mailbox import CALL, CAST, Codec

pytestmark = pytest.mark.timeout(30)

SLICE = 0.2  # long, so that calls made one after another count as back to back


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the relay's timer needs the main thread")
    a, b = socket.socketpair()
    left, right = Channel(a, Codec()), Channel(b, Codec())
    old = signal.getsignal(signal.SIGALRM)
    try:
        yield left, right
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        left.close()
        right.close()


def _spy_on_the_timer(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    timer_calls: list[float] = []
    real = signal.setitimer

    def counting(which: int, seconds: float, interval: float = 0.0) -> Any:
        timer_calls.append(seconds)  # a spy: the real timer is set all the same
        return real(which, seconds, interval)

    monkeypatch.setattr(relay_module.signal, "setitimer", counting)
    return timer_calls


def _timer_off() -> bool:
    # The relay's timer repeats; pytest-timeout's (signal method) fires once.
    return signal.getitimer(signal.ITIMER_REAL)[1] == 0.0


def _watched(sock: Channel) -> bool:
    return bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_ASYNC)


_RECVFROM = {"x86_64": 45, "aarch64": 207}.get(os.uname().machine)


def _main_thread_reads() -> bool:
    """The main thread is blocked in its read (``recv_into``: the ``recvfrom`` system
    call), not merely asleep (waiting for the GIL is a sleep too)."""
    with open(f"/proc/self/task/{threading.main_thread().native_id}/syscall") as f:
        return f.read().split()[0] == str(_RECVFROM)


def _send_to_a_reader(left: Channel, payloads: list[Any], done: Callable[[int], bool]) -> threading.Thread:
    """Send each payload once the one before is ``done`` and the main thread is
    blocked in its read: as a host calls an idle sandbox."""
    if _RECVFROM is None:
        pytest.skip("the recvfrom system call's number is not known here")

    def run() -> None:
        for i, payload in enumerate(payloads):
            wait_for(lambda: done(i) and _main_thread_reads(), timeout=10,
                     message="the relay never went back to its read")
            left.send(CALL, i, "x", payload)

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    return sender


def test_without_a_socket_to_watch_a_call_in_place_arms_the_timer_and_idle_ticks_disarm_it(
    pair: tuple[Channel, Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    left, right = pair
    timer_calls = _spy_on_the_timer(monkeypatch)
    ran: list[bool] = []
    relay = Relay(right.recv, lambda unit, here: ran.append(here), slice_seconds=SLICE)
    try:
        for i in range(6):
            left.send(CALL, i, "x", i)
            relay.step()
        assert ran == [True] * 6  # every call ran in place
        # Nothing tells this relay of input that waits: the first call arms the timer,
        # and it stays armed while calls come: no timer system call after that.
        assert timer_calls == [SLICE]
        assert signal.getitimer(signal.ITIMER_REAL)[1] == pytest.approx(SLICE)
        # No more calls: two ticks without one disarm the timer.
        wait_for(_timer_off, timeout=10, message="the timer stayed armed with no calls")
    finally:
        relay.close()


def test_calls_to_an_idle_relay_arm_no_timer_and_input_during_a_call_in_place_does(
    pair: tuple[Channel, Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its socket watched (as ``ChildServer.serve`` builds it) a relay is told
    by the kernel when input arrives while no thread reads: a call to an idle
    sandbox costs no timer system call, sparse or back to back; a frame that
    arrives while a call runs in place arms the timer, whose tick hands the reading
    to the helper; idle ticks disarm it and watch the socket again."""
    left, right = pair
    timer_calls = _spy_on_the_timer(monkeypatch)
    seen: list[tuple[Any, bool]] = []
    release = threading.Event()

    def dispatch(unit: list[Any], here: bool) -> None:
        seen.append((unit[0].payload, here))
        if unit[0].payload == "long" and here:
            left.send(CALL, 99, "x", "other")  # arrives while nobody reads
            assert release.wait(10)  # interrupted by the ticks, which run here

    relay = Relay(right.recv_held, dispatch, slice_seconds=0.01, token=right.recv_lock,
                  fd=right.fileno())
    try:
        assert _watched(right)
        sender = _send_to_a_reader(left, list(range(5)), lambda i: len(seen) == i)
        for _ in range(5):
            relay.step()
        sender.join(10)
        assert seen == [(i, True) for i in range(5)]
        assert timer_calls == [] and _timer_off() and _watched(right)

        def other_arrives() -> bool:
            return ("other", False) in seen  # read and posted by the helper meanwhile

        def watch() -> None:
            wait_for(other_arrives, timeout=10, message="the helper never took the reading")
            release.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        left.send(CALL, 5, "x", "long")
        relay.step()  # runs "long" in place until the helper has posted "other"
        watcher.join(10)
        assert timer_calls[:1] == [0.01] and not _watched(right)
        # The reading is back on the main thread; no more input: idle ticks disarm.
        left.send(CALL, 6, "x", "after")
        relay.step()
        assert seen[-1] == ("after", True)
        wait_for(lambda: _timer_off() and _watched(right), timeout=10,
                 message="the timer stayed armed with no calls")
    finally:
        release.set()
        relay.close()
    assert not _watched(right)


def test_input_that_came_while_not_watched_keeps_the_timer_on(
    pair: tuple[Channel, Channel],
) -> None:
    """Input that arrived while the timer ran (the socket not watched) raised no
    signal: disarming then would leave it unseen behind a long call in place, so
    the relay finds it waiting and keeps the timer on."""
    left, right = pair
    relay = Relay(right.recv_held, lambda unit, here: None, slice_seconds=SLICE,
                  token=right.recv_lock, fd=right.fileno())
    try:
        relay._arm()  # as a signal or a queued frame would
        assert not _watched(right)
        left.send(CALL, 1, "x", 1)  # no signal: the socket is not watched
        relay._disarm()  # what idle ticks do
        assert not _timer_off() and not _watched(right)
        relay.step()  # read: now nothing waits
        relay._disarm()
        assert _timer_off() and _watched(right)
    finally:
        relay.close()


def test_an_app_with_its_own_sigalrm_handler_gets_no_input_signals(
    pair: tuple[Channel, Channel],
) -> None:
    left, right = pair
    seen: list[tuple[Any, bool]] = []
    relay = Relay(right.recv_held, lambda unit, here: seen.append((unit[0].payload, here)),
                  slice_seconds=SLICE, token=right.recv_lock, fd=right.fileno())
    got: list[int] = []
    try:
        signal.signal(signal.SIGALRM, lambda signum, frame: got.append(signum))
        left.send(CALL, 1, "x", 1)  # (raises the app's SIGALRM: the relay cannot know yet)
        relay.step()
        assert seen == [(1, False)]  # not in place any more: it went to a mailbox
        assert not _watched(right)
        got.clear()
        left.send(CALL, 2, "x", 2)  # arrives while nobody reads
        relay.step()
        assert seen[-1] == (2, False) and got == []
        # The app puts the relay's handler back: calls run in place again, and with
        # the socket not watched yet each arms the timer, until idle ticks watch it.
        signal.signal(signal.SIGALRM, relay._on_alarm)
        left.send(CALL, 3, "x", 3)
        relay.step()
        assert seen[-1] == (3, True) and not _timer_off()
        wait_for(lambda: _timer_off() and _watched(right), timeout=10,
                 message="the socket was never watched again")
    finally:
        relay.close()


def test_the_channels_receive_lock_as_the_token_hands_the_reading_over_and_back(
    pair: tuple[Channel, Channel],
) -> None:
    """As ChildServer.serve builds it: ``recv_held`` under the channel's receive lock,
    which is the relay's token. A call running long in place hands the reading to
    the helper (which reads holding that lock), and the main thread gets it back."""
    left, right = pair
    release = threading.Event()
    seen: list[tuple[Any, bool]] = []

    def dispatch(unit: list[Any], here: bool) -> None:
        seen.append((unit[0].payload, here))
        if unit[0].payload == "long" and here:
            assert release.wait(10)

    relay = Relay(right.recv_held, dispatch, slice_seconds=0.01, token=right.recv_lock)
    try:
        left.send(CALL, 1, "x", "long")
        left.send(CALL, 2, "x", "other")

        def other_arrives() -> bool:
            return ("other", False) in seen  # read and posted by the helper meanwhile

        def on_main() -> None:
            relay.step()  # runs "long" in place until released

        helper_saw = threading.Event()

        def watch() -> None:
            wait_for(other_arrives, timeout=10, message="the helper never took the reading")
            helper_saw.set()
            release.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        on_main()
        assert helper_saw.is_set()
        left.send(CALL, 3, "x", "after")
        relay.step()  # the reading is back on the main thread, in place
        assert seen == [("long", True), ("other", False), ("after", True)]
        assert not right.recv_lock.locked()
    finally:
        release.set()
        relay.close()


def test_a_cast_is_enough_for_the_relay_to_see_the_apps_handler(
    pair: tuple[Channel, Channel],
) -> None:
    left, right = pair
    relay = Relay(right.recv_held, lambda unit, here: None, slice_seconds=SLICE,
                  token=right.recv_lock, fd=right.fileno())
    try:
        signal.signal(signal.SIGALRM, lambda signum, frame: None)
        left.send(CAST, None, "x", 1)
        relay.step()
        assert not _watched(right)
    finally:
        relay.close()


def test_a_socket_closed_under_the_relay_is_let_go_without_an_error_in_the_handler(
    pair: tuple[Channel, Channel],
) -> None:
    """The ticks' handler watches the socket again: if it was closed meanwhile, that
    must not raise inside whatever code the main thread runs; the relay lets the
    socket go and arms the timer with every call in place from then on."""
    left, right = pair
    a, b = socket.socketpair()
    relay = Relay(right.recv_held, lambda unit, here: None, slice_seconds=SLICE,
                  token=right.recv_lock, fd=b.fileno())
    try:
        assert relay._watching
        relay._arm()
        b.close()
        relay._disarm()  # what idle ticks do: no exception
        assert not relay._watching and relay._fd is None
    finally:
        relay.close()
        a.close()
