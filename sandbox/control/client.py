"""Clients of a control endpoint: :func:`connect` (blocking) and :func:`connect_async`.

Both speak :mod:`sandbox.control.protocol` over one connection, on which any
number of requests may be in flight: each pending request is a future that the
connection's reader resolves when its reply arrives (no thread per request).
The blocking client runs the asyncio one on a private event loop thread, so
the two share one implementation.

The methods are those of a local :class:`~sandbox.api.Runtime` and
:class:`~sandbox.api.Sandbox`, and raise the same exception classes.

>>> import tempfile, sandbox
>>> with tempfile.TemporaryDirectory() as d, sandbox.start(listen=f"unix:{d}/doc.sock"):
...     with sandbox.connect(f"unix:{d}/doc.sock") as remote:
...         sb = remote.create_sandbox("doc-remote", "examples/counter")
...         sb.call("counter", "incr"), [i["id"] for i in remote.list_sandboxes()]
(1, ['doc-remote'])
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import ssl
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar, Unpack

from runtime.errors import CallTimeout, ProtocolError, SandboxNotFound
from runtime.host.output import OutputLine
from runtime.wire.mailbox import CALL, ERROR, PREFIX_SIZE, REPLY, SYSTEM, Codec
from sandbox.control.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    AuthenticationError,
    ControlError,
    error_from_wire,
    make_codec,
    parse_address,
)
from sandbox.hotreload import ReloadReport
from sandbox.options import CreateOptions, create_options

__all__ = [
    "AsyncRemoteRuntime",
    "AsyncRemoteSandbox",
    "RemoteRuntime",
    "RemoteSandbox",
    "connect",
    "connect_async",
]

T = TypeVar("T")
DEFAULT_TIMEOUT = 5.0
#: Extra seconds a request waits beyond the operation's own timeout (the trip there
#: and back); requests without one (create, reload) wait this long at most.
_SLACK = 10.0
_NO_TIMEOUT_OPS = 300.0


def _client_tls(tls: bool | str | os.PathLike[str] | ssl.SSLContext | None) -> ssl.SSLContext | None:
    if tls is None or tls is False:
        return None
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is True:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=os.fspath(tls))


class _Connection:
    """One authenticated connection; requests are futures resolved by :meth:`_read`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 codec: Codec) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = codec
        self.refs = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, asyncio.Queue[Any]] = {}
        self.failure: BaseException | None = None
        self.runtime = ""
        self._reader_task: asyncio.Task[None] | None = None

    async def _frame(self) -> Any:
        prefix = await self.reader.readexactly(PREFIX_SIZE)
        size = int.from_bytes(prefix, "big")
        if size > self.codec.max_frame:
            raise ProtocolError(f"the server sent a frame of {size} bytes, over "
                                f"max_frame={self.codec.max_frame}")
        return self.codec.decode_envelope(await self.reader.readexactly(size))

    async def hello(self, token: str | None, timeout: float) -> None:
        try:
            self.writer.write(self.codec.frame(SYSTEM, 0, "hello",
                                               {"version": PROTOCOL_VERSION, "token": token}))
        except ConnectionError:
            pass  # refused before it heard us (too many clients): its error frame says why
        try:
            env = await asyncio.wait_for(self._frame(), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ControlError("the server closed the connection before answering the "
                               "hello (is this a sandbox control endpoint?)") from None
        if env.kind == ERROR:
            raise error_from_wire(env.payload)
        if env.kind != REPLY or not isinstance(env.payload, dict):
            raise ControlError(f"unexpected answer to the hello: {env.kind}")
        self.runtime = str(env.payload.get("runtime", ""))
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                env = await self._frame()
                if env.kind == SYSTEM and env.target == "log":
                    stream = self.streams.get(env.ref)
                    if stream is not None:
                        stream.put_nowait(env.payload)
                    continue
                future = self.pending.pop(env.ref, None) if env.ref is not None else None
                if future is None:
                    if env.kind == ERROR and env.ref is None:  # about the connection
                        raise error_from_wire(env.payload)
                    continue  # the answer to a request whose caller gave up
                if future.done():
                    continue
                if env.kind == ERROR:
                    future.set_exception(error_from_wire(env.payload))
                else:
                    future.set_result(env.payload)
        except asyncio.CancelledError:
            self.failure = ControlError("the connection was closed")
        except asyncio.IncompleteReadError:
            self.failure = ControlError("the server closed the connection")
        except (ConnectionError, ssl.SSLError) as exc:
            self.failure = ControlError(f"the connection broke: {exc}")
        except BaseException as exc:
            self.failure = exc
        for future in self.pending.values():
            if not future.done():
                future.set_exception(self.failure)
        self.pending.clear()
        for stream in self.streams.values():
            stream.put_nowait(None)

    def _encode(self, op: str, ref: int, args: dict[str, Any]) -> bytes:
        try:
            return self.codec.frame(CALL, ref, op, args)
        except ProtocolError:  # over max_frame: say which argument, and whose limit
            name, size = max(((k, len(self.codec.encode(v))) for k, v in args.items()),
                             key=lambda kv: kv[1])
            raise ProtocolError(
                f"argument {name!r} of {op}() is {size} bytes, over the "
                f"{self.codec.max_frame} bytes one request may carry on this connection "
                "(connect(max_frame=)); the server takes at most its own limit "
                f"({DEFAULT_MAX_FRAME} bytes unless configured otherwise): send less per "
                "request") from None
        except TypeError as exc:
            for name, value in args.items():  # which argument?
                try:
                    self.codec.encode(value)
                except TypeError:
                    raise TypeError(
                        f"argument {name!r} of {op}() cannot be sent to the server: a "
                        f"{type(value).__name__} value; only msgpack-native values cross "
                        "(None, bool, int, float, str, bytes, list, dict, tuple, set, "
                        "datetime)") from None
            raise exc

    async def request(self, op: str, args: dict[str, Any], timeout: float | None) -> Any:
        if self.failure is not None:
            raise ControlError(f"not connected: {self.failure}")
        ref = next(self.refs)
        data = self._encode(op, ref, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ref] = future
        try:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except ConnectionError as exc:
                # The server may have said why before closing (a frame over its
                # max_frame): that reason, read by _read, is the better error.
                try:
                    return await asyncio.wait_for(asyncio.shield(future), 2.0)
                except TimeoutError:
                    raise ControlError(f"the connection broke: {exc}") from None
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(ref, None)  # cancelled or timed out: a late answer is dropped

    async def follow(self, lines: int | None) -> AsyncIterator[dict[str, Any]]:
        ref = next(self.refs)
        stream: asyncio.Queue[Any] = asyncio.Queue()
        self.streams[ref] = stream
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ref] = future
        try:
            self.writer.write(self.codec.frame(CALL, ref, "logs", {"follow": True,
                                                                   "lines": lines}))
            for record in await future:
                yield record
            while (record := await stream.get()) is not None:
                yield record
            if self.failure is not None and not isinstance(self.failure, ControlError):
                raise self.failure
        finally:
            # Closed, cancelled or collected before the connection ended: tell the
            # server to stop sending (its answer, unawaited, is dropped by _read).
            self.streams.pop(ref, None)
            self.pending.pop(ref, None)
            if self.failure is None and not self.writer.is_closing():
                self.writer.write(self.codec.frame(CALL, next(self.refs), "unfollow",
                                                   {"ref": ref}))

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def _read_token(token: str | None, token_file: str | os.PathLike[str] | None) -> str | None:
    if token is not None or token_file is None:
        return token
    try:
        with open(token_file) as f:
            return f.read().strip()
    except OSError as exc:
        raise AuthenticationError(f"cannot read token_file {os.fspath(token_file)!r}: {exc}"
                                  ) from None


