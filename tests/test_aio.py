"""asyncio: a runtime in-process (start_async) and behind an endpoint (connect_async)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import sandbox
from sandbox.aio import AsyncSandbox
from runtime.errors import ActorDead, CallTimeout, SandboxNotFound

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
COUNTER = str(ROOT / "examples" / "counter")

GATE = '''
import threading

from runtime.genserver import GenServer


class Gate(GenServer):
    def init(self):
        return 0

    def handle_call(self, request, state):
        if request == "block":  # answers late: long after its caller gave up
            threading.Event().wait(2.0)
        return request, state


def children():
    return [Gate.child_spec(name="gate")]
'''


@pytest.fixture
def gate_app(tmp_path: Path) -> str:
    app = tmp_path / "gate"
    app.mkdir()
    (app / "app.py").write_text(GATE)
    return str(app)


def test_a_thousand_concurrent_awaits():
    async def main() -> list[int]:
        async with sandbox.start_async() as rt:
            sb = await rt.create_sandbox("aio-1k", COUNTER)
            threads = threading.active_count()
            replies = await asyncio.gather(*(sb.call("counter", "incr") for _ in range(1000)))
            # no thread per call (that would add 1,000); a few may come and go with
            # the runtime itself
            assert threading.active_count() <= threads + 10
            return replies

    assert sorted(asyncio.run(main())) == list(range(1, 1001))


def test_a_thousand_concurrent_awaits_over_the_endpoint(tmp_path):
    path = f"unix:{tmp_path / 's.sock'}"

    async def main() -> list[int]:
        async with await sandbox.connect_async(path) as remote:
            sb = await remote.create_sandbox("aio-r1k", COUNTER)
            return await asyncio.gather(*(sb.call("counter", "incr") for _ in range(1000)))

    with sandbox.start(listen=path):
        assert sorted(asyncio.run(main())) == list(range(1, 1001))


def _pending(sb: sandbox.AsyncSandbox) -> dict:
    return sb.sync._slot.current()._conn.pending  # the channel's table of awaited replies


def test_cancelled_and_timed_out_awaits_leave_nothing_behind(gate_app):
    async def main() -> None:
        async with sandbox.start_async() as rt:
            sb = await rt.create_sandbox("aio-gate", gate_app, profile="low")
            assert await sb.call("gate", "ping") == "ping"
            with pytest.raises(CallTimeout):
                await sb.call("gate", "block", timeout=0.2)
            assert _pending(sb) == {}
            task = asyncio.ensure_future(sb.call("gate", "block", timeout=30))
            done, _ = await asyncio.wait([task], timeout=0.2)
            assert not done and len(_pending(sb)) == 1
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled() and _pending(sb) == {}
            # the late answers are dropped; the sandbox serves the next call
            assert await sb.call("gate", "after", timeout=30) == "after"

    asyncio.run(main())


def test_cancel_over_the_endpoint(gate_app, tmp_path):
    path = f"unix:{tmp_path / 's.sock'}"

    async def main() -> None:
        async with await sandbox.connect_async(path) as remote:
            sb = await remote.create_sandbox("aio-rgate", gate_app, profile="low")
            task = asyncio.ensure_future(sb.call("gate", "block", timeout=30))
            done, _ = await asyncio.wait([task], timeout=0.2)
            assert not done and len(remote._conn.pending) == 1
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert remote._conn.pending == {}
            assert await sb.call("gate", "after", timeout=30) == "after"

    with sandbox.start(listen=path):
        asyncio.run(main())


def test_lifecycle_and_errors():
    async def main() -> None:
        async with sandbox.start_async() as rt:
            sb = await rt.create_sandbox("aio-life", COUNTER)
            await sb.cast("counter", "incr")
            assert (await sb.info())["status"] == "running"
            report = await sb.hot_reload()
            assert report.ok
            report = await rt.hot_reload(sb.id, modules=["counter"], timeout=30.0)
            assert report.ok and "counter" in report.modules, report
            await sb.destroy()
            with pytest.raises(SandboxNotFound):
                await sb.call("counter", "get")
            assert await rt.list_sandboxes() == []

    asyncio.run(main())


def test_a_misspelt_start_option_is_refused_where_it_is_written():
    # start_async takes **options: Unpack[StartOptions]; the name is checked at the
    # call, before anything starts, not later inside the executor.
    with pytest.raises(TypeError, match=r"start_async\(\) got an unexpected option 'histroy' "
                                        r"\(did you mean 'history'\?\)"):
        sandbox.start_async(histroy=3)  # type: ignore[call-arg]


def test_an_answer_for_a_closed_loop_is_dropped():
    """A call the monitor keeps watching may be answered after its loop closed."""
    from sandbox.aio import _settler

    loop = asyncio.new_event_loop()
    settler = _settler(loop)
    future = loop.create_future()
    loop.close()
    for _ in range(2):
        settler.put(future, 1, None)  # no RuntimeError in the reader thread
        assert not settler.answers and not settler.scheduled


def test_awaiting_and_blocking_callers_share_a_sandbox():
    """The loop reads the awaited answers while threads read their own: every call is
    answered once, and the counter saw each."""
    with sandbox.start() as rt:
        sb = rt.create_sandbox("aio-mixed", COUNTER)
        asb = AsyncSandbox(sb)

        def blocking() -> None:
            for _ in range(200):
                sb.call("counter", "incr")

        async def main() -> list[int]:
            return await asyncio.gather(*(asb.call("counter", "incr") for _ in range(400)))

        threads = [threading.Thread(target=blocking) for _ in range(2)]
        for t in threads:
            t.start()
        answers = asyncio.run(main())
        for t in threads:
            t.join()
        assert len(set(answers)) == 400
        assert sb.call("counter", "get") == 800


def test_one_sandbox_awaited_from_one_loop_after_another():
    """A closed loop's watch of the socket gives way to the next loop's."""
    with sandbox.start() as rt:
        asb = AsyncSandbox(rt.create_sandbox("aio-loops", COUNTER))
        for n in range(3):
            assert asyncio.run(asb.call("counter", "incr")) == n + 1
        assert rt.sandbox("aio-loops").call("counter", "get") == 3


def test_a_crash_answers_an_awaited_call(tmp_path: Path):
    app = tmp_path / "crash"
    app.mkdir()
    (app / "app.py").write_text(GATE.replace(
        'if request == "block":', 'if request == "crash":\n            import os; os._exit(3)\n'
        '        if request == "block":'))

    async def main() -> None:
        async with sandbox.start_async() as rt:
            sb = await rt.create_sandbox("aio-crash", str(app))
            assert await sb.call("gate", "x") == "x"
            # The loop reads the answers itself now (the reader thread stays parked).
            watch = sb.sync._slot.current()._conn.loop_watch
            assert watch is not None and watch.loop is asyncio.get_running_loop()
            with pytest.raises(ActorDead):
                await sb.call("gate", "crash", timeout=30)

    asyncio.run(main())


def test_one_timer_serves_every_awaited_timeout():
    """Awaited calls' timeouts share one loop timer: each call fails in the order of
    its deadline, a call with an earlier deadline than the armed one re-arms it, and
    the entries of calls that ended are dropped (the table does not grow with calls)."""
    from sandbox.aio import _Call, _settler

    async def main() -> None:
        loop = asyncio.get_running_loop()
        settler = _settler(loop)
        deadlines = settler.deadlines

        def add(call: _Call, wait: float) -> None:  # as AsyncSandbox.call enters a call
            deadlines.calls[call] = when = loop.time() + wait
            if when < deadlines.when:
                deadlines.arm(loop, when)

        late, soon, mid = (_Call(settler, loop) for _ in range(3))
        for call, wait in ((late, 0.3), (soon, 0.05), (mid, 0.15)):
            add(call, wait)
        timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert len(timers) == 1 and timers[0].when() == deadlines.when
        order: list[str] = []

        async def wait(name: str, call: _Call) -> None:
            with pytest.raises(TimeoutError):
                await call
            order.append(name)

        await asyncio.gather(*(wait(n, c) for n, c in (("late", late), ("soon", soon),
                                                         ("mid", mid))))
        assert order == ["soon", "mid", "late"]
        assert not deadlines.calls  # a call that timed out is out of the table
        # Answered calls: their entries go, and an answered call is never failed.
        answered = []
        for _ in range(1000):
            call = _Call(settler, loop)
            add(call, 0.01 if not answered else 60.0)
            assert call.settle(None, None)
            deadlines.calls.pop(call, None)
            answered.append(call)
        assert not deadlines.calls
        last = _Call(settler, loop)
        add(last, 0.02)
        with pytest.raises(TimeoutError):
            await last
        assert all(c.result() is None for c in answered)

    asyncio.run(main())


def test_an_answer_wakes_its_caller_in_the_same_turn_of_the_loop():
    """The loop reads an answer and wakes the awaiting task there and then: one pass
    of the loop per call made one after the other, where waking it through the
    loop's ready queue (an asyncio future's call_soon) takes a second pass."""
    import asyncio.base_events as base_events

    with sandbox.start() as rt:
        asb = AsyncSandbox(rt.create_sandbox("aio-turns", COUNTER))
        passes = [0]

        class Loop(asyncio.SelectorEventLoop):
            def _run_once(self) -> None:
                passes[0] += 1
                base_events.BaseEventLoop._run_once(self)  # type: ignore[attr-defined]

        async def main() -> int:
            for _ in range(20):  # the loop now reads the socket itself
                await asb.call("counter", "incr", timeout=30)
            before = passes[0]
            for _ in range(200):
                await asb.call("counter", "incr", timeout=30)
            return passes[0] - before

        loop = Loop()
        try:
            taken = loop.run_until_complete(main())
        finally:
            loop.close()
        assert taken <= 200 + 20, taken  # a few spare: other handles (the timer)


def test_a_woken_caller_may_call_the_same_sandbox_blocking():
    """The caller is woken after the loop's read is done (the read token given back):
    a blocking call from the loop's thread right after an await is answered."""
    with sandbox.start() as rt:
        sb = rt.create_sandbox("aio-reenter", COUNTER)
        asb = AsyncSandbox(sb)

        async def main() -> list[int]:
            got = []
            for _ in range(5):
                got.append(await asb.call("counter", "incr", timeout=30))
                got.append(sb.call("counter", "incr", timeout=10))
            return got

        assert asyncio.run(main()) == list(range(1, 11))


