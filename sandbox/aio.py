"""asyncio face of a runtime: ``async with sandbox.start_async() as rt``.

Calls do not take a thread each: a call is sent from the event loop, which
reads the sandbox's socket itself while its calls are pending
(``ProcessRef.call_awaited``), and the reply settles what the caller awaits
(:class:`_Call`) and wakes it. Cancelling the await (or its timeout)
forgets the pending reply, so nothing is left behind. Operations that are rare
and long (create, destroy, restart, hot reload) run in the loop's default
executor.

>>> import asyncio, sandbox
>>> async def main():
...     async with sandbox.start_async() as rt:
...         sb = await rt.create_sandbox("doc-aio", "examples/counter")
...         return await asyncio.gather(*(sb.call("counter", "incr") for _ in range(3)))
>>> sorted(asyncio.run(main()))
[1, 2, 3]
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import math
import os
import weakref
from threading import get_ident
from collections.abc import Callable
from time import get_clock_info, monotonic, perf_counter, time
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from actors.monitor import deadline_passed, deadline_wait, raise_if_cpu_budget, watch_call
from runtime.actor import Reply
from runtime.errors import ActorDead, CallTimeout, ProtocolError
from sandbox.api import DEFAULT_TIMEOUT, Runtime, Sandbox, start, unsendable
from sandbox.options import CreateOptions, ReloadOptions, StartOptions, create_options

if TYPE_CHECKING:
    from sandbox.hotreload import ReloadReport

__all__ = ["AsyncRuntime", "AsyncSandbox", "start_async"]

T = TypeVar("T")


class _Settler:
    """The awaited calls of one event loop: where their answers are settled and
    their callers woken, and their timeouts (:class:`_Deadlines`).

    The loop reads the answers of its calls itself (:meth:`read`, the reader
    callback of each socket it watches): each answer settles its :class:`_Call`
    in place, and once the read is done (the connection's read token given back)
    the callers are woken there and then, not through one more turn of the loop.
    Other threads queue the answers they read, and one ``call_soon_threadsafe`` (a
    write to the loop's wake-up pipe) settles all that arrived before the loop got
    to them, not one wake-up per answer."""

    __slots__ = ("loop", "answers", "scheduled", "deadlines", "reading", "ready",
                 "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the registry reaches this object, and a loop nobody uses any more
        # must go (what holds this: the loop, through the reader callbacks of the
        # sockets it watches and its deadlines' timer, and its live calls).
        self.loop = weakref.ref(loop)
        self.answers: collections.deque[tuple[_Call, Any, BaseException | None]]
        self.answers = collections.deque()
        self.scheduled = False
        self.deadlines = _Deadlines(self)
        self.reading = 0  # the thread of the loop while in read(): answers settle in place
        self.ready: collections.deque[_Call] = collections.deque()  # settled, to wake

    def read(self, read: Callable[[Any], None], watch: Any) -> None:
        """The loop's reader callback of a socket it watches: ``read(watch)`` (the
        connection's non-blocking read, see ``ProcessRef.call_awaited``) settles the
        answers in place; their callers are woken after it, outside the read token
        (a woken caller may call the same sandbox)."""
        self.reading = get_ident()
        try:
            read(watch)
        finally:
            self.reading = 0
            if self.ready:
                self.wake()

    def wake(self) -> None:
        """Run the callbacks (the awaiting tasks' wake-ups) of the settled calls, in
        the loop's thread outside any task: as the loop would run them, one turn
        sooner. A hot path: the common case (one callback, the task's) inlined."""
        ready = self.ready
        while ready:
            call = ready.popleft()
            fn, context = call.waker, call.context
            if fn is None:  # (no task awaits it)
                if call.others:
                    call.run_others()
                continue
            call.waker = None
            try:
                context.run(fn, call)
                if call.others:
                    call.run_others()
            except (SystemExit, KeyboardInterrupt):  # the rest are woken next turn
                loop = self.loop()
                if ready and loop is not None and not loop.is_closed():
                    loop.call_soon(self.wake)
                raise
            except BaseException as exc:  # as the loop reports its handles' errors
                call._loop.call_exception_handler({
                    "message": f"Exception in callback {fn!r}", "exception": exc})

    def put(self, call: _Call, value: Any, exc: BaseException | None) -> None:
        self.answers.append((call, value, exc))  # first: a drain running now may take it
        if not self.scheduled:
            self.scheduled = True
            try:
                loop = self.loop()
                if loop is None:
                    raise RuntimeError("the loop is gone")
                loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop is closed: nobody awaits these answers now
                self.answers.clear()  # (a call the monitor still watched ended after it)
                self.scheduled = False  # and a later one is dropped the same way

    def drain(self) -> None:
        self.scheduled = False  # first: an answer queued from now on schedules a drain
        answers, ready = self.answers, self.ready
        while answers:
            call, value, exc = answers.popleft()
            if call.settle(value, exc):
                ready.append(call)
        self.wake()


_PENDING, _RESULT, _FAILED, _CANCELLED = range(4)


class _Call:
    """One awaited call: the ReplySink its answer goes to, and what its caller
    awaits (an asyncio future in all an asyncio task needs of one), in one object.

    An answer read in the loop's own read (:meth:`_Settler.read`) settles it in
    place and its task is woken right after the read, where an
    :class:`asyncio.Future` would schedule the wake-up for the loop's next turn
    (``call_soon``: a handle, a pass of the loop); an answer read by another thread
    is queued to the loop (:meth:`_Settler.put`). A cancel (the task's) wakes the
    task through ``call_soon``, as a future does: it comes from inside a task.

    The loop is the ``_loop`` attribute and there is no ``get_loop()``: a task
    (and asyncio's ``futures._get_loop``) then reads the attribute where it would
    call the method, one Python call fewer per await."""

    __slots__ = ("settler", "_loop", "state", "value", "waker", "context", "others",
                 "_asyncio_future_blocking")

    def __init__(self, settler: _Settler, loop: asyncio.AbstractEventLoop) -> None:
        self.settler = settler
        self._loop = loop
        self.state = _PENDING
        self.value: Any = None
        self.waker: Callable[[Any], Any] | None = None  # the first callback: the task's
        self.context: Any = None
        self.others: list[tuple[Callable[[Any], Any], Any]] | None = None  # any more

    # -- ReplySink: from whichever thread read the answer
    def set_result(self, value: Any) -> None:
        settler = self.settler
        if settler.reading == get_ident():  # the loop's own read (_Settler.read)
            if not self.state:  # else cancelled or timed out: the answer is dropped
                self.state, self.value = _RESULT, value
                settler.ready.append(self)
        else:
            settler.put(self, value, None)

    def set_exception(self, exc: BaseException) -> None:
        settler = self.settler
        if settler.reading == get_ident():
            if not self.state:
                self.state, self.value = _FAILED, exc
                settler.ready.append(self)
        else:
            settler.put(self, None, exc)

    def settle(self, value: Any, exc: BaseException | None) -> bool:
        """Settle in the loop's thread (the caller wakes it): False if it was not
        pending any more (cancelled or timed out: the answer is dropped)."""
        if self.state:
            return False
        if exc is None:
            self.state, self.value = _RESULT, value
        else:
            self.state, self.value = _FAILED, exc
        return True

    def run_others(self) -> None:
        """The callbacks after the first (none, when a task awaits the call)."""
        others, self.others = self.others or [], None
        for fn, context in others:
            self._loop.call_soon(fn, self, context=context)

    def __await__(self) -> Any:
        if not self.state:
            self._asyncio_future_blocking = True
            yield self  # the task adds its wake-up (add_done_callback)
        if self.state == _RESULT:
            return self.value
        return self.result()

    def add_done_callback(self, fn: Callable[[Any], Any], *, context: Any = None) -> None:
        if self.waker is None and not self.state and context is not None:
            self.waker, self.context = fn, context  # the task's: the usual case
            return
        if context is None:
            context = contextvars.copy_context()
        if self.state:
            self._loop.call_soon(fn, self, context=context)
        elif self.waker is None:
            self.waker, self.context = fn, context
        else:
            self.others = [*(self.others or ()), (fn, context)]

    def remove_done_callback(self, fn: Callable[[Any], Any]) -> int:
        removed = 0
        if self.waker is not None and self.waker == fn:
            self.waker = self.context = None
            removed = 1
        if self.others:
            kept = [(f, c) for f, c in self.others if f != fn]
            removed, self.others = removed + len(self.others) - len(kept), kept
        return removed

    def done(self) -> bool:
        return self.state != _PENDING

    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def cancel(self, msg: Any = None) -> bool:
        if self.state:
            return False
        self.state, self.value = _CANCELLED, msg
        if self.waker is not None:  # from inside a task: on the loop's next turn
            self._loop.call_soon(self.waker, self, context=self.context)
            self.waker = None
        self.run_others()
        return True

    def result(self) -> Any:
        state = self.state
        if state == _RESULT:
            return self.value
        if state == _FAILED:
            raise self.value
        if state == _CANCELLED:
            raise asyncio.CancelledError(*(() if self.value is None else (self.value,)))
        raise asyncio.InvalidStateError("the call is not answered yet")


class _WatchedCall(_Call):
    """A :class:`_Call` that also fills a :class:`~runtime.actor.Reply`: for a call
    under a handler deadline, which the monitor keeps watching (is the answer in?)
    after its awaiting caller gave up (:func:`actors.monitor.deadline_passed`)."""

    __slots__ = ("reply",)

    def __init__(self, settler: _Settler, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(settler, loop)
        self.reply = Reply()

    def set_result(self, value: Any) -> None:
        self.reply.set_result(value)
        super().set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        self.reply.set_exception(exc)
        super().set_exception(exc)


class _Deadlines:
    """The timeouts of one loop's awaited calls, on one timer handle: a
    ``call_later`` per call costs a handle, a heap push and a cancel.

    A call is entered with its deadline in the loop's time, ``calls[call] = when``,
    and taken out when it ends (answered, failed, timed out or cancelled),
    ``calls.pop(call, None)``: a dict's insert and delete, only live calls are in
    it. An entry earlier than :attr:`when` arms the one timer for it
    (:meth:`arm`). When the timer fires it fails the calls that are due and is
    armed again for the earliest left (a pass over the calls in flight, once per
    firing). :meth:`AsyncSandbox.call` does the entries inline (every call's path,
    two Python calls fewer)."""

    __slots__ = ("settler", "calls", "when", "timer")

    def __init__(self, settler: _Settler) -> None:
        self.settler = settler
        self.calls: dict[_Call, float] = {}
        self.when = math.inf  # when the timer fires (inf: not armed)
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Have the timer fire at ``when`` (loop time) instead of :attr:`when`."""
        if self.timer is not None:
            self.timer.cancel()
        self.when = when
        self.timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer, self.when = None, math.inf
        calls = self.calls
        end = loop.time() + _RESOLUTION
        due = [call for call, when in calls.items() if when < end]
        for call in due:
            del calls[call]
        if calls:
            self.arm(loop, min(calls.values()))
        ready = self.settler.ready  # woken last: a woken task may add calls
        for call in due:
            if call.settle(None, TimeoutError()):
                ready.append(call)
        self.settler.wake()


#: Deadlines this close are due, as for the loop's own timers.
_RESOLUTION = get_clock_info("monotonic").resolution


#: Each loop's settler, held weakly both ways (see _Settler): by id(loop), checked.
_settlers: weakref.WeakValueDictionary[int, _Settler] = weakref.WeakValueDictionary()
#: The last loop's settler: a loop's calls find theirs without a dict lookup.
_last: weakref.ref[_Settler] | None = None


def _settler(loop: asyncio.AbstractEventLoop) -> _Settler:
    """``loop``'s settler (made on its first call). :meth:`AsyncSandbox.call` looks
    at ``_last`` itself first: most calls come from the same loop as the one before."""
    global _last
    settler = _settlers.get(id(loop))
    if settler is None or settler.loop() is not loop:
        settler = _settlers[id(loop)] = _Settler(loop)
    _last = weakref.ref(settler)
    return settler


class AsyncSandbox:
    """Awaitable handle on one sandbox; wraps a :class:`~sandbox.api.Sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox
        self.id = sandbox.id

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id!r}>"

    async def _thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _current(self) -> Any:
        """The live process, if this handle has one now (the usual case)."""
        slot = self.sync._slot
        return None if slot is None else slot.current()

    async def _process(self, timeout: float | None) -> Any:
        proc = self._current()
        if proc is not None:
            return proc  # no thread, no wait
        # First call on this handle, or the process is restarting: wait in a thread.
        return await self._thread(self.sync._process, timeout)

    async def call(self, actor: str, request: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Call ``actor`` and await its reply; same errors as :meth:`Sandbox.call`.

        >>> import asyncio, sandbox
        >>> async def main():
        ...     async with sandbox.start_async() as rt:
        ...         sb = await rt.create_sandbox("doc-acall", "examples/counter")
        ...         return await sb.call("counter", "incr")
        >>> asyncio.run(main())
        1
        """
        loop = asyncio.get_running_loop()
        t0, ok = perf_counter(), False
        try:
            # The usual case inline, every call's path (about 1.6k instructions per
            # call fewer than through the functions): _current(), the last loop's
            # settler (_settler), the deadline's entry and exit (see _Deadlines).
            slot = self.sync._slot
            proc = None if slot is None else slot.current()
            if proc is None:  # first call on this handle, or the process is restarting
                proc = await self._process(timeout)
                slot = self.sync._slot
            limit = slot.deadline  # the handler deadline (limits.call_seconds)
            settler = None if _last is None else _last()
            if settler is None or settler.loop() is not loop:
                settler = _settler(loop)
            if limit is None:
                wait, started, watch = timeout, 0.0, None
                call = _Call(settler, loop)
            else:
                wait, started = deadline_wait(limit, timeout), monotonic()
                call = watch = _WatchedCall(settler, loop)
            try:
                ref = proc.call_awaited(actor, request, call, loop, settler.read)
            except (TypeError, ProtocolError) as exc:  # the request could not be encoded
                raise unsendable(self.sync, "call", exc) from None
            # The loop's one timer, not asyncio.timeout (its context manager costs as
            # much again), wait_for (a task per call) or a call_later each: it fails
            # the call.
            if wait is not None:
                deadlines = settler.deadlines
                deadlines.calls[call] = when = loop.time() + wait
                if when < deadlines.when:
                    deadlines.arm(loop, when)
            try:
                value = await call
            except TimeoutError:
                if watch is None:
                    proc.forget(ref)
                    raise CallTimeout(f"{proc.id}/{actor}", timeout) from None
                await self._thread(deadline_passed, self.sync, proc, watch.reply, limit, wait,
                                   started, actor, timeout)
            except ActorDead:
                if watch is not None:
                    await self._thread(raise_if_cpu_budget, self.sync, proc,
                                       time() - (monotonic() - started))
                await self._thread(self.sync._check_owner)  # SandboxNotFound if destroyed
                raise
            except BaseException:  # the call failed, or its await was cancelled: only
                # a cancelled await (its call too, or not yet done) has a call to end
                if not call.state or call.state == _CANCELLED:
                    if watch is None:
                        proc.forget(ref)
                    else:  # the deadline still holds for the handler
                        watch_call(self.sync, proc, watch.reply, started)
                raise
            finally:
                if wait is not None:
                    deadlines.calls.pop(call, None)
            ok = True
            return value
        finally:
            self.sync.runtime._obs.calls.observe_call(self.id, perf_counter() - t0, ok)

    async def cast(self, actor: str, request: Any) -> None:
        """Send ``request`` to ``actor`` without waiting for it to be handled."""
        proc = await self._process(DEFAULT_TIMEOUT)
        proc.cast(actor, request)

    async def info(self) -> dict[str, Any]:
        """See :meth:`Sandbox.info`."""
        return await self._thread(self.sync.info)

    async def restart(self, *, preserve_state: bool = False) -> dict[str, Any]:
        """See :meth:`Sandbox.restart`."""
        return await self._thread(self.sync.restart, preserve_state=preserve_state)

    async def destroy(self) -> None:
        """See :meth:`Sandbox.destroy`."""
        await self._thread(self.sync.destroy)

    async def hot_reload(self, **options: Unpack[ReloadOptions]) -> ReloadReport:
        """See :meth:`Sandbox.hot_reload`."""
        return await self._thread(self.sync.hot_reload, **create_options(
            options, allowed=ReloadOptions, function="hot_reload"))

    async def rollback_module(
        self, module: str, version: int, *, extra: Any = None, timeout: float = 30.0
    ) -> ReloadReport:
        """See :meth:`Sandbox.rollback_module`."""
        return await self._thread(self.sync.rollback_module, module, version, extra=extra,
                                  timeout=timeout)

    async def module_versions(self, module: str | None = None) -> Any:
        """See :meth:`Sandbox.module_versions`."""
        return await self._thread(self.sync.module_versions, module)


class AsyncRuntime:
    """Awaitable face of a :class:`~sandbox.api.Runtime` (``rt.sync`` is the runtime)."""

    def __init__(self, runtime: Runtime) -> None:
        self.sync = runtime
        self.name = runtime.name

    async def _thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def __aenter__(self) -> AsyncRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Destroy every sandbox and stop the runtime."""
        await self._thread(self.sync.stop)

    async def create_sandbox(self, sandbox_id: str, path: str | os.PathLike[str],
                             **options: Unpack[CreateOptions]) -> AsyncSandbox:
        """See :meth:`Runtime.create_sandbox` (the same keyword options:
        :class:`~sandbox.options.CreateOptions`)."""
        return AsyncSandbox(await self._thread(self.sync.create_sandbox, sandbox_id, path,
                                               **create_options(options)))

    def sandbox(self, sandbox_id: str) -> AsyncSandbox:
        """A handle on an existing sandbox (checked on first use)."""
        return AsyncSandbox(Sandbox(self.sync, sandbox_id))

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """See :meth:`Runtime.destroy_sandbox`."""
        await self._thread(self.sync.destroy_sandbox, sandbox_id)

    async def restart_sandbox(self, sandbox_id: str, *, preserve_state: bool = False
                              ) -> dict[str, Any]:
        """See :meth:`Runtime.restart_sandbox`."""
        return await self._thread(self.sync.restart_sandbox, sandbox_id,
                                  preserve_state=preserve_state)

    async def get_sandbox_info(self, sandbox_id: str) -> dict[str, Any]:
        """See :meth:`Runtime.get_sandbox_info`."""
        return await self._thread(self.sync.get_sandbox_info, sandbox_id)

    async def list_sandboxes(self) -> list[dict[str, Any]]:
        """See :meth:`Runtime.list_sandboxes`."""
        return await self._thread(self.sync.list_sandboxes)

    async def hot_reload(self, sandbox_id: str, **options: Unpack[ReloadOptions]) -> ReloadReport:
        """See :meth:`Runtime.hot_reload`."""
        return await self._thread(self.sync.hot_reload, sandbox_id, **create_options(
            options, allowed=ReloadOptions, function="hot_reload"))

    async def rollback_module(self, sandbox_id: str, module: str, version: int, *,
                              extra: Any = None, timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Runtime.rollback_module`."""
        return await self._thread(self.sync.rollback_module, sandbox_id, module, version,
                                  extra=extra, timeout=timeout)

    async def module_versions(self, sandbox_id: str, module: str | None = None) -> Any:
        """See :meth:`Runtime.module_versions`."""
        return await self._thread(self.sync.module_versions, sandbox_id, module)

    async def health(self) -> dict[str, Any]:
        """See :meth:`Runtime.health` (answers at once: no thread)."""
        return self.sync.health()

    async def metrics_text(self) -> str:
        """See :meth:`Runtime.metrics_text`."""
        return self.sync.metrics_text()


class _Starting:
    """``start_async(...)``: awaitable, or an async context manager stopping at exit."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options  # the keyword arguments of sandbox.start
        self._rt: AsyncRuntime | None = None

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> AsyncRuntime:
        loop = asyncio.get_running_loop()
        rt = await loop.run_in_executor(None, functools.partial(start, **self._options))
        return AsyncRuntime(rt)

    async def __aenter__(self) -> AsyncRuntime:
        self._rt = await self._start()
        return self._rt

    async def __aexit__(self, *exc: object) -> None:
        if self._rt is not None:
            await self._rt.stop()


def start_async(**options: Unpack[StartOptions]) -> _Starting:
    """Start a runtime from asyncio: ``async with start_async(...) as rt`` (stops at
    exit) or ``rt = await start_async(...)``; options as :func:`sandbox.start`.

    >>> import asyncio, sandbox
    >>> async def main():
    ...     rt = await sandbox.start_async()
    ...     try:
    ...         return await rt.list_sandboxes()
    ...     finally:
    ...         await rt.stop()
    >>> asyncio.run(main())
    []
    """
    return _Starting(create_options(options, allowed=StartOptions, function="start_async"))
