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
