"""Handlers that never end (blocked, or spinning): the handler deadline (``call_seconds``) and, in ``high``,
the CPU budget (``cpu_seconds``) stop them; both are reported as
ResourceLimitExceeded naming the limit, and the sandbox's supervisor restarts it.

Judged from the host: the caller's exception, the sandbox's pid (a new process),
the monitor's ``limit.exceeded`` audit event, and a call that works afterwards.
"""

from __future__ import annotations

import pytest
from conftest import wait_for

from actors.profiles import get_builtin
from runtime.errors import CallTimeout, ResourceLimitExceeded

pytestmark = pytest.mark.timeout(120)

SLOW = {
    "app.py": """
        from slow import Slow

        def children():
            return [Slow.child_spec(name="slow")]
    """,
    "slow.py": """
        import threading
        import time

        from runtime.genserver import GenServer


        class Slow(GenServer):
            def init(self, arg=None):
                return 0

            def handle_call(self, request, state):
                if request == "block":
                    threading.Event().wait(60)
                elif request == "spin":
                    while True:
                        pass
                elif isinstance(request, float):  # burn this much CPU, then answer
                    end = time.process_time() + request
                    while time.process_time() < end:
                        pass
                return state + 1, state + 1

            def handle_cast(self, request, state):
                while request == "spin":
                    pass
                return state
    """,
}


def test_high_has_a_deadline_and_a_cpu_budget_by_default():
    limits = get_builtin("high").limits
    assert limits.call_seconds == 30 and limits.cpu_seconds == 10


@pytest.mark.parametrize("profile", ["high", "medium", "low"])
def test_a_handler_past_its_deadline_is_killed_and_restarted(world, profile):
    sb = world.sandbox(profile=profile, app=SLOW, limits={"call_seconds": 2})
    pid = sb.pid
    with pytest.raises(ResourceLimitExceeded, match="call_seconds"):
        sb.call("slow", "block", timeout=60)
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    ev = world.wait_event(sb.id, "limit.exceeded")
    assert "call_seconds" in ev["detail"], ev
    assert sb.call("slow", "count", timeout=10) == 1


def test_a_caller_that_gives_up_early_does_not_leave_the_handler_running(world):
    sb = world.sandbox(profile="medium", app=SLOW, limits={"call_seconds": 2})
    pid = sb.pid
    with pytest.raises(CallTimeout):
        sb.call("slow", "block", timeout=0.2)
    # Nobody waits any more; the monitor still enforces the deadline.
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    assert "call_seconds" in world.wait_event(sb.id, "limit.exceeded")["detail"]


def _sampled(world, sb) -> None:
    """Wait for two samples of this process: the monitor has armed its budget."""
    pid, seen = sb.pid, []
    wait_for(lambda: (u := world.rt.resource_usage(sb.id)).get("pid") == pid
             and (seen.append(u["ts"]) or len(set(seen)) >= 2), 20)


def test_high_cpu_budget_stops_a_spin(world):
    # A deadline far away, so that on a loaded machine the CPU budget is what acts.
    sb = world.sandbox(profile="high", app=SLOW, limits={"call_seconds": 100, "cpu_seconds": 1})
    pid = sb.pid
    _sampled(world, sb)
    with pytest.raises(ResourceLimitExceeded, match=r"per-call CPU budget of 1s \(cpu_seconds\)"):
        sb.call("slow", "spin", timeout=100)
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    assert "cpu_seconds" in world.wait_event(sb.id, "limit.exceeded")["detail"]
    assert sb.call("slow", "count", timeout=10) == 1


def test_the_cpu_budget_is_per_call_not_per_life(world):
    """Calls that each stay under the budget, adding up to well over it: never killed."""
    sb = world.sandbox(profile="high", app=SLOW, limits={"call_seconds": 100, "cpu_seconds": 1})
    pid = sb.pid
    _sampled(world, sb)
    for n in range(1, 6):  # 5 x 0.25 s: with the boot, well past 1 CPU-second of life
        assert sb.call("slow", 0.25, timeout=60) == n
    assert sb.pid == pid and not world.events(sb.id, "limit.")


