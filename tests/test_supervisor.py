"""Supervisors: strategies x restart types, ordering, intensity, run-time API, cleanup."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from helpers import Recorder, wait_for

from runtime.actor import Actor, ActorRef, Down, ExitReason, link, monitor
from runtime.childspec import ChildSpec
from runtime.errors import ActorDead, ChildSpecError, ConfigError, SupervisorError
from runtime.genserver import GenServer
from runtime.registry import whereis
from runtime.supervisor import (
    ChildInfo,
    ChildStartFailed,
    Supervisor,
    SupervisorRef,
    SupervisorSpec,
    gave_up,
)

pytestmark = pytest.mark.timeout(30)


# -- fixtures and helpers ------------------------------------------------------------------
class Journal:
    """Thread-safe record of ("start"|"stop", child id), in the order things happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[str, str]] = []

    def record(self, what: str, child_id: str) -> None:
        with self._lock:
            self.entries.append((what, child_id))

    def since(self, mark: int) -> list[tuple[str, str]]:
        with self._lock:
            return self.entries[mark:]

    def mark(self) -> int:
        with self._lock:
            return len(self.entries)


class Worker(GenServer):
    """Keeps a number; casts set it or crash the worker; journals start and stop."""

    def init(self, child_id: str, journal: Journal) -> dict[str, Any]:
        self.child_id = child_id
        self.journal = journal
        journal.record("start", child_id)
        return {"n": 0}

    def handle_call(self, request: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if request == "get":
            return state["n"], state
        raise KeyError(request)

    def handle_cast(self, request: Any, state: dict[str, Any]) -> dict[str, Any]:
        if request == "crash":
            raise ZeroDivisionError(f"worker {self.child_id} crashed in a cast")
        return {"n": request}

    def terminate(self, reason: ExitReason, state: Any) -> None:
        self.journal.record("stop", self.child_id)


def spec(child_id: str, journal: Journal, restart: str = "permanent", **kw: Any) -> ChildSpec:
    return ChildSpec(
        child_id,
        start=lambda: Worker.start(child_id, journal),
        restart=restart,  # type: ignore[arg-type]
        **kw,
    )


class FakeClock:
    """A clock the test advances by hand, so restart intensity needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def refs(sup: SupervisorRef) -> dict[str, ActorRef | None]:
    return {c.id: c.ref for c in sup.which_children()}


def crash(ref: ActorRef) -> ExitReason:
    """Crash a worker through a cast and wait until it has ended.

    Once join() returns, the Down notice is in the supervisor's mailbox, so the next
    call into the supervisor is answered after it handled the crash.
    """
    ref.cast("crash")
    reason = ref.join(5)
    assert reason is not None and reason.kind == "exception"
    return reason


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def started() -> Any:
    """Supervisors started by a test; stopped afterwards if the test left them running."""
    sups: list[SupervisorRef] = []
    yield sups
    for sup in reversed(sups):
        if sup.is_alive():
            sup.stop()


# -- strategies x restart types ------------------------------------------------------------
#: children restarted when "b" (the middle of a, b, c) is restarted
RESTARTED = {
    "one_for_one": {"b"},
    "one_for_all": {"a", "b", "c"},
    "rest_for_one": {"b", "c"},
}
#: whether "b" is restarted after exiting this way (OTP's restart types)
RESTARTS_B = {
    ("permanent", "crash"): True,
    ("permanent", "normal"): True,
    ("permanent", "shutdown"): True,
    ("transient", "crash"): True,
    ("transient", "normal"): False,
    ("transient", "shutdown"): False,
    ("temporary", "crash"): False,
    ("temporary", "normal"): False,
    ("temporary", "shutdown"): False,
}


@pytest.mark.parametrize("strategy", sorted(RESTARTED))
@pytest.mark.parametrize(("restart", "exit_kind"), sorted(RESTARTS_B))
def test_restart_table(
    strategy: str, restart: str, exit_kind: str, journal: Journal, started: list
) -> None:
    sup = Supervisor.start(
        [spec("a", journal), spec("b", journal, restart), spec("c", journal)],
        strategy=strategy,
    )
    started.append(sup)
    before = refs(sup)
    for n, ref in enumerate(before.values(), start=1):
        ref.cast(n * 10)  # give each child state, to see who kept it
    assert [r.call("get") for r in before.values()] == [10, 20, 30]

    b = before["b"]
    if exit_kind == "crash":
        crash(b)
    else:
        b.stop(ExitReason.normal() if exit_kind == "normal" else ExitReason.shutdown())

    after = refs(sup)
    if RESTARTS_B[(restart, exit_kind)]:
        expect_restarted = RESTARTED[strategy]
        assert set(after) == {"a", "b", "c"}
    else:
        expect_restarted = set()
        if restart == "temporary":
            assert set(after) == {"a", "c"}  # forgotten once it ended
        else:
            assert after["b"] is None  # transient after a normal exit: kept, not running
            del after["b"]
    for child_id, ref in after.items():
        assert ref is not None and ref.is_alive()
        if child_id in expect_restarted:
            assert ref != before[child_id], f"{child_id} should have been restarted"
            assert ref.call("get") == 0
        else:
            assert ref == before[child_id], f"{child_id} should have been left alone"
            assert ref.call("get") == {"a": 10, "b": 20, "c": 30}[child_id]
        if child_id != "b" and child_id in expect_restarted:
            assert not before[child_id].is_alive()
    assert sup.count_children()["active"] == len(after)


# -- ordering ------------------------------------------------------------------------------
def test_rest_for_one_stops_later_children_in_reverse_and_restarts_in_order(
    journal: Journal, started: list
) -> None:
    sup = Supervisor.start([spec(x, journal) for x in "abcd"], strategy="rest_for_one")
    started.append(sup)
    assert journal.since(0) == [("start", x) for x in "abcd"]
    mark = journal.mark()
    with Recorder("supervisor") as rec:
        crash(refs(sup)["b"])
        sup.which_children()  # the restart is done once this answers
    assert journal.since(mark) == [
        ("stop", "b"),  # its own terminate, as it crashed
        ("stop", "d"),
        ("stop", "c"),
        ("start", "b"),
        ("start", "c"),
        ("start", "d"),
    ]
    names = [(e.name.split(".")[1], e.metadata["child"]) for e in rec.events]
    assert names == [
        ("child_terminated", "b"),
        ("restart", "b"),
        ("child_terminated", "d"),
        ("child_terminated", "c"),
        ("child_started", "b"),
        ("child_started", "c"),
        ("child_started", "d"),
    ]
    assert rec.named("supervisor.restart")[0].metadata["restarted"] == ["b", "c", "d"]


def test_one_for_all_stops_others_in_reverse_and_restarts_all_in_order(
    journal: Journal, started: list
) -> None:
    sup = Supervisor.start([spec(x, journal) for x in "abcd"], strategy="one_for_all")
    started.append(sup)
    mark = journal.mark()
    crash(refs(sup)["b"])
    sup.which_children()
    assert journal.since(mark) == [
        ("stop", "b"),
        ("stop", "d"),
        ("stop", "c"),
        ("stop", "a"),
        *[("start", x) for x in "abcd"],
    ]


def test_one_for_all_drops_a_temporary_sibling(journal: Journal, started: list) -> None:
    sup = Supervisor.start(
        [spec("a", journal), spec("t", journal, "temporary"), spec("c", journal)],
        strategy="one_for_all",
    )
    started.append(sup)
    crash(refs(sup)["a"])
    assert [c.id for c in sup.which_children()] == ["a", "c"]


def test_stop_stops_children_in_reverse_order(journal: Journal) -> None:
    sup = Supervisor.start([spec(x, journal) for x in "abc"])
    children = list(refs(sup).values())
    mark = journal.mark()
    assert sup.stop().kind == "shutdown"
    assert journal.since(mark) == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    assert all(r.exit_reason.kind == "shutdown" for r in children)


# -- crashes are visible -------------------------------------------------------------------
def test_crash_in_cast_is_restarted_with_telemetry_and_logged_traceback(
    journal: Journal, started: list, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="runtime.supervisor")
    sup = Supervisor.start([spec("w", journal)])
    started.append(sup)
    with Recorder("supervisor.restart") as rec:
        first = refs(sup)["w"]
        first.cast("crash")
        (event,) = rec.wait("supervisor.restart")
    assert event.measurements == {"count": 1}
    md = event.metadata
    assert md["supervisor"] == sup.id and md["child"] == "w"
    assert md["strategy"] == "one_for_one" and md["reason_kind"] == "exception"
    assert md["reason"] == "ZeroDivisionError: worker w crashed in a cast"
    assert "in handle_cast" in md["traceback"]
    restarts = [r for r in caplog.records
                if r.name == "runtime.supervisor" and "restarting" in r.getMessage()]
    assert len(restarts) == 1, "the failure is logged once, by the supervisor handling it"
    assert "ZeroDivisionError: worker w crashed in a cast" in restarts[0].getMessage()
    # the traceback goes in the record's own field (JSON "exc"), not in the message
    assert "Traceback (most recent call last)" not in restarts[0].getMessage()
    assert "Traceback (most recent call last)" in restarts[0].traceback
    assert not [r for r in caplog.records if r.name == "runtime.actor" and r.levelno >= 40]
    new = wait_for(lambda: refs(sup)["w"])
    assert new != first and new.call("get") == 0


# -- restart types in detail ---------------------------------------------------------------
def test_temporary_child_is_removed_after_exit(journal: Journal, started: list) -> None:
    sup = Supervisor.start([spec("keep", journal), spec("tmp", journal, "temporary")])
    started.append(sup)
    crash(refs(sup)["tmp"])
    assert [c.id for c in sup.which_children()] == ["keep"]
    assert sup.count_children() == {"specs": 1, "active": 1, "supervisors": 0, "workers": 1}
    with pytest.raises(SupervisorError, match="no child 'tmp'; its children: 'keep'"):
        sup.child_ref("tmp")


def test_transient_child_not_restarted_after_normal_stop(journal: Journal, started: list) -> None:
    sup = Supervisor.start([spec("tr", journal, "transient")])
    started.append(sup)
    with Recorder("supervisor") as rec:
        assert refs(sup)["tr"].stop(ExitReason.normal()).kind == "normal"
        (info,) = sup.which_children()
    assert info == ChildInfo("tr", None, "worker", "transient", False)
    assert rec.named("supervisor.restart") == []
    (ended,) = rec.named("supervisor.child_terminated", child="tr")
    assert ended.metadata["reason_kind"] == "normal"
    # ...but an abnormal exit is restarted
    sup.restart_child("tr")
    crash(refs(sup)["tr"])
    assert refs(sup)["tr"].is_alive()


# -- restart intensity ---------------------------------------------------------------------
def test_escalation_through_nested_supervisors_with_fake_clock(journal: Journal) -> None:
    inner_clock, outer_clock = FakeClock(), FakeClock()
    inner_spec = Supervisor.child_spec(
        [spec("w", journal)], id="inner", max_restarts=2, max_seconds=5, clock=inner_clock
    )
    outer = Supervisor.start([inner_spec], max_restarts=1, max_seconds=5, clock=outer_clock)
    outer_down = threading.Event()
    downs: list[Down] = []
    monitor(outer, lambda d: (downs.append(d), outer_down.set()))
    assert outer.count_children() == {"specs": 1, "active": 1, "supervisors": 1, "workers": 0}

    def crash_worker(inner: SupervisorRef) -> None:
        crash(inner.child_ref("w"))

    with Recorder("supervisor") as rec:
        inner = outer.child_ref("inner")
        # Two restarts in the window are allowed; the clock moving on frees the window.
        crash_worker(inner)
        crash_worker(inner)
        assert inner.child_ref("w").is_alive()  # both restarts read the clock already
        inner_clock.advance(5.5)
        crash_worker(inner)
        crash_worker(inner)
        assert inner.is_alive() and inner.child_ref("w").is_alive()
        assert len(rec.named("supervisor.restart", supervisor=inner.id)) == 4

        # A third restart within 5s of the last two: the inner supervisor gives up.
        worker = inner.child_ref("w")
        crash(worker)
        reason = inner.join(5)
        # As in OTP: {shutdown, reached_max_restart_intensity}, not an abnormal exit.
        assert reason is not None and reason.kind == "shutdown" and not reason.abnormal
        assert gave_up(reason)
        assert reason.message.startswith("reached_max_restart_intensity: 3 restarts in 5s")
        assert "last failure: child 'w': exception: ZeroDivisionError" in reason.message
        assert "handle_cast" in reason.traceback
        (esc,) = rec.named("supervisor.escalation", supervisor=inner.id)
        assert esc.measurements == {"restarts": 3}
        assert esc.metadata["child"] == "w" and esc.metadata["max_restarts"] == 2

        # The outer supervisor restarts the inner one, with a fresh worker.
        inner2 = outer.child_ref("inner")
        assert isinstance(inner2, SupervisorRef) and inner2 != inner
        assert inner2.child_ref("w").call("get") == 0
        (outer_restart,) = rec.named("supervisor.restart", supervisor=outer.id)
        assert outer_restart.metadata["reason_kind"] == "shutdown"

        # The inner supervisor escalates again: that is the outer's second restart in
        # its window (max 1), so the outer escalates too and fails.
        for _ in range(3):
            crash_worker(inner2)
        assert gave_up(inner2.join(5))
        assert gave_up(outer.join(5))
    assert outer_down.wait(5)
    assert gave_up(downs[0].reason)
    assert "2 restarts in 5s" in downs[0].reason.message
    assert "child 'inner'" in downs[0].reason.message
    assert len(rec.named("supervisor.escalation")) == 3


def test_max_restarts_zero_escalates_on_first_failure(journal: Journal) -> None:
    sup = Supervisor.start([spec("a", journal), spec("b", journal)], max_restarts=0)
    children = refs(sup)
    crash(children["a"])
    assert gave_up(sup.join(5))
    assert children["b"].exit_reason.kind == "shutdown"


def test_failed_restart_counts_as_attempt_and_escalates(journal: Journal) -> None:
    attempts = {"n": 0}

    def start() -> ActorRef:
        attempts["n"] += 1
        if attempts["n"] > 1:
            raise ConnectionRefusedError(f"attempt {attempts['n']} refused")
        return Worker.start("flaky", journal)

    sup = Supervisor.start([ChildSpec("flaky", start=start)], max_restarts=3, clock=FakeClock())
    with Recorder("supervisor") as rec:
        crash(refs(sup)["flaky"])
        reason = sup.join(5)
    assert gave_up(reason)
    assert "4 restarts in 5s" in reason.message
    assert "ConnectionRefusedError: attempt 4 refused" in reason.message
    failed = rec.named("supervisor.child_start_failed", child="flaky")
    assert [e.metadata["reason"] for e in failed] == [
        f"ConnectionRefusedError: attempt {n} refused" for n in (2, 3, 4)
    ]
    assert len(rec.named("supervisor.restart")) == 3  # the 4th attempt escalated instead
    assert attempts["n"] == 4


def test_failed_restart_is_retried_until_it_starts(journal: Journal, started: list) -> None:
    attempts = {"n": 0}

    def start() -> ActorRef:
        attempts["n"] += 1
        if attempts["n"] in (2, 3):
            raise OSError("not yet")
        return Worker.start("slow", journal)

    sup = Supervisor.start([ChildSpec("slow", start=start)], clock=FakeClock())
    started.append(sup)
    with Recorder("supervisor") as rec:
        crash(refs(sup)["slow"])
        rec.wait("supervisor.child_started", child="slow")
    assert attempts["n"] == 4
    assert sup.child_ref("slow").call("get") == 0
    assert len(rec.named("supervisor.child_start_failed")) == 2


def test_window_slides_with_the_clock(journal: Journal, started: list) -> None:
    clock = FakeClock()
    sup = Supervisor.start([spec("w", journal)], max_restarts=1, max_seconds=10, clock=clock)
    started.append(sup)
    for _ in range(5):
        crash(refs(sup)["w"])
        assert refs(sup)["w"].is_alive()  # the restart has read the clock: now move it
        clock.advance(10.5)
    assert sup.is_alive() and refs(sup)["w"].is_alive()


# -- run-time API --------------------------------------------------------------------------
def test_runtime_api(journal: Journal, started: list) -> None:
    sup = Supervisor.start([spec("a", journal)])
    started.append(sup)

    b = sup.start_child(spec("b", journal, "transient"))
    assert b.is_alive() and sup.child_ref("b") == b
    nested = sup.start_child(Supervisor.child_spec([spec("n1", journal)], id="nested"))
    assert isinstance(nested, SupervisorRef) and nested.child_ref("n1").is_alive()
    assert [c.id for c in sup.which_children()] == ["a", "b", "nested"]
    assert sup.count_children() == {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
    info = {c.id: c for c in sup.which_children()}
    assert info["nested"].type == "supervisor" and info["b"].restart == "transient"
    assert info["b"].spec is not None and info["b"].spec.id == "b"

    with pytest.raises(ChildSpecError, match="already has a child 'b'"):
        sup.start_child(spec("b", journal))
    with pytest.raises(SupervisorError, match="is running; terminate_child it first"):
        sup.delete_child("b")
    with pytest.raises(SupervisorError, match="is running"):
        sup.restart_child("b")

    sup.terminate_child("b")
    assert b.exit_reason.kind == "shutdown"
    assert sup.child_ref("b") is None
    assert info["b"] != sup.which_children()[1]
    assert sup.which_children()[1] == ChildInfo("b", None, "worker", "transient", False)
    assert sup.count_children()["active"] == 2
    sup.terminate_child("b")  # already terminated: no-op

    b2 = sup.restart_child("b")
    assert b2 != b and b2.is_alive() and sup.child_ref("b") == b2
    sup.terminate_child("b")
    sup.delete_child("b")
    assert [c.id for c in sup.which_children()] == ["a", "nested"]

    with pytest.raises(SupervisorError, match=r"no child 'zzz'; its children: 'a', 'nested'"):
        sup.terminate_child("zzz")
    for op in (sup.restart_child, sup.delete_child, sup.child_ref):
        with pytest.raises(SupervisorError, match="no child 'zzz'"):
            op("zzz")

    # a child started at run time is supervised like the others
    c = sup.start_child(spec("c", journal))
    crash(c)
    assert sup.child_ref("c") not in (None, c)

    # a deliberate terminate is not a crash: no restart, and the nested tree stops
    n1 = nested.child_ref("n1")
    sup.terminate_child("nested")
    assert nested.exit_reason.kind == "shutdown" and n1.exit_reason.kind == "shutdown"
    assert sup.child_ref("nested") is None


def test_start_child_failure_is_reported_and_not_added(journal: Journal, started: list) -> None:
    sup = Supervisor.start([])
    started.append(sup)

    def broken() -> ActorRef:
        raise RuntimeError("cannot start")

    with Recorder("supervisor.child_start_failed") as rec:
        with pytest.raises(ChildStartFailed) as info:
            sup.start_child(ChildSpec("broken", start=broken))
    assert info.value.child_id == "broken"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "child 'broken' failed to start: RuntimeError: cannot start" in str(info.value)
    assert rec.named("supervisor.child_start_failed", child="broken")
    assert sup.which_children() == []

    with pytest.raises(ChildStartFailed, match="not an ActorRef"):
        sup.start_child(ChildSpec("none", start=lambda: None))  # type: ignore[arg-type]
    with pytest.raises(ChildSpecError, match="needs a ChildSpec"):
        sup.start_child("not a spec")  # type: ignore[arg-type]


def test_terminate_child_removes_temporary_spec(journal: Journal, started: list) -> None:
    sup = Supervisor.start([spec("t", journal, "temporary")])
    started.append(sup)
    sup.terminate_child("t")
    assert sup.which_children() == []


def test_api_errors_do_not_hurt_the_supervisor(started: list) -> None:
    sup = Supervisor.start([])
    started.append(sup)
    with pytest.raises(SupervisorError, match="does not handle"):
        sup.call("what")
    with pytest.raises(SupervisorError, match="no child"):
        sup.child_ref("x")
    assert sup.is_alive()


# -- validation and start-up ---------------------------------------------------------------
def test_duplicate_ids_rejected(journal: Journal) -> None:
    dup = r"duplicate child id 'a' \(children\[0\] and children\[2\]\)"
    with pytest.raises(ChildSpecError, match=dup):
        Supervisor.start([spec("a", journal), spec("b", journal), spec("a", journal)])
    assert journal.entries == []  # rejected before anything started
    with pytest.raises(ChildSpecError, match="duplicate"):
        Supervisor.child_spec([spec("a", journal), spec("a", journal)], id="x")
    with pytest.raises(ChildSpecError, match="duplicate"):
        SupervisorSpec([spec("a", journal), spec("a", journal)])


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("strategy", "one_for_none"),
        ("max_restarts", -1),
        ("max_restarts", 1.5),
        ("max_restarts", True),
        ("max_seconds", 0),
        ("max_seconds", "5"),
        ("clock", 3),
    ],
)
def test_bad_options_rejected(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Supervisor.start([], **{option: value})
    assert info.value.option == option and info.value.value == value
    assert f"invalid {option}=" in str(info.value)


def test_bad_children_rejected(journal: Journal) -> None:
    with pytest.raises(ChildSpecError, match=r"children\[1\] is 'oops', not a ChildSpec"):
        Supervisor.start([spec("a", journal), "oops"])  # type: ignore[list-item]
    with pytest.raises(ChildSpecError, match="sequence of ChildSpec"):
        Supervisor.start(spec("a", journal))  # type: ignore[arg-type]


def test_initial_start_failure_cleans_up(journal: Journal) -> None:
    def broken() -> ActorRef:
        raise OSError("port in use")

    with Recorder("supervisor") as rec:
        with pytest.raises(ChildStartFailed) as info:
            Supervisor.start(
                [spec("a", journal), spec("b", journal), ChildSpec("c", start=broken),
                 spec("d", journal)]
            )
    err = info.value
    assert err.child_id == "c" and err.reason.message == "OSError: port in use"
    assert "child 'c' failed to start: OSError: port in use" in str(err)
    assert isinstance(err.__cause__, OSError)
    assert journal.entries == [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]
    assert [e.metadata["child"] for e in rec.named("supervisor.child_terminated")] == ["b", "a"]


def test_nested_initial_failure_propagates(journal: Journal) -> None:
    def broken() -> ActorRef:
        raise OSError("no disk")

    inner = Supervisor.child_spec([ChildSpec("x", start=broken)], id="inner")
    with pytest.raises(ChildStartFailed) as info:
        Supervisor.start([spec("a", journal), inner])
    assert info.value.child_id == "inner"
    assert "child 'x' failed to start: OSError: no disk" in str(info.value)
    assert journal.entries == [("start", "a"), ("stop", "a")]


# -- lifecycle edges -----------------------------------------------------------------------
def test_stuck_child_is_killed_after_its_shutdown(started: list) -> None:
    gate, entered = threading.Event(), threading.Event()

    class Stuck(Actor):
        def on_cast(self, request: Any) -> None:
            entered.set()
            gate.wait(10)

    sup = Supervisor.start([ChildSpec("stuck", start=Stuck.start, shutdown=0.2)])
    child = sup.child_ref("stuck")
    child.cast("block")
    assert entered.wait(5)
    try:
        assert sup.stop().kind == "shutdown"
        assert child.exit_reason.kind == "killed"
    finally:
        gate.set()


def test_killed_supervisor_takes_its_children_along(journal: Journal) -> None:
    sup = Supervisor.start([spec("a", journal), spec("b", journal)])
    children = refs(sup)
    sup.kill()
    for ref in children.values():
        reason = ref.join(5)
        assert reason is not None and reason.kind == "killed"


def test_linked_non_child_failure_shuts_supervisor_down(journal: Journal) -> None:
    class Fragile(Actor):
        def on_cast(self, request: Any) -> None:
            raise RuntimeError("parent broke")

    parent = Fragile.start()
    sup = Supervisor.start([spec("a", journal)])
    child = sup.child_ref("a")
    link(parent, sup)
    parent.cast("x")
    reason = sup.join(5)
    assert reason is not None and reason.kind == "exception"
    assert "parent broke" in reason.message
    assert child.exit_reason.kind == "shutdown"  # stopped in order, not left behind


def test_escalated_supervisor_rejects_calls(journal: Journal) -> None:
    sup = Supervisor.start([spec("a", journal)], max_restarts=0)
    crash(sup.child_ref("a"))
    sup.join(5)
    with pytest.raises(ActorDead):
        sup.which_children()


def test_named_supervisor_is_registered(started: list) -> None:
    sup = Supervisor.start([], name="sup-under-test")
    started.append(sup)
    assert whereis("sup-under-test") == sup
    with pytest.raises(Exception, match="already registered"):
        Supervisor.start([], name="sup-under-test")
    sup.stop()
    assert whereis("sup-under-test") is None


# -- SupervisorSpec ------------------------------------------------------------------------
def test_supervisor_spec(journal: Journal) -> None:
    assert SupervisorSpec.coerce([spec("a", journal)]).strategy == "one_for_one"
    sspec = SupervisorSpec([spec("a", journal), spec("b", journal)], strategy="one_for_all",
                           max_restarts=5, max_seconds=2)
    assert SupervisorSpec.coerce(sspec) is sspec
    assert isinstance(sspec.children, tuple)
    with pytest.raises(ChildSpecError, match="list of ChildSpec or a SupervisorSpec"):
        SupervisorSpec.coerce("app:children")
    with pytest.raises(ConfigError):
        SupervisorSpec([], strategy="bogus")  # type: ignore[arg-type]

    sup = sspec.start(clock=FakeClock())
    old = refs(sup)
    crash(old["a"])
    new = refs(sup)
    assert all(new[k] != old[k] for k in old)  # one_for_all came through
    child = sspec.child_spec("tree")
    assert child.type == "supervisor" and child.id == "tree"
    outer = Supervisor.start([child])
    assert outer.child_ref("tree").count_children()["active"] == 2
    outer.stop()
    sup.stop()
