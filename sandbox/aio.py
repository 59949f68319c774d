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
import os
import weakref
from collections.abc import Callable
from time import monotonic, perf_counter, time
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
    """Answers for one event loop, settled in batches: the reader threads queue them,
    and one ``call_soon_threadsafe`` (a write to the loop's wake-up pipe) settles all
    that arrived before the loop got to them, not one wake-up per answer."""

    __slots__ = ("loop", "answers", "scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.answers: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]]
        self.answers = collections.deque()
        self.scheduled = False

    def put(self, future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
        self.answers.append((future, value, exc))  # first: a drain running now may take it
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop is closed: nobody awaits these answers now
                self.answers.clear()  # (a call the monitor still watched ended after it)
                self.scheduled = False  # and a later one is dropped the same way

    def reading(self, read: Callable[[], bool]) -> bool:
        """Run ``read`` (the loop reading answers itself, in its own thread) and
        settle what it routed here right after it, with no wake-up of the loop."""
        held = not self.scheduled  # else a drain is already scheduled: it settles them
        if held:
            self.scheduled = True  # put() queues without scheduling meanwhile
        try:
            return read()
        finally:
            if held:
                self.drain()

    def drain(self) -> None:
        self.scheduled = False  # first: an answer queued from now on schedules a drain
        answers = self.answers
        while answers:
            _settle(*answers.popleft())


_settlers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Settler] = (
    weakref.WeakKeyDictionary())


def _settler(loop: asyncio.AbstractEventLoop) -> _Settler:
    settler = _settlers.get(loop)
    if settler is None:
        settler = _settlers[loop] = _Settler(loop)
    return settler


class _FutureSink:
    """A ReplySink resolving an asyncio future from whichever thread reads the answer."""

    __slots__ = ("_settler", "_future")

    def __init__(self, settler: _Settler, future: asyncio.Future[Any]) -> None:
        self._settler = settler
        self._future = future

    def set_result(self, value: Any) -> None:
        self._settler.put(self._future, value, None)

    def set_exception(self, exc: BaseException) -> None:
        self._settler.put(self._future, None, exc)


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


def _expire(future: asyncio.Future[Any]) -> None:
    """An awaited call's timeout ran out: its caller gets ``TimeoutError``."""
    if not future.done():
        future.set_exception(TimeoutError())


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

    async def _process(self, timeout: float | None) -> Any:
        slot = self.sync._slot
        if slot is not None:
            proc = slot.current()
            if proc is not None:
                return proc  # the usual case: no thread, no wait
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
                ref = proc.call_awaited(actor, request, sink, loop, settler.reading)
            except (TypeError, ProtocolError) as exc:  # the request could not be encoded
                raise unsendable(self.sync, "call", exc) from None
            handed = False  # deadline_passed took the call over (watched or acted on)
            # A bare timer handle, not asyncio.timeout (its context manager costs as
            # much again) nor wait_for (a task per call): it fails the future.
            timer = None if wait is None else loop.call_later(wait, _expire, future)
            try:
                value = await future
            except TimeoutError:
                handed = True  # the answer is not wanted, or the monitor takes it
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
            finally:
                if timer is not None:
                    timer.cancel()
                if not handed and (not future.done() or future.cancelled()):  # cancelled
                    if watch is None:
                        proc.forget(ref)
                    else:  # the deadline still holds for the handler
                        watch_call(self.sync, proc, watch.reply, started)
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
