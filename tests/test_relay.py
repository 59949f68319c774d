"""The sandbox's reading loop (runtime.child.relay), in this process's main thread.

How the time-slice timer follows the traffic: back-to-back calls leave it armed
(no timer system call per call), and ticks without a call disarm it, so an idle
sandbox gets no ticks. Real sockets and the real SIGALRM timer.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for

from runtime.child import relay as relay_module
from runtime.child.relay import Relay
from runtime.wire.channel import Channel
from runtime.wire.mailbox import CALL, Codec

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


def test_back_to_back_calls_arm_the_timer_once_and_idle_ticks_disarm_it(
    pair: tuple[Channel, Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    left, right = pair
    timer_calls: list[float] = []
    real = signal.setitimer

    def counting(which: int, seconds: float, interval: float = 0.0) -> Any:
        timer_calls.append(seconds)  # a spy: the real timer is set all the same
        return real(which, seconds, interval)

    monkeypatch.setattr(relay_module.signal, "setitimer", counting)
    ran: list[bool] = []
    relay = Relay(right.recv, lambda unit, here: ran.append(here), slice_seconds=SLICE)
    try:
        for i in range(6):
            left.send(CALL, i, "x", i)
            relay.step()
        assert ran == [True] * 6  # every call ran in place
        # The first call arms, the second finds it sparse so far (disarm, arm);
        # from then on the calls are back to back: no timer system call at all.
        assert timer_calls == [SLICE, 0, SLICE]
        assert signal.getitimer(signal.ITIMER_REAL)[1] == pytest.approx(SLICE)
        # No more calls: two ticks without one disarm the timer.
        wait_for(lambda: signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), timeout=10,
                 message="the timer stayed armed with no calls")
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