async def _open(address: str, token: str | None, tls: Any, timeout: float,
                max_frame: int) -> _Connection:
    addr = parse_address(address, option="address")
    try:
        if addr.kind == "unix":
            opened = asyncio.open_unix_connection(addr.path, limit=max_frame)
        else:
            context = _client_tls(tls)
            opened = asyncio.open_connection(
                addr.host, addr.port, ssl=context, limit=max_frame,
                server_hostname=addr.host if context is not None else None)
        reader, writer = await asyncio.wait_for(opened, timeout)
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"cannot connect to {addr}: {exc or type(exc).__name__}; is "
                           "`sandbox run ... --listen` running there?") from None
    conn = _Connection(reader, writer, make_codec(max_frame))
    try:
        await conn.hello(token, timeout)
    except BaseException:
        await conn.close()
        raise
    return conn


def _report(data: Any) -> ReloadReport:
    return ReloadReport(**data)


def _options_map(value: Any) -> Any:
    """A Limits or WatchOptions as the map the server rebuilds it from."""
    return value.as_dict() if hasattr(value, "as_dict") else (
        dict(value) if value is not None else None)


def _wire_option(name: str, value: Any) -> Any:
    """A create_sandbox option as msgpack-native data (the server rebuilds the rest)."""
    if name in ("limits", "watch", "alerts", "env"):
        return _options_map(value)
    return list(value) if name == "net_allow" else value


