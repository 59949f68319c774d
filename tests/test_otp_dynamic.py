"""DynamicSupervisor (OTP simple_one_for_one / Elixir DynamicSupervisor), scenario by scenario."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import Recorder, wait_for

from runtime import (
    IGNORE,
    ActorRef,
    ChildSpec,
    DynamicSupervisor,
    ExitReason,
    GenServer,
    Supervisor,
    gave_up,
)
from runtime.errors import ChildSpecError, ConfigError, SupervisorError
from runtime.supervisor import ChildStartFailed

RESTARTS = ("permanent", "transient", "temporary")


class Conn(GenServer):
    """Holds its start arguments; a cast "crash" fails it, "quit" ends it normally."""

    def init(self, host: str, port: int, *, tls: bool = False, gate: threading.Event | None = None) -> Any:
        self.gate = gate
        return (host, port, tls)

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        return state, state

    def handle_cast(self, request: Any, state: Any) -> Any:
        if request == "quit":
            self.ref.stop(ExitReason.normal())
            return state
        raise RuntimeError("connection lost")

    def terminate(self, reason: ExitReason, state: Any) -> None:
        if self.gate is not None:
            assert self.gate.wait(30)


def test_start_child_appends_arguments_and_restart_keeps_them() -> None:
    sup = DynamicSupervisor.start(Conn.child_spec("db.local"))
    try:
        a = sup.start_child(5432, tls=True)
        b = sup.start_child(5433)
        assert isinstance(a, ActorRef) and isinstance(b, ActorRef)
        assert a.call("get") == ("db.local", 5432, True)
        assert b.call("get") == ("db.local", 5433, False)
        a.cast("crash")
        a.join(10)
        new = wait_for(lambda: [c.ref for c in sup.which_children() if c.ref not in (None, b)])
        assert new[0].call("get") == ("db.local", 5432, True)
        assert [c.id for c in sup.which_children()] == ["Conn#1", "Conn#2"]
    finally:
        sup.stop()


@pytest.mark.parametrize(
    ("restart", "reason", "restarted"),
    [
        ("permanent", "crash", True),
        ("permanent", "quit", True),
        ("transient", "crash", True),
        ("transient", "quit", False),
        ("temporary", "crash", False),
        ("temporary", "quit", False),
    ],
)
def test_restart_types(restart: str, reason: str, restarted: bool) -> None:
    sup = DynamicSupervisor.start(Conn.child_spec("h", restart=restart))  # type: ignore[arg-type]
    try:
        with Recorder("supervisor") as rec:
            ref = sup.start_child(1)
            ref.cast(reason)
            ref.join(10)
            rec.wait("supervisor.child_terminated", supervisor=sup.id)
            counts = sup.count_children()
        assert counts["active"] == (1 if restarted else 0)
        # As in OTP, a dynamic child that is not restarted is forgotten.
        assert counts["specs"] == counts["active"]
    finally:
        sup.stop()


def test_terminate_child_by_ref_and_unknown_ref() -> None:
    sup = DynamicSupervisor.start(Conn.child_spec("h"))
    try:
        ref = sup.start_child(1)
        sup.terminate_child(ref)
        assert not ref.is_alive() and sup.which_children() == []
        with pytest.raises(SupervisorError, match="not a running child"):
            sup.terminate_child(ref)
        with pytest.raises(SupervisorError, match="not available on dynamic supervisor"):
            sup.restart_child("Conn#1")
    finally:
        sup.stop()


def test_max_children() -> None:
    sup = DynamicSupervisor.start(Conn.child_spec("h", restart="temporary"), max_children=2)
    try:
        sup.start_child(1)
        second = sup.start_child(2)
        with pytest.raises(SupervisorError, match="max_children=2"):
            sup.start_child(3)
        sup.terminate_child(second)
        assert sup.start_child(3).call("get") == ("h", 3, False)
    finally:
        sup.stop()


@pytest.mark.parametrize("restart", RESTARTS)
def test_ignore_and_failing_start(restart: str) -> None:
    results = iter([IGNORE])

    def start(*args: Any) -> Any:
        value = next(results, None)
        if value is None:
            raise OSError("refused")
        return value

    sup = DynamicSupervisor.start(ChildSpec("c", start=start, restart=restart))  # type: ignore[arg-type]
    try:
        assert sup.start_child(1) is IGNORE
        assert sup.which_children() == []  # nothing kept of an ignored dynamic child
        with pytest.raises(ChildStartFailed, match="OSError: refused"):
            sup.start_child(2)
        assert sup.count_children()["specs"] == 0
    finally:
        sup.stop()


def test_stop_stops_children_concurrently() -> None:
    """Each child's terminate waits on one gate: stopped one after the other, the
    first would hold the rest; stopped at once, all are in terminate together."""
    gate = threading.Event()
    sup = DynamicSupervisor.start(Conn.child_spec("h", shutdown="infinity", gate=gate))
    refs = [sup.start_child(i) for i in range(5)]
    in_terminate: list[str] = []
    original = Conn.terminate

    done = threading.Thread(target=sup.stop)
    try:
        Conn.terminate = lambda self, reason, state: (  # type: ignore[method-assign]
            in_terminate.append(self.ref.id), original(self, reason, state)
        )
        done.start()
        wait_for(lambda: len(in_terminate) == 5)
        gate.set()
        done.join(10)
        assert all(r.exit_reason.kind == "shutdown" for r in refs)
    finally:
        Conn.terminate = original  # type: ignore[method-assign]
        gate.set()
        done.join(10)


def test_intensity_and_escalation_under_a_permanent_parent() -> None:
    inner = DynamicSupervisor.child_spec(Conn.child_spec("h"), id="pool", max_restarts=1)
    outer = Supervisor.start([inner])
    try:
        pool = outer.child_ref("pool")
        ref = pool.start_child(1)
        crash = lambda r: (r.cast("crash"), r.join(10))  # noqa: E731
        crash(ref)
        again = wait_for(lambda: pool.which_children()[0].ref)
        assert again != ref and again.call("get") == ("h", 1, False)
        crash(again)  # the second restart in the window: max_restarts=1 is exceeded
        assert gave_up(pool.join(10))
        fresh = wait_for(lambda: outer.child_ref("pool"))
        assert fresh != pool and fresh.count_children()["specs"] == 0  # children are not kept
    finally:
        outer.stop()


def test_bad_options() -> None:
    with pytest.raises(ChildSpecError, match="template"):
        DynamicSupervisor.start([Conn.child_spec("h")])  # type: ignore[arg-type]
    with pytest.raises(ChildSpecError, match="every child would take the same one"):
        DynamicSupervisor.start(Conn.child_spec("h", name="conn"))
    with pytest.raises(ConfigError, match="max_children"):
        DynamicSupervisor.start(Conn.child_spec("h"), max_children=-1)
    with pytest.raises(ConfigError, match="max_restarts"):
        DynamicSupervisor.start(Conn.child_spec("h"), max_restarts=-1)


@pytest.mark.timeout(120)
def test_many_temporary_children_start_and_stop() -> None:
    sup = DynamicSupervisor.start(Conn.child_spec("h", restart="temporary"))
    refs = [sup.start_child(i) for i in range(500)]
    assert sup.count_children()["active"] == 500
    for ref in refs[:250]:
        sup.terminate_child(ref)
    assert sup.count_children()["active"] == 250
    sup.stop()
    assert not any(r.is_alive() for r in refs)