def test_a_cancelled_await_wakes_through_the_loop_and_leaves_no_entry():
    """Cancelling the awaiting task ends the call (no pending entry, no deadline left)
    and the task sees CancelledError with the cancel's message."""
    with sandbox.start() as rt:
        asb = AsyncSandbox(rt.create_sandbox("aio-cancel-msg", COUNTER))

        async def main() -> None:
            from sandbox.aio import _settler

            assert await asb.call("counter", "incr", timeout=30) == 1
            conn = asb.sync._slot.current()._conn
            task = asyncio.ensure_future(asb.call("counter", "incr", timeout=30))
            turn = asyncio.get_running_loop().create_future()  # one turn of the loop:
            asyncio.get_running_loop().call_soon(turn.set_result, None)
            await turn  # the task ran first (scheduled before): it sent, and awaits
            assert conn.pending
            task.cancel("stop")
            with pytest.raises(asyncio.CancelledError) as info:
                await task
            assert info.value.args == ("stop",)
            assert not conn.pending
            assert not _settler(asyncio.get_running_loop()).deadlines.calls

        asyncio.run(main())


def test_a_loop_that_called_a_sandbox_can_go():
    """The loops' registry holds each loop weakly: once another loop took over the
    sandbox's socket, the first loop is garbage."""
    import gc
    import weakref

    with sandbox.start() as rt:
        asb = AsyncSandbox(rt.create_sandbox("aio-gone", COUNTER))
        loops = []

        async def main() -> int:
            loops.append(weakref.ref(asyncio.get_running_loop()))
            return await asb.call("counter", "incr", timeout=30)

        assert asyncio.run(main()) == 1
        assert asyncio.run(main()) == 2  # its watch of the socket ends the first loop's
        gc.collect()
        assert loops[0]() is None


