"""stop_here: a supervision tree's stop run on the calling thread (the sandbox's
graceful stop), with the same order, exit reasons and timeouts as a stop by the
actors' own threads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import wait_for

from runtime.actor import Actor, Down, ExitReason, monitor, stop_here
from runtime.childspec import ChildSpec
from runtime.dynamic import DynamicSupervisor
from runtime.genserver import GenServer
from runtime.supervisor import Supervisor

pytestmark = pytest.mark.timeout(30)


class Idle(Actor):
    pass


class Plain(GenServer):
    """A GenServer without a terminate of its own."""

    def handle_call(self, request: Any, state: Any) -> Any:
        return request, state


def _downs(*refs: Any) -> list[tuple[str, int, str]]:
    """Each Down as (actor id, thread ident it was delivered on, reason kind), in order."""
    seen: list[tuple[str, int, str]] = []
    for ref in refs:
        monitor(ref, lambda d: seen.append((d.actor_id, threading.get_ident(), d.reason.kind)))
    return seen


def test_an_idle_tree_ends_on_the_calling_thread_children_in_reverse() -> None:
    inner = Supervisor.child_spec([ChildSpec("c", start=Idle.start)], id="inner")
    sup = Supervisor.start([ChildSpec("a", start=Idle.start),
                            ChildSpec("b", start=lambda: Plain.start()), inner])
    a, b, inner_ref = (sup.child_ref(x) for x in ("a", "b", "inner"))
    c = inner_ref.child_ref("c")
    threads = [r._actor._thread for r in (sup, a, b, inner_ref, c)]
    seen = _downs(a, b, c, inner_ref, sup)
    assert stop_here(sup).kind == "shutdown"
    me = threading.get_ident()
    assert seen == [(r.id, me, "shutdown") for r in (c, inner_ref, b, a, sup)]
    for thread in threads:  # each actor's parked thread was woken and ended
        thread.join(5)
        assert not thread.is_alive()


def _tidy_then_idle(journal: list[tuple[str, int]]) -> tuple[Any, Any, Any]:
    """A supervisor over a GenServer with a terminate of the app's ("tidy"), then an
    idle actor ("idle"); each ending journals the thread it ran on."""

    class Tidy(GenServer):
        def terminate(self, reason: ExitReason, state: Any) -> None:
            journal.append(("tidy", threading.get_ident()))

    sup = Supervisor.start([ChildSpec("tidy", start=lambda: Tidy.start()),
                            ChildSpec("idle", start=Idle.start)])
    tidy, idle = sup.child_ref("tidy"), sup.child_ref("idle")
    monitor(idle, lambda d: journal.append(("idle", threading.get_ident())))
    return sup, tidy, idle


def test_a_terminate_of_the_apps_runs_on_the_actors_own_thread_in_order() -> None:
    journal: list[tuple[str, int]] = []
    sup, tidy, _ = _tidy_then_idle(journal)
    stop_here(sup)
    assert journal == [("idle", threading.get_ident()), ("tidy", tidy._actor._thread.ident)]


def test_a_terminate_overrunning_its_shutdown_is_killed_and_the_others_still_stop() -> None:
    gate = threading.Event()

    class Stuck(Actor):
        def on_exit(self, reason: ExitReason) -> None:
            gate.wait(20)

    sup = Supervisor.start([ChildSpec("a", start=Idle.start),
                            ChildSpec("stuck", start=Stuck.start, shutdown=0.2),
                            ChildSpec("c", start=Idle.start)])
    a, stuck, c = (sup.child_ref(x) for x in ("a", "stuck", "c"))
    seen = _downs(a, stuck, c)
    try:
        assert stop_here(sup).kind == "shutdown"
        assert [(x, kind) for x, _, kind in seen] == [
            (c.id, "shutdown"), (stuck.id, "killed"), (a.id, "shutdown")]
    finally:
        gate.set()  # the abandoned thread may end (the leak check joins it)


def test_no_wait_goes_beyond_the_whole_stops_timeout() -> None:
    """A nested supervisor waits for its children without limit ("infinity"); the
    whole stop still ends by its timeout, as the root would have been abandoned."""
    gate = threading.Event()

    class Stuck(Actor):
        def on_exit(self, reason: ExitReason) -> None:
            gate.wait(20)

    inner = Supervisor.child_spec([ChildSpec("s", start=Stuck.start, shutdown="infinity")],
                                  id="inner")
    sup = Supervisor.start([inner])
    stuck = sup.child_ref("inner").child_ref("s")
    try:
        stop_here(sup, timeout=0.3)
        assert stuck.exit_reason is not None and stuck.exit_reason.kind == "killed"
        assert not sup.is_alive()
    finally:
        gate.set()


def test_a_busy_actor_is_stopped_by_its_own_thread_after_its_message() -> None:
    gate, entered = threading.Event(), threading.Event()

    class Busy(Actor):
        def on_cast(self, request: Any) -> None:
            entered.set()
            gate.wait(20)

    sup = Supervisor.start([ChildSpec("busy", start=Busy.start)])
    busy = sup.child_ref("busy")
    seen = _downs(busy)
    busy.cast("work")
    assert entered.wait(5)
    result: list[ExitReason] = []
    stopper = threading.Thread(target=lambda: result.append(stop_here(sup)))
    stopper.start()
    try:
        wait_for(lambda: busy._actor._stop_request is not None, message="the stop is asked")
    finally:
        gate.set()
    stopper.join(10)
    assert [r.kind for r in result] == ["shutdown"]
    assert seen == [(busy.id, busy._actor._thread.ident, "shutdown")]


def test_a_dynamic_supervisors_idle_children_end_on_the_calling_thread() -> None:
    sup = DynamicSupervisor.start(ChildSpec("w", start=Idle.start))
    kids = [sup.start_child() for _ in range(3)]
    seen = _downs(*kids)
    stop_here(sup)
    me = threading.get_ident()
    assert sorted(seen) == sorted((k.id, me, "shutdown") for k in kids)


def test_a_down_watcher_stopping_the_ending_actor_does_not_wait() -> None:
    """A monitor callback runs on the thread that ends the actor; stopping that
    actor from it only asks (as from the actor's own thread)."""
    ref = Idle.start()
    got: list[Down] = []
    monitor(ref, lambda d: (ref.stop(timeout=None), got.append(d)))
    assert stop_here(ref, timeout=None).kind == "shutdown"
    assert [d.reason.kind for d in got] == ["shutdown"]


def test_wake_false_leaves_the_ended_actors_threads_parked() -> None:
    """For a caller that ends the process next: the threads end with it."""
    from pykka._envelope import Envelope

    from runtime.actor import _Wake

    sup = Supervisor.start([ChildSpec("a", start=Idle.start)])
    a = sup.child_ref("a")
    actors = [sup._actor, a._actor]
    assert stop_here(sup, wake=False).kind == "shutdown"
    assert not a.is_alive() and not sup.is_alive()
    try:
        assert all(x._thread is not None and x._thread.is_alive() for x in actors)
    finally:  # this process goes on: let them end (the leak check joins them)
        for x in actors:
            x.actor_inbox.put(Envelope(_Wake()))
    for x in actors:
        assert x._thread is not None
        x._thread.join(5)
        assert not x._thread.is_alive()


def test_a_supervisors_stop_is_a_stop_here() -> None:
    sup = Supervisor.start([ChildSpec("a", start=Idle.start)])
    a = sup.child_ref("a")
    seen = _downs(a, sup)
    assert sup.stop().kind == "shutdown"
    me = threading.get_ident()
    assert seen == [(a.id, me, "shutdown"), (sup.id, me, "shutdown")]


def test_a_supervisor_stopping_on_its_own_thread_ends_its_idle_children_there() -> None:
    """Asked to stop (out of band), the supervisor's thread runs the stop: its idle
    children end on that thread, no hand-off to theirs; a child with a terminate
    of the app's still stops on its own thread."""
    journal: list[tuple[str, int]] = []
    sup, tidy, _ = _tidy_then_idle(journal)
    sup._actor._request_stop(ExitReason.shutdown())
    assert sup.join(10) is not None
    assert journal == [("idle", sup._actor._thread.ident), ("tidy", tidy._actor._thread.ident)]
