"""OTP's supervisor_SUITE scenarios that runtime.Supervisor used to miss.

Each group names the OTP test cases it ports; the cases are parametrised over
strategies, restart types and shutdown values where OTP's behaviour depends on
them. DynamicSupervisor's scenarios are in test_otp_dynamic.py, gen_server's in
test_otp_genserver.py, the same features inside a sandbox in test_otp_sandbox.py.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from helpers import Recorder, wait_for

import runtime
from runtime import IGNORE, ChildSpec, ExitReason, GenServer, Supervisor
from runtime.errors import ChildSpecError, SupervisorError
from runtime.supervisor import STRATEGIES, gave_up

RESTARTS = ("permanent", "transient", "temporary")


class Worker(GenServer):
    """Records its terminate; a cast "crash" fails it; may block in terminate."""

    def init(self, log: list[str], tag: str, release: threading.Event | None = None) -> Any:
        self.log, self.tag, self.release = log, tag, release
        log.append(f"start {tag}")
        return None

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        return request, state

    def handle_cast(self, request: Any, state: Any) -> Any:
        raise RuntimeError(f"{self.tag} crashed")

    def terminate(self, reason: ExitReason, state: Any) -> None:
        self.log.append(f"terminating {self.tag}")
        if self.release is not None:
            assert self.release.wait(30)
        self.log.append(f"terminated {self.tag}")


def crash(ref: runtime.ActorRef) -> None:
    ref.cast("crash")
    ref.join(10)


@pytest.fixture
def log() -> list[str]:
    return []


# -- ignore (supervisor_SUITE: sup_start_ignore_child, sup_start_ignore_temporary_child,
#    temporary_ignore / permanent ignore in start_child) -------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("restart", RESTARTS)
def test_ignore_at_start_keeps_spec_unless_temporary(strategy: str, restart: str, log: list[str]) -> None:
    specs = [
        ChildSpec("a", start=lambda: Worker.start(log, "a")),
        ChildSpec("ig", start=lambda: IGNORE, restart=restart),  # type: ignore[arg-type]
        ChildSpec("b", start=lambda: Worker.start(log, "b")),
    ]
    sup = Supervisor.start(specs, strategy=strategy)  # type: ignore[arg-type]
    try:
        ids = [c.id for c in sup.which_children()]
        if restart == "temporary":
            assert ids == ["a", "b"]
        else:
            assert ids == ["a", "ig", "b"]
            (ig,) = [c for c in sup.which_children() if c.id == "ig"]
            assert ig.ref is None and not ig.alive and ig.status == "stopped"
            assert sup.count_children() == {"specs": 3, "active": 2, "supervisors": 0, "workers": 3}
            assert sup.restart_child("ig") is IGNORE  # tried again; still nothing to start
        # An ignored child does not stop the others from being supervised.
        crash(sup.child_ref("a"))
        assert sup.child_ref("a").call("ping") == "ping"
    finally:
        sup.stop()


@pytest.mark.parametrize("restart", RESTARTS)
def test_ignore_from_start_child(restart: str) -> None:
    sup = Supervisor.start([])
    try:
        spec = ChildSpec("ig", start=lambda: IGNORE, restart=restart)  # type: ignore[arg-type]
        assert sup.start_child(spec) is IGNORE
        expected = [] if restart == "temporary" else ["ig"]
        assert [c.id for c in sup.which_children()] == expected
    finally:
        sup.stop()


def test_ignore_on_restart_leaves_child_stopped(log: list[str]) -> None:
    calls = {"n": 0}

    def start() -> Any:
        calls["n"] += 1
        return Worker.start(log, "w") if calls["n"] == 1 else IGNORE

    sup = Supervisor.start([ChildSpec("w", start=start)])
    try:
        crash(sup.child_ref("w"))
        wait_for(lambda: calls["n"] == 2)
        (info,) = sup.which_children()
        assert info.ref is None and info.status == "stopped" and sup.is_alive()
    finally:
        sup.stop()


def test_start_returning_none_names_ignore() -> None:
    with pytest.raises(SupervisorError, match="return runtime.IGNORE"):
        Supervisor.start([ChildSpec("n", start=lambda: None)])  # type: ignore[arg-type, return-value]


# -- shutdown values (brutal_kill, infinity; supervisor_SUITE: sup_stop_brutal_kill,
#    sup_stop_infinity, child_shutdown_infinity) ----------------------------------------------
@pytest.mark.parametrize(
    ("shutdown", "terminate_runs", "kind"),
    [
        ("brutal_kill", False, "killed"),
        (5.0, True, "shutdown"),
        ("infinity", True, "shutdown"),
        (math.inf, True, "shutdown"),
    ],
)
@pytest.mark.parametrize("how", ["terminate_child", "stop_supervisor"])
def test_shutdown_values(shutdown: Any, terminate_runs: bool, kind: str, how: str, log: list[str]) -> None:
    sup = Supervisor.start([ChildSpec("w", start=lambda: Worker.start(log, "w"), shutdown=shutdown)])
    ref = sup.child_ref("w")
    if how == "terminate_child":
        sup.terminate_child("w")
        sup.stop()
    else:
        sup.stop()
    assert ref.join(10) is not None
    assert ref.exit_reason.kind == kind
    assert ("terminated w" in log) is terminate_runs


def test_stop_soon_asks_without_waiting_and_a_later_stop_waits(log: list[str]) -> None:
    # Two supervisors asked first stop side by side: neither ask waits for a child's
    # terminate (both are blocked in it until released).
    release = threading.Event()
    sups = [Supervisor.start([ChildSpec("w", start=lambda t=t: Worker.start(log, t, release))])
            for t in ("a", "b")]
    for sup in sups:
        sup.stop_soon(ExitReason.shutdown("asked early"))
    wait_for(lambda: "terminating a" in log and "terminating b" in log)
    assert all(sup.is_alive() for sup in sups) and "terminated a" not in log
    release.set()
    assert [sup.stop().message for sup in sups] == ["asked early", "asked early"]
    assert {"terminated a", "terminated b"} <= set(log)


@pytest.mark.parametrize("shutdown", ["infinity", math.inf, None])
def test_infinity_waits_for_a_nested_supervisor_to_stop_its_children(shutdown: Any, log: list[str]) -> None:
    """OTP: a supervisor child gets infinity; terminate_child returns only once the
    nested supervisor has stopped its own children, however long they take."""
    release = threading.Event()
    inner_kw = {} if shutdown is None else {"shutdown": shutdown}
    inner = Supervisor.child_spec(
        [ChildSpec("slow", start=lambda: Worker.start(log, "slow", release))], id="inner", **inner_kw
    )
    assert inner.shutdown in ("infinity", math.inf)
    outer = Supervisor.start([inner])
    done = threading.Event()
    errors: list[BaseException] = []

    def terminate() -> None:
        try:
            outer.terminate_child("inner")
        except BaseException as exc:  # an OverflowError here was the bug
            errors.append(exc)
        done.set()

    t = threading.Thread(target=terminate)
    t.start()
    try:
        wait_for(lambda: "terminating slow" in log)
        assert not done.is_set(), "terminate_child returned while the nested child was stopping"
        release.set()
        assert done.wait(10)
        assert "terminated slow" in log and not errors
    finally:
        release.set()
        t.join(10)
        outer.stop()


def test_bad_shutdown_values_are_refused() -> None:
    for bad in (-1, "forever", float("nan"), True):
        with pytest.raises(ChildSpecError, match="brutal_kill"):
            ChildSpec("x", start=lambda: IGNORE, shutdown=bad)


# -- get_childspec, restarting (supervisor_SUITE: get_callback_module/child_specs,
#    restart_child_restarting / delete_child_restarting) ----------------------------------------
def test_get_childspec(log: list[str]) -> None:
    spec = ChildSpec("w", start=lambda: Worker.start(log, "w"), restart="transient", shutdown=2.0)
    sup = Supervisor.start([spec])
    try:
        assert sup.get_childspec("w") == spec
        with pytest.raises(SupervisorError, match="no child 'x'.*'w'"):
            sup.get_childspec("x")
    finally:
        sup.stop()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("restart", ["permanent", "transient"])
def test_restart_loop_refuses_restart_and_delete_and_goes_on(strategy: str, restart: str, log: list[str]) -> None:
    works = threading.Event()
    attempts = {"n": 0}

    def start() -> Any:
        attempts["n"] += 1
        if attempts["n"] > 1 and not works.is_set():
            raise ConnectionRefusedError("not yet")
        return Worker.start(log, "flaky")

    # Intensity far away, so the loop keeps retrying while the test looks at it.
    sup = Supervisor.start(
        [ChildSpec("flaky", start=start, restart=restart)],  # type: ignore[arg-type]
        strategy=strategy,  # type: ignore[arg-type]
        max_restarts=10**9,
        clock=lambda: 0.0,
    )
    try:
        crash(sup.child_ref("flaky"))
        (info,) = sup.which_children()
        assert info.restarting and info.status == "restarting" and info.ref is None
        with pytest.raises(SupervisorError, match="restart_child: child 'flaky'.* is restarting"):
            sup.restart_child("flaky")
        with pytest.raises(SupervisorError, match="delete_child: child 'flaky'.* is restarting"):
            sup.delete_child("flaky")
        seen = attempts["n"]
        wait_for(lambda: attempts["n"] > seen + 2)  # the loop is still running
        works.set()
        ref = wait_for(lambda: sup.child_ref("flaky"))
        assert ref.call("ping") == "ping"
        assert sup.which_children()[0].status == "running"
    finally:
        works.set()
        sup.stop()


def test_terminate_child_ends_a_restart_loop(log: list[str]) -> None:
    attempts = {"n": 0}

    def start() -> Any:
        attempts["n"] += 1
        if attempts["n"] > 1:
            raise ConnectionRefusedError("never again")
        return Worker.start(log, "w")

    sup = Supervisor.start([ChildSpec("w", start=start)], max_restarts=10**9, clock=lambda: 0.0)
    try:
        crash(sup.child_ref("w"))
        sup.terminate_child("w")
        seen = attempts["n"]
        assert sup.which_children()[0].status == "stopped"
        sup.delete_child("w")
        assert sup.which_children() == [] and attempts["n"] == seen
    finally:
        sup.stop()


# -- escalation (supervisor_SUITE: restart intensity escalation with a shutdown reason) ----
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("restart", "restarted"), [("permanent", True), ("transient", False), ("temporary", False)]
)
def test_a_supervisor_that_gave_up_is_restarted_only_if_permanent(
    strategy: str, restart: str, restarted: bool, log: list[str]
) -> None:
    inner = Supervisor.child_spec(
        [ChildSpec("w", start=lambda: Worker.start(log, "w"))],
        id="inner",
        restart=restart,  # type: ignore[arg-type]
        max_restarts=0,
    )
    sibling = ChildSpec("sib", start=lambda: Worker.start(log, "sib"))
    outer = Supervisor.start([inner, sibling], strategy=strategy)  # type: ignore[arg-type]
    try:
        first = outer.child_ref("inner")
        with Recorder("supervisor") as rec:
            crash(first.child_ref("w"))
            reason = first.join(10)
            assert gave_up(reason) and reason.kind == "shutdown" and not reason.abnormal
            assert reason.message.startswith("reached_max_restart_intensity")
            rec.wait("supervisor.child_terminated", supervisor=outer.id, child="inner")
        ids = [c.id for c in outer.which_children()]
        now = outer.child_ref("inner") if "inner" in ids else None
        if restarted:
            assert now is not None and now != first and now.child_ref("w").is_alive()
        else:
            assert now is None
            assert ids == (["sib"] if restart == "temporary" else ["inner", "sib"])
        assert outer.is_alive()
    finally:
        outer.stop()
