"""asyncio face of a runtime: ``async with sandbox.start_async() as rt``.

Calls do not take a thread each: a call is sent from the event loop, which
reads the sandbox's socket itself while its calls are pending
(``ProcessRef.call_awaited``), and the reply resolves an :class:`asyncio.Future`. Cancelling the await (or its timeout)
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
import functools
import math
import os
import weakref
from asyncio import _get_running_loop
from collections.abc import Callable
from heapq import heapify, heappop, heappush
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
    """The awaited calls of one event loop: the answers other threads read, settled
    in batches, and the calls' timeouts (:class:`_Deadlines`).

    The reader threads queue answers, and one ``call_soon_threadsafe`` (a write to
    the loop's wake-up pipe) settles all that arrived before the loop got to them,
    not one wake-up per answer. What the loop reads itself is settled where it is
    read (:class:`_FutureSink`), with no queue."""

    __slots__ = ("loop", "answers", "scheduled", "deadlines", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: a module global reaches this object (the registry, the cache),
        # and a loop nobody uses any more must go.
        self.loop = weakref.ref(loop)
        self.answers: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]]
        self.answers = collections.deque()
        self.scheduled = False
        self.deadlines = _Deadlines()

    def put(self, future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
        self.answers.append((future, value, exc))  # first: a drain running now may take it
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
        answers = self.answers
        while answers:
            _settle(*answers.popleft())


class _Deadlines:
    """The timeouts of one loop's awaited calls, on one timer handle: a
    ``call_later`` per call costs a handle, a heap push and a cancel.

    :meth:`add` puts a call's deadline in a heap; the one timer is armed for the
    earliest. An entry stays in the heap after its call ended (the call says so with
    :meth:`ended`) until it comes up or the ended entries are the larger part, when
    the heap is rebuilt without them (as asyncio drops cancelled timer handles).
    Entries hold their futures, and this object its timer, weakly (both hold the
    loop, see :class:`_Settler`); a future nobody holds has nobody awaiting it."""

    __slots__ = ("heap", "live", "when", "timer")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, weakref.ref[asyncio.Future[Any]]]] = []
        self.live = 0  # calls added and not ended
        self.when = math.inf  # when the timer fires (inf: not armed)
        self.timer: weakref.ref[asyncio.TimerHandle] | None = None

    def add(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
            wait: float) -> None:
        """Fail ``future`` (of ``loop``) with ``TimeoutError`` if it is not done in
        ``wait`` seconds."""
        self.live += 1
        if len(self.heap) > 2 * self.live + 100:
            self._compact()
        when = loop.time() + wait
        heappush(self.heap, (when, id(future), _ref(future)))
        if when < self.when:
            self._arm(loop, when)

    def ended(self) -> None:
        """A call :meth:`add` got ended (answered, failed, timed out or cancelled)."""
        self.live -= 1

    def _compact(self) -> None:
        self.heap = heap = [e for e in self.heap if (f := e[2]()) is not None and not f.done()]
        heapify(heap)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        timer = None if self.timer is None else self.timer()
        if timer is not None:
            timer.cancel()
        self.when = when
        self.timer = weakref.ref(loop.call_at(when, self._fire, loop))

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer, self.when = None, math.inf
        heap = self.heap
        end = loop.time() + _RESOLUTION
        while heap and heap[0][0] < end:
            future = heappop(heap)[2]()
            if future is not None and not future.done():
                future.set_exception(TimeoutError())
        if heap:
            self._arm(loop, heap[0][0])


#: Deadlines this close are due, as for the loop's own timers.
_RESOLUTION = get_clock_info("monotonic").resolution
_ref = weakref.ref


_settlers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Settler] = (
    weakref.WeakKeyDictionary())
#: The last loop's settler: a loop's calls find theirs without a weak-dict lookup.
_last: _Settler | None = None


def _settler(loop: asyncio.AbstractEventLoop) -> _Settler:
    global _last
    settler = _last
    if settler is not None and settler.loop() is loop:
        return settler
    settler = _settlers.get(loop)
    if settler is None:
        settler = _settlers[loop] = _Settler(loop)
    _last = settler
    return settler


class _FutureSink:
    """A ReplySink resolving an asyncio future from whichever thread reads the answer:
    at once in the loop's own thread while it runs (the loop reads the answers of
    its calls itself), else through the loop's :class:`_Settler`."""

    __slots__ = ("_settler", "_future")

    def __init__(self, settler: _Settler, future: asyncio.Future[Any]) -> None:
        self._settler = settler
        self._future = future

    def set_result(self, value: Any) -> None:
        future = self._future
        if _get_running_loop() is not future.get_loop():
            self._settler.put(future, value, None)
        elif not future.done():  # else cancelled or timed out: the answer is dropped
            future.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        future = self._future
        if _get_running_loop() is not future.get_loop():
            self._settler.put(future, None, exc)
        elif not future.done():
            future.set_exception(exc)


class _WatchedSink(_FutureSink):
    """A :class:`_FutureSink` that also fills a :class:`~runtime.actor.Reply`: for a
    call under a handler deadline, which the monitor keeps watching (is the answer
    in?) after its awaiting caller gave up (:func:`actors.monitor.deadline_passed`)."""

    __slots__ = ("reply",)

    def __init__(self, settler: _Settler, future: asyncio.Future[Any]) -> None:
        super().__init__(settler, future)
        self.reply = Reply()

    def set_result(self, value: Any) -> None:
        self.reply.set_result(value)
        super().set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        self.reply.set_exception(exc)
        super().set_exception(exc)


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled or timed out meanwhile: the answer is dropped
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


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
            proc = self._current()  # as _process, without a coroutine in the usual case
            if proc is None:
                proc = await self._process(timeout)
            limit = self.sync._slot.deadline  # the handler deadline (limits.call_seconds)
            future: asyncio.Future[Any] = loop.create_future()
            settler = _settler(loop)
            if limit is None:
                wait, started, watch = timeout, 0.0, None
                sink = _FutureSink(settler, future)
            else:
                wait, started = deadline_wait(limit, timeout), monotonic()
                sink = watch = _WatchedSink(settler, future)
            try:
                ref = proc.call_awaited(actor, request, sink, loop)
            except (TypeError, ProtocolError) as exc:  # the request could not be encoded
                raise unsendable(self.sync, "call", exc) from None
            # The loop's one timer, not asyncio.timeout (its context manager costs as
            # much again), wait_for (a task per call) or a call_later each: it fails
            # the future.
            if wait is not None:
                settler.deadlines.add(loop, future, wait)
            try:
                value = await future
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
                # a cancelled await (its future too, or not yet done) has a call to end
                if not future.done() or future.cancelled():
                    if watch is None:
                        proc.forget(ref)
                    else:  # the deadline still holds for the handler
                        watch_call(self.sync, proc, watch.reply, started)
                raise
            finally:
                if wait is not None:
                    settler.deadlines.ended()
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