class AsyncRemoteSandbox:
    """A sandbox of a remote runtime; awaitable methods as :class:`~sandbox.aio.AsyncSandbox`.

    Like a local handle it belongs to one sandbox: once that sandbox is destroyed
    it raises SandboxNotFound, even if a new sandbox has the same id. It binds to
    the sandbox at creation, or at its first use when made by ``sandbox(id)``.
    """

    def __init__(self, runtime: AsyncRemoteRuntime, sandbox_id: str,
                 created: float | None = None) -> None:
        self.runtime = runtime
        self.id = sandbox_id
        self.created = created  # the sandbox's created_at: its identity

    def __repr__(self) -> str:
        return f"<AsyncRemoteSandbox {self.id!r} at {self.runtime.address}>"

    async def _bound(self) -> dict[str, Any]:
        """The sandbox's info, checking it is still this handle's sandbox."""
        info: dict[str, Any] = await self.runtime._request("info", {"id": self.id})
        if self.created is None:
            self.created = info.get("created_at")
        elif info.get("created_at") != self.created:
            raise SandboxNotFound(self.id)
        return info

    async def _identity(self) -> float:
        if self.created is None:
            await self._bound()
        assert self.created is not None
        return self.created

    async def call(self, actor: str, request: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Call ``actor`` and await its reply (errors as :meth:`Sandbox.call`)."""
        args = {"id": self.id, "actor": actor, "request": request, "timeout": timeout,
                "created": await self._identity()}
        try:
            return await self.runtime._request(
                "call", args, None if timeout is None else timeout + _SLACK)
        except TimeoutError:
            raise CallTimeout(f"{self.id}/{actor}", timeout) from None

    async def cast(self, actor: str, request: Any) -> None:
        """Send ``request`` to ``actor`` without waiting for it to be handled."""
        await self.runtime._request("cast", {"id": self.id, "actor": actor, "request": request,
                                             "created": await self._identity()})

    async def info(self) -> dict[str, Any]:
        """See :meth:`Sandbox.info`."""
        return await self._bound()

    async def restart(self, *, preserve_state: bool = False) -> dict[str, Any]:
        """See :meth:`Sandbox.restart`."""
        await self._bound()
        return await self.runtime.restart_sandbox(self.id, preserve_state=preserve_state)

    async def destroy(self) -> None:
        """See :meth:`Sandbox.destroy`."""
        await self._bound()
        await self.runtime.destroy_sandbox(self.id)

    async def hot_reload(self, *, modules: Iterable[str] | None = None,
                         source: Mapping[str, str] | None = None, extra: Any = None,
                         timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Sandbox.hot_reload` (a ``migrate`` function cannot cross)."""
        await self._bound()
        return await self.runtime.hot_reload(self.id, modules=modules, source=source,
                                             extra=extra, timeout=timeout)

    async def rollback_module(self, module: str, version: int, *, extra: Any = None,
                              timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Sandbox.rollback_module`."""
        await self._bound()
        return await self.runtime.rollback_module(self.id, module, version, extra=extra,
                                                  timeout=timeout)

    async def module_versions(self, module: str | None = None) -> Any:
        """See :meth:`Sandbox.module_versions`."""
        await self._bound()
        return await self.runtime.module_versions(self.id, module)

    async def output(self, tail: int | None = 100) -> list[OutputLine]:
        """See :meth:`Sandbox.output`."""
        await self._bound()
        return await self.runtime.output(self.id, tail=tail)


class AsyncRemoteRuntime:
    """A runtime behind a control endpoint, from asyncio. Made by :func:`connect_async`."""

    def __init__(self, conn: _Connection, address: str) -> None:
        self._conn = conn
        self.address = address
        #: The remote runtime's name.
        self.name = conn.runtime

    async def _request(self, op: str, args: dict[str, Any] | None = None,
                       timeout: float | None = _NO_TIMEOUT_OPS) -> Any:
        return await self._conn.request(op, args or {}, timeout)

    async def __aenter__(self) -> AsyncRemoteRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (the remote runtime keeps running)."""
        await self._conn.close()

    async def create_sandbox(self, sandbox_id: str, path: str | os.PathLike[str],
                             **options: Unpack[CreateOptions]) -> AsyncRemoteSandbox:
        """Create a sandbox from an app directory on the server's machine; the options
        of :meth:`Runtime.create_sandbox` (:class:`~sandbox.options.CreateOptions`)."""
        wire = {name: _wire_option(name, value)
                for name, value in create_options(options).items()}
        info = await self._request("create", {"id": sandbox_id, "path": os.fspath(path),
                                              "options": wire})
        return AsyncRemoteSandbox(self, sandbox_id, info.get("created_at"))

    def sandbox(self, sandbox_id: str) -> AsyncRemoteSandbox:
        """A handle on a sandbox of the remote runtime (bound to it at first use)."""
        return AsyncRemoteSandbox(self, sandbox_id)

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """See :meth:`Runtime.destroy_sandbox`."""
        await self._request("destroy", {"id": sandbox_id})

    async def restart_sandbox(self, sandbox_id: str, *, preserve_state: bool = False
                              ) -> dict[str, Any]:
        """See :meth:`Runtime.restart_sandbox`."""
        return await self._request("restart", {"id": sandbox_id,
                                               "preserve_state": preserve_state})

    async def get_sandbox_info(self, sandbox_id: str) -> dict[str, Any]:
        """See :meth:`Runtime.get_sandbox_info`."""
        return await self._request("info", {"id": sandbox_id})

    async def list_sandboxes(self) -> list[dict[str, Any]]:
        """See :meth:`Runtime.list_sandboxes`."""
        return await self._request("list")

    async def hot_reload(self, sandbox_id: str, *, modules: Iterable[str] | None = None,
                         source: Mapping[str, str] | None = None, extra: Any = None,
                         timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Runtime.hot_reload`."""
        args = {"id": sandbox_id, "modules": list(modules) if modules is not None else None,
                "source": dict(source) if source is not None else None, "extra": extra,
                "timeout": timeout}
        return _report(await self._request("hot_reload", args, timeout + _SLACK))

    async def rollback_module(self, sandbox_id: str, module: str, version: int, *,
                              extra: Any = None, timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Runtime.rollback_module`."""
        args = {"id": sandbox_id, "module": module, "version": version, "extra": extra,
                "timeout": timeout}
        return _report(await self._request("rollback", args, timeout + _SLACK))

    async def module_versions(self, sandbox_id: str, module: str | None = None) -> Any:
        """See :meth:`Runtime.module_versions` (versions as dicts)."""
        return await self._request("module_versions", {"id": sandbox_id, "module": module})

    async def reload_status(self, sandbox_id: str) -> dict[str, Any] | None:
        """See :meth:`Runtime.reload_status`."""
        return await self._request("reload_status", {"id": sandbox_id})

    async def resource_usage(self, sandbox_id: str) -> dict[str, Any] | None:
        """See :meth:`Runtime.resource_usage`."""
        return await self._request("usage", {"id": sandbox_id})

    async def output(self, sandbox_id: str, *, tail: int | None = 100) -> list[OutputLine]:
        """See :meth:`Runtime.output`."""
        lines = await self._request("output", {"id": sandbox_id, "tail": tail})
        return [OutputLine(**line) for line in lines]

    async def health(self) -> dict[str, Any]:
        """See :meth:`Runtime.health`."""
        return await self._request("health")

    async def metrics_text(self) -> str:
        """See :meth:`Runtime.metrics_text`."""
        return await self._request("metrics")

    async def logs(self, *, lines: int | None = None) -> list[dict[str, Any]]:
        """The server's most recent log records (JSON fields of :mod:`runtime.logs`)."""
        return await self._request("logs", {"follow": False, "lines": lines})

    def follow_logs(self, *, lines: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """The recent log records, then each new one as it is logged, until the
        connection closes. Closing the iterator (``aclose()``, or dropping it after a
        ``break``) ends the follow: the server stops sending it records."""
        return self._conn.follow(lines)

    async def stop(self) -> None:
        """Stop the remote runtime (every sandbox is destroyed) and close the connection."""
        await self._request("stop")
        await self.close()


async def connect_async(
    address: str,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: bool | str | os.PathLike[str] | ssl.SSLContext | None = None,
    timeout: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> AsyncRemoteRuntime:
    """Connect to a control endpoint from asyncio (``async with await connect_async(...)``).

    ``tls``: None (plain), True (verify with the system's CAs), a CA file to trust
    (e.g. a self-signed server certificate), or an ``ssl.SSLContext``.

    >>> import asyncio, tempfile, sandbox
    >>> async def main(address):
    ...     async with await sandbox.connect_async(address) as remote:
    ...         sb = await remote.create_sandbox("doc-aremote", "examples/counter")
    ...         return await asyncio.gather(*(sb.call("counter", "incr") for _ in range(3)))
    >>> with tempfile.TemporaryDirectory() as d, sandbox.start(listen=f"unix:{d}/doc.sock"):
    ...     sorted(asyncio.run(main(f"unix:{d}/doc.sock")))
    [1, 2, 3]
    """
    conn = await _open(address, _read_token(token, token_file), tls, timeout, max_frame)
    return AsyncRemoteRuntime(conn, address)


class RemoteSandbox:
    """A sandbox of a remote runtime: the methods of :class:`~sandbox.api.Sandbox`."""

    def __init__(self, runtime: RemoteRuntime, handle: AsyncRemoteSandbox) -> None:
        self.runtime = runtime
        self.id = handle.id
        self._async = handle

    def __repr__(self) -> str:
        return f"<RemoteSandbox {self.id!r} at {self.runtime.address}>"

    def call(self, actor: str, request: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Call ``actor`` and return its reply (errors as :meth:`Sandbox.call`)."""
        return self.runtime._run(self._async.call(actor, request, timeout=timeout))

    def cast(self, actor: str, request: Any) -> None:
        """Send ``request`` to ``actor`` without waiting for it to be handled."""
        self.runtime._run(self._async.cast(actor, request))

    def info(self) -> dict[str, Any]:
        """See :meth:`Sandbox.info`."""
        return self.runtime._run(self._async.info())

    def restart(self, *, preserve_state: bool = False) -> dict[str, Any]:
        """See :meth:`Sandbox.restart`."""
        return self.runtime._run(self._async.restart(preserve_state=preserve_state))

    def destroy(self) -> None:
        """See :meth:`Sandbox.destroy`."""
        self.runtime._run(self._async.destroy())

    def hot_reload(self, *, modules: Iterable[str] | None = None,
                   source: Mapping[str, str] | None = None, extra: Any = None,
                   timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Sandbox.hot_reload` (a ``migrate`` function cannot cross)."""
        return self.runtime._run(self._async.hot_reload(modules=modules, source=source,
                                                        extra=extra, timeout=timeout))

    def rollback_module(self, module: str, version: int, *, extra: Any = None,
                        timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Sandbox.rollback_module`."""
        return self.runtime._run(self._async.rollback_module(module, version, extra=extra,
                                                             timeout=timeout))

    def module_versions(self, module: str | None = None) -> Any:
        """See :meth:`Sandbox.module_versions`."""
        return self.runtime._run(self._async.module_versions(module))

    def output(self, tail: int | None = 100) -> list[OutputLine]:
        """See :meth:`Sandbox.output`."""
        return self.runtime._run(self._async.output(tail))


class RemoteRuntime:
    """A runtime behind a control endpoint: the methods of :class:`~sandbox.api.Runtime`.

    Made by :func:`connect`; safe to use from many threads at once. A context
    manager closing the connection (not the remote runtime: :meth:`stop` does that).
    """

    def __init__(self, address: str, *, token: str | None, tls: Any, timeout: float,
                 max_frame: int) -> None:
        self.address = address
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="sandbox-control-client", daemon=True)
        self._thread.start()
        try:
            conn = self._run(_open(address, token, tls, timeout, max_frame))
        except BaseException:
            self._shut()
            raise
        self._async = AsyncRemoteRuntime(conn, address)
        self.name = self._async.name

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _shut(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        self._loop.close()

    def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._async.close())
        finally:
            self._shut()

    def __enter__(self) -> RemoteRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_sandbox(self, sandbox_id: str, path: str | os.PathLike[str],
                       **options: Unpack[CreateOptions]) -> RemoteSandbox:
        """Create a sandbox from an app directory on the server's machine; the options
        of :meth:`Runtime.create_sandbox` (:class:`~sandbox.options.CreateOptions`)."""
        return RemoteSandbox(self, self._run(self._async.create_sandbox(sandbox_id, path,
                                                                        **options)))

    def sandbox(self, sandbox_id: str) -> RemoteSandbox:
        """A handle on a sandbox of the remote runtime (SandboxNotFound if there is none)."""
        handle = self._async.sandbox(sandbox_id)
        self._run(handle._bound())
        return RemoteSandbox(self, handle)

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """See :meth:`Runtime.destroy_sandbox`."""
        self._run(self._async.destroy_sandbox(sandbox_id))

    def restart_sandbox(self, sandbox_id: str, *, preserve_state: bool = False) -> dict[str, Any]:
        """See :meth:`Runtime.restart_sandbox`."""
        return self._run(self._async.restart_sandbox(sandbox_id, preserve_state=preserve_state))

    def get_sandbox_info(self, sandbox_id: str) -> dict[str, Any]:
        """See :meth:`Runtime.get_sandbox_info`."""
        return self._run(self._async.get_sandbox_info(sandbox_id))

    def list_sandboxes(self) -> list[dict[str, Any]]:
        """See :meth:`Runtime.list_sandboxes`."""
        return self._run(self._async.list_sandboxes())

    def hot_reload(self, sandbox_id: str, *, modules: Iterable[str] | None = None,
                   source: Mapping[str, str] | None = None, extra: Any = None,
                   timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Runtime.hot_reload`."""
        return self._run(self._async.hot_reload(sandbox_id, modules=modules, source=source,
                                                extra=extra, timeout=timeout))

    def rollback_module(self, sandbox_id: str, module: str, version: int, *,
                        extra: Any = None, timeout: float = 30.0) -> ReloadReport:
        """See :meth:`Runtime.rollback_module`."""
        return self._run(self._async.rollback_module(sandbox_id, module, version, extra=extra,
                                                     timeout=timeout))

    def module_versions(self, sandbox_id: str, module: str | None = None) -> Any:
        """See :meth:`Runtime.module_versions`."""
        return self._run(self._async.module_versions(sandbox_id, module))

    def reload_status(self, sandbox_id: str) -> dict[str, Any] | None:
        """See :meth:`Runtime.reload_status`."""
        return self._run(self._async.reload_status(sandbox_id))

    def resource_usage(self, sandbox_id: str) -> dict[str, Any] | None:
        """See :meth:`Runtime.resource_usage`."""
        return self._run(self._async.resource_usage(sandbox_id))

    def output(self, sandbox_id: str, *, tail: int | None = 100) -> list[OutputLine]:
        """See :meth:`Runtime.output`."""
        return self._run(self._async.output(sandbox_id, tail=tail))

    def health(self) -> dict[str, Any]:
        """See :meth:`Runtime.health`."""
        return self._run(self._async.health())

    def metrics_text(self) -> str:
        """See :meth:`Runtime.metrics_text`."""
        return self._run(self._async.metrics_text())

    def logs(self, *, lines: int | None = None) -> list[dict[str, Any]]:
        """The server's most recent log records."""
        return self._run(self._async.logs(lines=lines))

    def follow_logs(self, *, lines: int | None = None) -> Iterator[dict[str, Any]]:
        """The recent log records, then each new one as it is logged (a blocking
        iterator; it ends when the connection closes). Closing it (``close()``, or
        dropping it) ends the follow: the server stops sending it records."""
        records: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for record in self._async.follow_logs(lines=lines):
                    records.put(record)
            except BaseException as exc:
                records.put(exc)
            records.put(None)

        task = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while (item := records.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            task.cancel()

    def stop(self) -> None:
        """Stop the remote runtime (every sandbox is destroyed) and close the connection."""
        self._run(self._async._request("stop"))
        self.close()


def connect(
    address: str,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: bool | str | os.PathLike[str] | ssl.SSLContext | None = None,
    timeout: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> RemoteRuntime:
    """Connect to a runtime's control endpoint (``sandbox run APP --listen ADDRESS``,
    or ``sandbox.start(listen=ADDRESS)``). ``token`` or ``token_file``: the server's
    token (required over TCP). ``tls``: as :func:`connect_async`.

    >>> import tempfile, sandbox
    >>> with tempfile.TemporaryDirectory() as d, sandbox.start(listen=f"unix:{d}/doc.sock"):
    ...     with sandbox.connect(f"unix:{d}/doc.sock") as remote:
    ...         remote.health()["status"]
    'ok'
    """
    return RemoteRuntime(address, token=_read_token(token, token_file), tls=tls,
                         timeout=timeout, max_frame=max_frame)
