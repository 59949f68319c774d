"""Supervisors start their own thread with their first message (runtime.ondemand).

Their ``on_init`` (starting the children in order) runs on the starter's thread;
nothing is handled before it has finished, then one thread handles every message
in order, as before.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import wait_for

from runtime.actor import Actor, ActorRef, ExitReason, monitor
from runtime.childspec import ChildSpec
from runtime.ondemand import OnDemandInbox
from runtime.supervisor import Supervisor

pytestmark = pytest.mark.timeout(30)


class Idle(Actor):
    pass


def _threads_named(sup: ActorRef) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if sup.id in t.name]


def test_a_started_supervisor_has_no_thread_until_its_first_message() -> None:
    sup = Supervisor.start([ChildSpec("a", start=Idle.start)])
    try:
        assert sup._actor._thread is None  # no thread of its own yet
        assert _threads_named(sup) == []
        first = sup.child_ref("a")  # a call: its thread starts and answers it
        assert first is not None and first.is_alive()
        assert sup._actor._thread is not None and sup._actor._thread.is_alive()
    finally:
        sup.stop()


def test_its_children_start_on_the_starters_thread_in_order() -> None:
    ran: list[tuple[str, int]] = []

    def start(cid: str) -> Any:
        def go() -> ActorRef:
            ran.append((cid, threading.get_ident()))
            return Idle.start()
        return go

    sup = Supervisor.start([ChildSpec(c, start=start(c)) for c in ("a", "b", "c")])
    try:
        assert ran == [(c, threading.get_ident()) for c in ("a", "b", "c")]
    finally:
        sup.stop()


def test_a_child_that_dies_during_init_is_restarted_after_init() -> None:
    """Its Down waits in the inbox while on_init runs; the thread then handles it."""
    starts: list[ActorRef] = []

    def dies_at_once() -> ActorRef:
        ref = Idle.start()
        starts.append(ref)
        if len(starts) == 1:
            ref.kill(ExitReason("exception", "boom"))
        return ref

    sup = Supervisor.start([ChildSpec("a", start=dies_at_once)])
    try:
        wait_for(lambda: len(starts) == 2, message="the child was not restarted")
        assert sup.child_ref("a") is starts[1]
    finally:
        sup.stop()


def test_a_supervisor_without_a_thread_stops_its_children_in_reverse_order() -> None:
    order: list[str] = []

    class Noted(Actor):
        def __init__(self, cid: str) -> None:
            super().__init__()
            self.cid = cid

        def on_exit(self, reason: ExitReason) -> None:
            order.append(self.cid)

    sup = Supervisor.start([ChildSpec(c, start=lambda c=c: Noted.start(c)) for c in "abc"])
    assert sup._actor._thread is None
    assert sup.stop().kind == "shutdown"
    assert order == ["c", "b", "a"]
    assert not sup.is_alive()


def test_no_thread_to_be_had_fails_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor whose thread cannot start (a pids limit, say) fails, as if it
    crashed, rather than leaving its messages unhandled."""
    downs: list[Any] = []
    sup = Supervisor.start([ChildSpec("a", start=Idle.start, restart="temporary")])
    monitor(sup, downs.append)
    child = sup._actor._children[0].ref
    assert child is not None

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    child.kill(ExitReason("exception", "boom"))  # its Down is the supervisor's first message
    monkeypatch.undo()
    wait_for(lambda: downs, message="the supervisor did not fail")
    assert downs[0].reason.abnormal and "can't start new thread" in downs[0].reason.message


def test_the_inbox_starts_once_and_only_after_arm() -> None:
    started: list[int] = []
    inbox = OnDemandInbox()
    inbox.put(1)
    inbox.put(2)
    assert started == []
    inbox.arm(lambda: started.append(1))
    assert started == [1]
    for i in range(3):
        inbox.put(i)
    assert started == [1]
    quiet = OnDemandInbox()
    quiet.arm(lambda: started.append(2))
    assert started == [1]  # armed, nothing put: no start
    quiet.put("x")
    assert started == [1, 2]


def _blocked_signals(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as fh:
        for line in fh:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk")


def test_its_thread_gets_the_signal_mask_of_its_start_not_of_its_first_sender() -> None:
    """In a sandbox every thread keeps SIGALRM blocked (runtime.child.relay) though
    the main thread, which may post the first message, unblocks it later: the thread
    started on demand has the mask it would have had if started at once."""
    import signal

    sig = signal.SIGUSR2
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    try:
        sup = Supervisor.start([ChildSpec("a", start=Idle.start)])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        assert sig not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the sender's
        sup.child_ref("a")  # its first message, from this thread: its thread starts
        thread = sup._actor._thread
        assert thread is not None and thread.native_id is not None
        assert _blocked_signals(thread.native_id) & (1 << (sig - 1))
        assert sig not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # ours restored
    finally:
        sup.stop()


def test_a_ctrl_c_during_its_init_reaches_the_starter_and_ends_it() -> None:
    """on_init runs on the starter's thread: a KeyboardInterrupt there ends the
    supervisor (and the children it started, linked to it) and reaches the starter
    as a KeyboardInterrupt, as it would have while waiting for a thread's init."""
    started: list[ActorRef] = []

    def interrupted() -> ActorRef:
        raise KeyboardInterrupt

    def first() -> ActorRef:
        ref = Idle.start()
        started.append(ref)
        return ref

    with pytest.raises(KeyboardInterrupt):
        Supervisor.start([ChildSpec("a", start=first), ChildSpec("b", start=interrupted)])
    wait_for(lambda: not started[0].is_alive(), message="the started child outlived it")