def test_a_crash_is_seen_while_the_loop_that_reads_is_blocked():
    """While a running loop reads a sandbox's socket its reader thread stays parked,
    but a loop blocked by its own code still leaves the reading to it: the child's
    end is seen (and its pending calls answered) with the loop stuck."""
    import os
    import signal

    from sandbox.testing import wait_for

    with sandbox.start() as rt:
        sb = rt.create_sandbox("aio-stuck", COUNTER)
        asb = AsyncSandbox(sb)

        async def main() -> None:
            assert await asb.call("counter", "incr", timeout=30) == 1
            conn = sb._slot.current()._conn
            assert conn.loop_watch is not None  # this loop reads the socket
            os.kill(sb.pid, signal.SIGKILL)
            # The loop is blocked here: only the reader thread can see the end.
            wait_for(lambda: conn.down is not None, timeout=10,
                     message="the child's end was not seen while the loop was blocked")

        asyncio.run(main())


def test_an_awaited_call_behaves_as_a_future_for_its_callbacks():
    """What a task and asyncio's helpers use of a future: every callback runs (the
    first, the task's, at once when the loop settles it; any more on the loop's next
    turn), one removed does not, a settled call runs a late one, and a cancel
    carries its message."""
    from sandbox.aio import _Call, _settler

    async def main() -> None:
        loop = asyncio.get_running_loop()
        settler = _settler(loop)
        seen: list[str] = []
        call = _Call(settler, loop)
        call.add_done_callback(lambda c: seen.append("first"))
        call.add_done_callback(lambda c: seen.append("second"))
        dropped = lambda c: seen.append("removed")  # noqa: E731
        call.add_done_callback(dropped)
        assert call.remove_done_callback(dropped) == 1
        assert call.settle(7, None) and not call.settle(8, None)
        settler.ready.append(call)
        settler.wake()
        assert seen == ["first"]  # the others on the next turn
        done = loop.create_future()
        call.add_done_callback(lambda c: done.set_result(c.result()))
        assert await done == 7 and seen == ["first", "second"]
        assert call.done() and not call.cancelled() and await call == 7

        cancelled = _Call(settler, loop)
        assert cancelled.cancel("why") and not cancelled.cancel()
        assert cancelled.cancelled()
        with pytest.raises(asyncio.CancelledError) as info:
            cancelled.result()
        assert info.value.args == ("why",)
        pending = _Call(settler, loop)
        with pytest.raises(asyncio.InvalidStateError):
            pending.result()

    asyncio.run(main())


def test_an_awaited_call_gives_its_loop_as_an_attribute():
    """A task waiting on an awaited call reads the call's loop from its ``_loop``
    attribute, as asyncio's ``futures._get_loop`` does, when the call has no
    ``get_loop()`` method: no Python call per await for it (what `_Call` promises)."""
    from asyncio import futures

    from sandbox.aio import _Call, _settler

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call = _Call(_settler(loop), loop)
        assert not hasattr(call, "get_loop")
        assert call._loop is loop and futures._get_loop(call) is loop
        loop.call_soon(call.settle, 5, None)  # settled, not woken: the task must be
        loop.call_soon(lambda: (call.settler.ready.append(call), call.settler.wake()))
        await call  # the task checks the call's loop against its own, then waits
        assert call.result() == 5

    asyncio.run(main())