def test_a_spin_no_call_waits_for_is_charged_too(world):
    """A cast's handler has no caller and no deadline: a busy stretch is charged."""
    sb = world.sandbox(profile="high", app=SLOW, limits={"cpu_seconds": 1})
    pid = sb.pid
    _sampled(world, sb)
    sb.cast("slow", "spin")
    ev = world.wait_event(sb.id, "limit.exceeded", 20)
    assert "cpu_seconds" in ev["detail"], ev
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    assert sb.call("slow", "count", timeout=10) == 1


def test_an_awaited_call_has_the_same_deadline(world):
    """AsyncSandbox.call: a handler past call_seconds is stopped, and the awaiting
    caller gets ResourceLimitExceeded, as with Sandbox.call."""
    import asyncio

    from sandbox.aio import AsyncSandbox

    sb = world.sandbox(profile="medium", app=SLOW, limits={"call_seconds": 2})
    pid = sb.pid

    async def call(request, timeout):
        return await AsyncSandbox(sb).call("slow", request, timeout=timeout)

    with pytest.raises(ResourceLimitExceeded, match="call_seconds"):
        asyncio.run(call("block", 60))
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    assert "call_seconds" in world.wait_event(sb.id, "limit.exceeded")["detail"]
    assert asyncio.run(call("count", 10)) == 1


def test_an_awaiting_caller_that_gives_up_early_leaves_the_deadline_watched(world):
    import asyncio

    from sandbox.aio import AsyncSandbox

    sb = world.sandbox(profile="medium", app=SLOW, limits={"call_seconds": 2})
    pid = sb.pid
    with pytest.raises(CallTimeout):
        asyncio.run(AsyncSandbox(sb).call("slow", "block", timeout=0.2))
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    assert "call_seconds" in world.wait_event(sb.id, "limit.exceeded")["detail"]


def test_a_cancelled_await_leaves_the_deadline_watched(world):
    import asyncio

    from sandbox.aio import AsyncSandbox

    sb = world.sandbox(profile="medium", app=SLOW, limits={"call_seconds": 2})
    pid = sb.pid
    asb = AsyncSandbox(sb)

    async def main() -> None:
        assert await asb.call("slow", "count") == 1  # the handle knows its process now
        task = asyncio.ensure_future(asb.call("slow", "block", timeout=60))
        done, _ = await asyncio.wait([task], timeout=0.2)  # the call is sent, unanswered
        assert not done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Not forgotten: the monitor watches it, and needs its answer if one comes.
        assert len(sb._slot.current()._conn.pending) == 1

    asyncio.run(main())
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    assert "call_seconds" in world.wait_event(sb.id, "limit.exceeded")["detail"]


def test_a_call_over_the_control_endpoint_has_the_same_deadline(tmp_path):
    """The control server awaits calls through AsyncSandbox: the deadline holds there too."""
    import textwrap

    import sandbox

    app = tmp_path / "slow-app"
    app.mkdir()
    for name, src in SLOW.items():
        (app / name).write_text(textwrap.dedent(src))
    sock = tmp_path / "ctl.sock"
    with sandbox.start(listen=f"unix:{sock}", monitor_interval=0.2) as rt:
        sb = rt.create_sandbox("ep", app, profile="medium", limits={"call_seconds": 2})
        pid = sb.pid
        with sandbox.connect(f"unix:{sock}") as remote:
            with pytest.raises(ResourceLimitExceeded, match="call_seconds"):
                remote.sandbox("ep").call("slow", "block", timeout=60)
        wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
        assert sb.call("slow", "count", timeout=10) == 1


def test_an_awaited_call_names_the_cpu_budget_that_stopped_it(world):
    import asyncio

    from sandbox.aio import AsyncSandbox

    sb = world.sandbox(profile="high", app=SLOW, limits={"call_seconds": 100, "cpu_seconds": 1})
    pid = sb.pid
    _sampled(world, sb)
    with pytest.raises(ResourceLimitExceeded, match=r"per-call CPU budget of 1s \(cpu_seconds\)"):
        asyncio.run(AsyncSandbox(sb).call("slow", "spin", timeout=100))
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
