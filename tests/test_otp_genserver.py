"""GenServer as OTP users know it: timers, handle_continue, deferred replies, calls by name.

Timers run on a ManualClock (runtime.use_clock): time moves only when the test says.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for

from runtime import (
    NOREPLY,
    ChildSpec,
    Continue,
    ExitReason,
    GenServer,
    ManualClock,
    Supervisor,
    call,
    cancel_timer,
    cast,
    monitor,
    reply,
    send_after,
    use_clock,
)
from runtime.errors import ActorDead, ActorFailed, ConfigError, NoSuchActor
from runtime.timers import TimerRef, read_timer


@pytest.fixture
def clock() -> Iterator[ManualClock]:
    with use_clock(ManualClock(100.0)) as c:
        yield c  # type: ignore[misc]


class Ticker(GenServer):
    """Collects what reaches handle_info; calls manage its own timers."""

    def init(self) -> dict[str, Any]:
        return {"got": [], "timer": None}

    def handle_call(self, request: Any, state: dict[str, Any]) -> tuple[Any, Any]:
        op, *args = request
        if op == "after":
            state["timer"] = self.send_after(args[0], args[1])
            return state["timer"], state
        if op == "cancel":
            return self.cancel_timer(state["timer"]), state
        return list(state["got"]), state

    def handle_info(self, message: Any, state: dict[str, Any]) -> dict[str, Any]:
        state["got"].append(message)
        return state


# -- timers ----------------------------------------------------------------------------------
def test_send_after_delivers_to_handle_info_when_due(clock: ManualClock) -> None:
    ref = Ticker.start()
    try:
        ref.call(("after", "tick", 5.0))
        send_after(ref, "early", 1.0)
        clock.advance(4.999)
        assert ref.call(("got",)) == ["early"]
        clock.advance(0.001)
        assert ref.call(("got",)) == ["early", "tick"]
    finally:
        ref.stop()


def test_cancel_timer_returns_time_left_then_none(clock: ManualClock) -> None:
    ref = Ticker.start()
    try:
        timer = ref.call(("after", "never", 10.0))
        clock.advance(4.0)
        assert read_timer(timer) == 6.0
        assert ref.call(("cancel",)) == 6.0
        assert cancel_timer(timer) is None  # already cancelled
        clock.advance(100.0)
        assert ref.call(("got",)) == []
        fired = send_after(ref, "x", 1.0)
        clock.advance(1.0)
        assert cancel_timer(fired) is None  # already fired (OTP: false)
    finally:
        ref.stop()


def test_timer_to_a_name_is_resolved_when_it_fires(clock: ManualClock) -> None:
    sup = Supervisor.start([ChildSpec("t", start=lambda: Ticker.start(name="ticker-otp"))])
    try:
        first = sup.child_ref("t")
        send_after("ticker-otp", "for whoever holds the name", 1.0)
        first.kill(ExitReason("exception", "replaced"))
        second = wait_for(lambda: sup.child_ref("t") not in (None, first) and sup.child_ref("t"))
        clock.advance(1.0)
        assert second.call(("got",)) == ["for whoever holds the name"]
    finally:
        sup.stop()


def test_a_restarted_server_does_not_inherit_timers(clock: ManualClock) -> None:
    sup = Supervisor.start([ChildSpec("t", start=Ticker.start)])
    try:
        first = sup.child_ref("t")
        first.call(("after", "for the first server", 1.0))
        first.kill(ExitReason("exception", "crash"))
        second = wait_for(lambda: sup.child_ref("t") not in (None, first) and sup.child_ref("t"))
        clock.advance(1.0)
        assert second.call(("got",)) == []
    finally:
        sup.stop()


def test_timer_for_an_ended_actor_is_dropped(clock: ManualClock) -> None:
    ref = Ticker.start()
    send_after(ref, "late", 1.0)
    ref.stop()
    clock.advance(2.0)  # must not raise


def test_timer_on_the_real_clock() -> None:
    ref = Ticker.start()
    try:
        send_after(ref, "soon", 0.01)
        wait_for(lambda: ref.call(("got",)) == ["soon"], timeout=10)
    finally:
        ref.stop()


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "1s", None])
def test_send_after_refuses_bad_delays(bad: Any) -> None:
    ref = Ticker.start()
    try:
        with pytest.raises(ConfigError, match="seconds"):
            send_after(ref, "x", bad)
    finally:
        ref.stop()


# -- handle_continue --------------------------------------------------------------------------
class Loader(GenServer):
    """Every entry point can return Continue; handle_continue logs and may chain."""

    def init(self, mode: str) -> Any:
        state = {"log": ["init"]}
        return Continue(state, "from init") if mode == "init" else state

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        if request == "log":
            return list(state["log"]), state
        state["log"].append("call")
        return "ok", Continue(state, "from call")

    def handle_cast(self, request: Any, state: Any) -> Any:
        state["log"].append("cast")
        return Continue(state, "from cast")

    def handle_info(self, message: Any, state: Any) -> Any:
        state["log"].append("info")
        return Continue(state, "from info")

    def handle_continue(self, arg: Any, state: Any) -> Any:
        if arg == "boom":
            raise ValueError("continue failed")
        state["log"].append(arg)
        if arg == "from cast":
            return Continue(state, "chained")
        return state


@pytest.mark.parametrize(
    ("mode", "send", "expected"),
    [
        ("init", None, ["init", "from init"]),
        ("plain", lambda r: r.call("go"), ["init", "call", "from call"]),
        ("plain", lambda r: r.cast("go"), ["init", "cast", "from cast", "chained"]),
        ("plain", lambda r: r.tell("go"), ["init", "info", "from info"]),
    ],
)
def test_continue_runs_before_the_next_message(mode: str, send: Any, expected: list[str]) -> None:
    ref = Loader.start(mode)
    try:
        if send is not None:
            send(ref)
        assert ref.call("log") == expected
    finally:
        ref.stop()


def test_batched_casts_run_each_continue_before_the_next_cast() -> None:
    ref = Loader.start("plain")
    try:
        ref.cast_many(["a", "b"])
        assert ref.call("log") == ["init"] + ["cast", "from cast", "chained"] * 2
    finally:
        ref.stop()


def test_a_failing_batched_cast_stops_the_batch_there() -> None:
    class Tally(GenServer):
        def init(self) -> tuple[Any, ...]:
            return ()

        def handle_cast(self, request: Any, state: tuple[Any, ...]) -> tuple[Any, ...]:
            if request == "bad":
                raise ValueError("bad cast")
            return (*state, request)  # a new state each time: terminate sees the last one

        def terminate(self, reason: ExitReason, state: tuple[Any, ...]) -> None:
            seen.append((reason.kind, state))

    seen: list[Any] = []
    ref = Tally.start()
    ref.cast_many([1, 2, "bad", 3])
    reason = ref.join(10)
    assert reason is not None and "bad cast" in reason.message
    assert seen == [("exception", (1, 2))]


def test_a_failing_continue_fails_the_server_not_the_caller() -> None:
    class Bad(GenServer):
        def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
            return "answered", Continue(state, "boom")

        def handle_continue(self, arg: Any, state: Any) -> Any:
            raise ValueError("continue failed")

    ref = Bad.start()
    downs: list[Any] = []
    monitor(ref, downs.append)
    assert ref.call("x") == "answered"  # the reply goes out before the continue runs
    reason = ref.join(10)
    assert reason is not None and reason.kind == "exception" and "continue failed" in reason.message


def test_continue_without_handle_continue_names_it() -> None:
    class Forgot(GenServer):
        def handle_cast(self, request: Any, state: Any) -> Any:
            return Continue(state, "x")

    ref = Forgot.start()
    ref.cast("go")
    reason = ref.join(10)
    assert reason is not None and "has no handle_continue" in reason.message


# -- deferred replies ---------------------------------------------------------------------------
class Queue(GenServer):
    """``pop`` waits (noreply) until a ``push`` arrives; ``push`` answers the oldest waiter."""

    def init(self) -> dict[str, Any]:
        return {"waiting": [], "items": []}

    def handle_call(self, request: Any, state: dict[str, Any]) -> tuple[Any, Any]:
        if request == "pop":
            if state["items"]:
                return state["items"].pop(0), state
            state["waiting"].append(self.caller)
            return NOREPLY, state
        if request == "waiters":
            return list(state["waiting"]), state
        raise KeyError(request)

    def handle_cast(self, request: Any, state: dict[str, Any]) -> dict[str, Any]:
        if state["waiting"]:
            reply(state["waiting"].pop(0), request)
        else:
            state["items"].append(request)
        return state


def _call_in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.mark.parametrize("answer_from", ["handler", "thread"])
def test_deferred_reply(answer_from: str) -> None:
    ref = Queue.start()
    try:
        t, out = _call_in_thread(lambda: ref.call("pop", timeout=10))
        waiters = wait_for(lambda: ref.call("waiters"))
        assert out == []  # still waiting: the handler returned NOREPLY
        if answer_from == "handler":
            ref.cast("item")
        else:
            reply(waiters[0], "item")
        t.join(10)
        assert out == ["item"]
    finally:
        ref.stop()


def test_deferred_caller_hears_when_the_server_ends() -> None:
    ref = Queue.start()
    t, out = _call_in_thread(lambda: ref.call("pop", timeout=10))
    wait_for(lambda: ref.call("waiters"))
    ref.stop()
    t.join(10)
    assert isinstance(out[0], ActorDead)


def test_only_the_first_reply_counts() -> None:
    ref = Queue.start()
    try:
        t, out = _call_in_thread(lambda: ref.call("pop", timeout=10))
        (waiter,) = wait_for(lambda: ref.call("waiters"))
        reply(waiter, 1)
        reply(waiter, 2)
        t.join(10)
        assert out == [1]
        with pytest.raises(TypeError, match="From"):
            reply("not a from", 1)  # type: ignore[arg-type]
    finally:
        ref.stop()


def test_caller_outside_handle_call_is_refused() -> None:
    class Peek(GenServer):
        def handle_cast(self, request: Any, state: Any) -> Any:
            try:
                self.caller  # noqa: B018
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
            return state, state

    ref = Peek.start()
    try:
        ref.cast("x")
        assert "only set while handle_call runs" in ref.call("get")
    finally:
        ref.stop()


# -- call/cast by name --------------------------------------------------------------------------
class Named(GenServer):
    def init(self, gate: threading.Event | None = None) -> Any:
        if gate is not None:
            assert gate.wait(30)  # a slow restart: the name is missing meanwhile
        return 0

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        return state, state

    def handle_cast(self, request: Any, state: Any) -> Any:
        return state + request


def test_call_and_cast_by_name_wait_through_a_restart() -> None:
    gate = threading.Event()
    gate.set()
    sup = Supervisor.start([ChildSpec("n", start=lambda: Named.start(gate, name="named-otp"))])
    try:
        cast("named-otp", 2)
        assert call("named-otp", "get") == 2
        gate.clear()  # the restart blocks in init until the test lets it go
        sup.child_ref("n").kill(ExitReason("exception", "crash"))
        t, out = _call_in_thread(lambda: call("named-otp", "get", timeout=10))
        gate.set()
        t.join(10)
        assert out == [0]  # the restarted server answered
    finally:
        gate.set()
        sup.stop()


def test_call_by_name_raises_no_such_actor() -> None:
    with pytest.raises(NoSuchActor, match="never-registered-otp"):
        call("never-registered-otp", "x", timeout=5)
    ref = Named.start(name="gone-otp")
    ref.stop()
    with pytest.raises(NoSuchActor, match="gone-otp"):
        call("gone-otp", "x", timeout=0.05)  # known once, not back within the timeout
    with pytest.raises(NoSuchActor):
        cast("gone-otp", 1, timeout=0.05)


def test_call_by_ref_fails_fast_when_the_actor_failed() -> None:
    class Crashy(GenServer):
        def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
            raise ValueError("no")

    ref = Crashy.start()
    with pytest.raises(ActorFailed, match="ValueError: no"):
        call(ref, "x")
    with pytest.raises(ActorDead):
        call(ref, "x")


class Dying(GenServer):
    """``crash`` fails it; its terminate waits on a gate, so it stays registered
    (alive, but refusing calls) while the test sends."""

    handled: list[str] = []

    def init(self, entered: threading.Event, gate: threading.Event) -> int:
        self.entered, self.gate = entered, gate
        return 0

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        Dying.handled.append(request)
        if request == "boom":
            raise RuntimeError("boom")
        return state, state

    def handle_cast(self, request: Any, state: Any) -> Any:
        raise RuntimeError("crash")

    def terminate(self, reason: ExitReason, state: Any) -> None:
        self.entered.set()
        self.gate.wait(30)


def test_call_refused_by_an_ending_server_goes_to_its_successor() -> None:
    entered, gate = threading.Event(), threading.Event()
    gate.set()
    Dying.handled = []
    sup = Supervisor.start([ChildSpec("d", start=lambda: Dying.start(entered, gate, name="dying-otp"))])
    try:
        gate.clear()
        sup.child_ref("d").cast("crash")
        assert entered.wait(10)  # ending, still registered: a call now is refused
        t, out = _call_in_thread(lambda: call("dying-otp", "get", timeout=10))
        gate.set()
        t.join(10)
        assert out == [0] and Dying.handled == ["get"]  # answered once, by the successor
        # A call the server took and failed on is never sent again.
        with pytest.raises(ActorFailed, match="boom"):
            call("dying-otp", "boom", timeout=10)
        assert Dying.handled == ["get", "boom"]
    finally:
        gate.set()
        sup.stop()


@pytest.mark.parametrize("timeout", [math.inf, None, 5.0])
def test_infinite_timeouts_never_overflow(timeout: Any) -> None:
    ref = Named.start(name="inf-otp")
    try:
        assert call("inf-otp", "get", timeout=timeout) == 0
        assert ref.call("get", timeout=timeout) == 0
        cast("inf-otp", 1, timeout=math.inf if timeout is None else timeout)
        sup = Supervisor.start([])
        assert sup.which_children(timeout=timeout) == []
        assert sup.stop(timeout=timeout).kind == "shutdown"
    finally:
        assert ref.stop(timeout=timeout).kind == "shutdown"
        assert ref.join(timeout) is not None


def test_call_waits_without_limit_for_a_name_to_come_back() -> None:
    Named.start(name="back-otp").stop()  # known, now missing
    t, out = _call_in_thread(lambda: call("back-otp", "get", timeout=math.inf))
    ref = Named.start(name="back-otp")
    try:
        t.join(10)
        assert out == [0]
    finally:
        ref.stop()


def _timer_thread_running() -> bool:
    return any(t.name == "runtime-timers" for t in threading.enumerate())


def test_timers_of_an_ended_actor_are_cancelled_and_the_thread_ends() -> None:
    """As OTP cancels a timer whose destination process is gone; with no timer
    pending, the scheduler thread ends (nothing is left running after a test)."""
    ref = Ticker.start()
    timer = send_after(ref, "in an hour", 3600.0)
    assert _timer_thread_running() and read_timer(timer) is not None
    ref.stop()
    assert read_timer(timer) is None and cancel_timer(timer) is None
    wait_for(lambda: not _timer_thread_running(), timeout=10)

    ref = Ticker.start()
    try:
        send_after(ref, "soon", 0.01)
        wait_for(lambda: ref.call(("got",)) == ["soon"], timeout=10)
        wait_for(lambda: not _timer_thread_running(), timeout=10)  # all fired
    finally:
        ref.stop()


def test_a_timer_ref_from_another_process_names_no_timer(clock: ManualClock) -> None:
    ref = Ticker.start()
    try:
        mine = ref.call(("after", "x", 5.0))
        foreign = TimerRef(mine.id, pid=mine.pid + 1)  # as restored after a restart
        assert cancel_timer(foreign) is None and read_timer(foreign) is None
        assert read_timer(mine) == 5.0
    finally:
        ref.stop()
