"""The OTP additions inside a real sandbox (an app's own tree in its child process),
and across a hot reload: a pending timer and a deferred caller survive it.

The app runs its timers on a ManualClock that a ``clock`` server advances on request,
so nothing here waits for time to pass.
"""

from __future__ import annotations

import textwrap
import threading
from typing import Any

import pytest
from helpers import write

from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(120)

APP = '''
import runtime
from runtime import ChildSpec, DynamicSupervisor, GenServer, IGNORE, Supervisor

import clockmod
from ticker import Ticker


class Clock(GenServer):
    def handle_call(self, request, state):
        clockmod.CLOCK.advance(request)
        return clockmod.CLOCK(), state


class Conn(GenServer):
    terminated = []

    def init(self, label):
        return label

    def handle_call(self, request, state):
        return state, state

    def terminate(self, reason, state):
        Conn.terminated.append(state)


class Front(GenServer):
    """Uses the pool and the ticker by name, as an app's own code would."""

    def handle_call(self, request, state):
        op, arg = request
        pool = runtime.whereis("pool")
        if op == "open":
            ref = pool.start_child(arg)
            return ("ignored" if ref is IGNORE else runtime.call(ref, "label")), state
        if op == "count":
            return pool.count_children(), state
        if op == "ticker":
            return runtime.call("ticker", arg), state
        inner = runtime.whereis("inner")
        if op == "shutdowns":
            return [inner.get_childspec(i).shutdown for i in ("tidy", "abrupt")], state
        if op == "stop":  # terminate_child, then how the child ended
            ref = inner.child_ref(arg)
            inner.terminate_child(arg)
            return [ref.exit_reason.kind, Conn.terminated], state
        if op == "status":
            return [(c.id, c.status) for c in inner.which_children()], state
        raise KeyError(op)


def conn_start(label):
    return IGNORE if label == "skip" else Conn.start(label)


def children():
    runtime.timers.set_clock(clockmod.CLOCK)
    return [
        Clock.child_spec(name="clock"),
        Ticker.child_spec(name="ticker"),
        DynamicSupervisor.child_spec(
            ChildSpec("conn", start=conn_start, restart="temporary"), id="pool", name="pool"
        ),
        ChildSpec("nothing", start=lambda: IGNORE),
        Supervisor.child_spec(
            [
                Conn.child_spec("tidy", id="tidy", shutdown="infinity"),
                Conn.child_spec("abrupt", id="abrupt", shutdown="brutal_kill"),
                ChildSpec("off", start=lambda: IGNORE),
            ],
            id="inner",
            name="inner",
        ),
        Front.child_spec(name="front"),
    ]
'''

CLOCK = '''
from runtime import ManualClock

CLOCK = ManualClock()
'''

TICKER = '''
from runtime import NOREPLY, Continue, GenServer, reply


class Ticker(GenServer):
    vsn = VSN

    def init(self):
        return Continue({"warm": False, "waiters": [], "timer": None, "ticks": 0}, "warm up")

    def handle_continue(self, arg, state):
        state["warm"] = True
        return state

    def handle_call(self, request, state):
        if request == "arm":
            state["timer"] = self.send_after("tick", 10.0)
            return "armed", state
        if request == "wait_tick":
            state["waiters"].append(self.caller)
            return NOREPLY, state
        if request == "status":
            status = {"warm": state["warm"], "waiters": len(state["waiters"]), "vsn": self.vsn}
            return {**status, "ticks": state["ticks"]}, state
        raise KeyError(request)

    def handle_info(self, message, state):
        for waiter in state["waiters"]:
            reply(waiter, f"{message} seen by v{self.vsn}")
        state["waiters"] = []
        state["ticks"] += 1
        return state

    def code_change(self, old_vsn, state, extra):
        return state
'''


def test_otp_features_inside_a_sandbox_and_across_a_hot_reload(sandbox_factory: Any) -> None:
    sb = sandbox_factory({
        "app.py": textwrap.dedent(APP),
        "clockmod.py": textwrap.dedent(CLOCK),
        "ticker.py": textwrap.dedent(TICKER).replace("VSN", "1"),
    })
    # handle_continue from init ran before the first call; call() by name works inside.
    assert sb.call("front", ("ticker", "status")) == {"warm": True, "waiters": 0, "vsn": 1, "ticks": 0}

    # DynamicSupervisor and IGNORE in the app's own tree.
    assert sb.call("front", ("open", "a")) == "a"
    assert sb.call("front", ("open", "skip")) == "ignored"
    assert sb.call("front", ("count", None))["active"] == 1

    # Shutdown values, get_childspec and child status in the app's own tree.
    assert sb.call("front", ("shutdowns", None)) == ["infinity", "brutal_kill"]
    assert sb.call("front", ("status", None)) == [
        ("tidy", "running"), ("abrupt", "running"), ("off", "stopped")]
    assert sb.call("front", ("stop", "abrupt")) == ["killed", []]  # no terminate
    assert sb.call("front", ("stop", "tidy")) == ["shutdown", ["tidy"]]

    # A timer is pending and a caller is waiting for a deferred reply...
    assert sb.call("ticker", "arm") == "armed"
    answers: list[Any] = []
    waiter = threading.Thread(target=lambda: answers.append(sb.call("ticker", "wait_tick", timeout=60)))
    waiter.start()
    try:
        wait_for(lambda: sb.call("ticker", "status")["waiters"] == 1, timeout=30)

        # ...when the ticker's code is swapped.
        write(sb, "ticker.py", TICKER.replace("VSN", "2"))
        report = sb.hot_reload()
        assert report.ok and report.versions == {"ticker": 2}
        assert sb.call("ticker", "status") == {"warm": True, "waiters": 1, "vsn": 2, "ticks": 0}
        assert answers == []

        # The timer fires on the app's clock; the new code answers the kept caller.
        sb.call("clock", 10.0)
        waiter.join(30)
        assert answers == ["tick seen by v2"]
    finally:
        if waiter.is_alive():
            sb.call("clock", 10.0)
        waiter.join(30)


def test_a_restart_keeping_state_does_not_carry_callers_or_timers(sandbox_factory: Any) -> None:
    """restart(preserve_state=True) carries states that pickle into a new process: a
    kept caller cannot be (its process is gone), so that server starts fresh, and
    timers belong to the old process."""
    sb = sandbox_factory({
        "app.py": textwrap.dedent(APP),
        "clockmod.py": textwrap.dedent(CLOCK),
        "ticker.py": textwrap.dedent(TICKER).replace("VSN", "1"),
    })
    assert sb.call("ticker", "arm") == "armed"
    outcome: list[Any] = []

    def wait_tick() -> None:
        try:
            outcome.append(sb.call("ticker", "wait_tick", timeout=60))
        except Exception as exc:  # the process it waited on is replaced
            outcome.append(exc)

    waiter = threading.Thread(target=wait_tick)
    waiter.start()
    try:
        wait_for(lambda: sb.call("ticker", "status")["waiters"] == 1, timeout=30)
        sb.restart(preserve_state=True)
        waiter.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], Exception)
        assert sb.call("ticker", "status") == {"warm": True, "waiters": 0, "vsn": 1, "ticks": 0}
        sb.call("clock", 10.0)  # no timer survived the old process
        assert sb.call("ticker", "status")["ticks"] == 0
    finally:
        waiter.join(30)
