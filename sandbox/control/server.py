"""The control endpoint: a runtime served over a unix socket or TCP.

One asyncio event loop in a daemon thread accepts clients and reads their
frames (:mod:`sandbox.control.protocol`); calls to sandboxes are awaited on that
loop (:mod:`sandbox.aio`: no thread per call), other requests run in a small
thread pool. What it defends against, each with a test (tests/test_control.py):

- a client that does not authenticate within ``auth_timeout`` seconds, or sends
  anything but the ``hello`` first, or a wrong token, is disconnected (the token
  is compared in constant time); over TCP a token is required;
- a frame whose length prefix is over ``max_frame``, or that does not decode, ends
  that connection with an error frame; the server carries on (an oversized frame's
  body is read and dropped first, for at most ``frame_timeout`` seconds, so that the
  client's write does not break before it can read why);
- a frame whose body does not arrive within ``frame_timeout`` seconds (a client
  stalling mid-frame) ends that connection;
- a client that does not read its replies: once ``max_buffer`` bytes wait to be
  sent to it, it is disconnected; log records for it are dropped first;
- more than ``max_clients`` connections: the newest is told so and closed;
- more than ``max_pending`` requests in flight on one connection: the server stops
  reading from it until some finish (back pressure, not an error).

>>> import sandbox, tempfile, os
>>> with tempfile.TemporaryDirectory() as d, sandbox.start(listen=f"unix:{d}/s.sock") as rt:
...     mode = os.stat(f"{d}/s.sock").st_mode & 0o777
...     oct(mode), str(rt.control_address) == f"unix:{d}/s.sock"
('0o600', True)
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import os
import secrets
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime import logs
from runtime.errors import ConfigError, ProtocolError, SandboxNotFound
from runtime.wire.mailbox import CALL, ERROR, PREFIX_SIZE, REPLY, SYSTEM, Codec
from sandbox.aio import AsyncRuntime, AsyncSandbox
from sandbox.api import Sandbox
from sandbox.control.protocol import (
    DEFAULT_MAX_FRAME,
    OPS,
    PROTOCOL_VERSION,
    Address,
    AuthenticationError,
    ControlError,
    error_to_wire,
    make_codec,
    parse_address,
    plain,
)

if TYPE_CHECKING:
    from sandbox.api import Runtime

__all__ = ["ControlServer", "Limits", "load_token", "tls_context"]

log = logging.getLogger("sandbox.control")

#: Log records kept for ``sandbox logs`` (without ``-f``).
LOG_BACKLOG = 1000


@dataclass(frozen=True)
class Limits:
    """What one server allows its clients."""

    max_clients: int = 64
    max_frame: int = DEFAULT_MAX_FRAME
    max_pending: int = 1024
    max_buffer: int = 16 * 1024 * 1024
    auth_timeout: float = 10.0
    frame_timeout: float = 30.0


def load_token(token_file: str | os.PathLike[str]) -> str:
    """The token in ``token_file``; made (random, mode 0600) if the file does not exist.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     t = load_token(f"{d}/token")
    ...     load_token(f"{d}/token") == t, oct(os.stat(f"{d}/token").st_mode & 0o777), len(t) >= 32
    (True, '0o600', True)
    """
    path = os.fspath(token_file)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as f:
            token = f.read().strip()
        if not token:
            raise ConfigError("token_file", path, "a file holding a token (this one is empty; "
                              "delete it to have one generated)") from None
        return token
    except OSError as exc:
        raise ConfigError("token_file", path, f"a path where a token file can be made ({exc})"
                          ) from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def tls_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server TLS context from a certificate chain and its private key (PEM files)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls", (os.fspath(cert), os.fspath(key)),
                          f"a (certificate, key) pair of readable PEM files ({exc})") from None
    return ctx


class _Client:
    """One connection: its writer and what it has in flight."""

    def __init__(self, server: ControlServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.codec = server.codec
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(server.limits.max_pending)
        self.following: set[int] = set()
        self.closed = False
        #: Bytes of a refused (oversized) frame still on their way from the client.
        self.unread = 0

    def send(self, kind: str, ref: int | None, target: str | None, payload: Any) -> None:
        if self.closed:
            return
        try:
            data = self.codec.frame(kind, ref, target, payload)
        except (TypeError, ValueError, ProtocolError) as exc:  # a result that cannot cross
            data = self.codec.frame(ERROR, ref, None, error_to_wire(exc))
        if self.writer.transport.get_write_buffer_size() + len(data) > self.server.limits.max_buffer:
            log.warning("control client %s does not read its replies: disconnected",
                        self.peer())
            self.close(discard=True)
            return
        self.writer.write(data)

    def send_record(self, ref: int, record: dict[str, Any]) -> None:
        # Log records are dropped for a client that reads slowly, before replies are.
        if self.writer.transport.get_write_buffer_size() < self.server.limits.max_buffer // 2:
            self.send(SYSTEM, ref, "log", record)

    def peer(self) -> str:
        return str(self.writer.get_extra_info("peername") or "unix client")

    def close(self, *, discard: bool = False) -> None:
        """Close the connection. ``discard``: drop what still waits to be sent and close
        at once; a plain close waits for the buffer to drain, which a client that does
        not read never lets happen (its socket and buffer would stay open)."""
        if not self.closed:
            self.closed = True
            if discard:
                self.writer.transport.abort()
            else:
                self.writer.close()

    async def linger(self) -> None:
        """Read and drop the rest of a refused frame (at most its announced size, for
        at most ``frame_timeout`` seconds) before closing: closing with it unread would
        break the client's write (EPIPE) before it reads the error frame that says why,
        the lingering close HTTP servers do for the same reason."""
        left, self.unread = self.unread, 0
        try:
            async with asyncio.timeout(self.server.limits.frame_timeout):
                while left > 0:
                    chunk = await self.reader.read(min(left, 1 << 16))
                    if not chunk:
                        return
                    left -= len(chunk)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass

    async def read_frame(self, timeout: float | None) -> Any:
        """The next envelope; ProtocolError for an oversized or undecodable frame."""
        prefix = await asyncio.wait_for(self.reader.readexactly(PREFIX_SIZE), timeout)
        size = int.from_bytes(prefix, "big")
        limit = self.server.limits.max_frame
        if size > limit:
            self.unread = size
            raise ProtocolError(f"frame of {size} bytes is over this server's max_frame={limit}")
        body = await asyncio.wait_for(self.reader.readexactly(size),
                                      self.server.limits.frame_timeout)
        return self.codec.decode_envelope(body)


class _LogTap(logging.Handler):
    """Hands every record of the ``runtime``/``sandbox`` loggers to the server's loop."""

    def __init__(self, server: ControlServer) -> None:
        super().__init__()
        self.server = server
        self.json = logs.JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = json.loads(self.json.format(record))
        except Exception:  # a record that cannot be formatted is not worth a crash
            return
        loop = self.server._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.server._publish, data)
            except RuntimeError:  # the loop closed meanwhile
                pass


class ControlServer:
    """Serves ``runtime`` at ``address`` until :meth:`stop`. Made by ``sandbox.start(listen=...)``.

    ``token``: required from clients (None: no token, allowed for unix sockets
    only, whose mode 0600 restricts them to this user). ``tls``: a server
    ``ssl.SSLContext`` (TCP only). ``on_stop``: what a client's ``stop`` request
    runs (default: stop the runtime).
    """

    def __init__(
        self,
        runtime: Runtime,
        address: str | Address,
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        limits: Limits = Limits(),
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.requested = parse_address(address)
        if self.requested.kind == "tcp" and not token:
            raise ConfigError("token", token, "a token for a TCP endpoint (give token_file=)")
        if tls is not None and self.requested.kind != "tcp":
            raise ConfigError("tls", "given", "TLS only with a tcp: address")
        self.token = token
        self.tls = tls
        self.limits = limits
        self.codec: Codec = make_codec(limits.max_frame)
        self.on_stop = on_stop or runtime.stop
        self.address: Address = self.requested
        self._aio = AsyncRuntime(runtime)
        self._handles: dict[tuple[Any, Any], AsyncSandbox] = {}
        self._clients: set[_Client] = set()
        self._serving: set[asyncio.Task[Any]] = set()
        self._backlog: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_BACKLOG)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-control")
        self._tap = _LogTap(self)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> ControlServer:
        """Bind, then serve from a daemon thread. A bad address raises ConfigError."""
        sock = self._bind()
        loop = asyncio.new_event_loop()
        loop.set_default_executor(self._pool)
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)

            async def begin() -> None:
                if self.requested.kind == "unix":
                    self._server = await asyncio.start_unix_server(self._serve, sock=sock)
                else:
                    self._server = await asyncio.start_server(self._serve, sock=sock,
                                                              ssl=self.tls)

            try:
                loop.run_until_complete(begin())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name=f"{self.runtime.name}/control",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            sock.close()
            raise failure[0]
        for name in ("runtime", "sandbox"):
            logging.getLogger(name).addHandler(self._tap)
        log.info("control endpoint listening on %s", self.address)
        return self

    def _bind(self) -> socket.socket:
        addr = self.requested
        if addr.kind == "unix":
            _clear_stale_socket(addr.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(addr.path)
                # Before listen(), nobody can connect: the mode is set before anyone can.
                os.chmod(addr.path, 0o600)
                sock.listen(128)
            except OSError as exc:
                sock.close()
                raise ConfigError("listen", str(addr), f"a socket path this process can "
                                  f"create ({exc})") from None
            return sock
        try:
            infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError as exc:
            raise ConfigError("listen", str(addr), f"a host and port this process can listen "
                              f"on ({exc})") from None
        host, port = sock.getsockname()[:2]
        self.address = Address("tcp", host=host, port=port)
        return sock

    def stop(self) -> None:
        """Disconnect every client, stop serving, remove the socket file. Idempotent."""
        loop, self._loop = self._loop, None
        for name in ("runtime", "sandbox"):
            logging.getLogger(name).removeHandler(self._tap)
        if loop is not None and self._thread is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
            if self._thread is not threading.current_thread():
                self._thread.join(30.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.address.kind == "unix":
            try:
                os.unlink(self.address.path)
            except OSError:
                pass

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.close()
        tasks = [t for t in self._serving if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- connections ----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(self, reader, writer)
        me = asyncio.current_task()
        if me is not None:
            self._serving.add(me)
            me.add_done_callback(self._serving.discard)
        if len(self._clients) >= self.limits.max_clients:
            try:  # read its hello first: closing on unread data would reset the connection
                await client.read_frame(self.limits.auth_timeout)
            except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                pass
            client.send(ERROR, 0, None, error_to_wire(ControlError(
                f"too many clients: this server takes max_clients={self.limits.max_clients} "
                "at once; close another connection and retry")))
            client.close()
            return
        self._clients.add(client)
        try:
            await self._authenticate(client)
            while not client.closed:
                await client.slots.acquire()  # back pressure past max_pending requests
                try:
                    env = await client.read_frame(None)
                except BaseException:
                    client.slots.release()
                    raise
                task = asyncio.create_task(self._handle(client, env))
                client.tasks.add(task)
                task.add_done_callback(client.tasks.discard)
        except ProtocolError as exc:
            log.info("control client %s broke the protocol: %s", client.peer(), exc)
            client.send(ERROR, None, None, error_to_wire(exc))
            await client.linger()
        except AuthenticationError as exc:
            log.warning("control client %s refused: %s", client.peer(), exc)
            client.send(ERROR, 0, None, error_to_wire(exc))
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
            pass  # gone, or too slow: nothing more to tell it
        except asyncio.CancelledError:
            pass  # the server is stopping; ending quietly spares asyncio's error report
        finally:
            self._clients.discard(client)
            for task in client.tasks:
                task.cancel()
            if not client.closed:  # let its last error frame go out, briefly
                try:
                    await asyncio.wait_for(client.writer.drain(), 1.0)
                except (ConnectionError, TimeoutError, ssl.SSLError):
                    client.close(discard=True)
            client.close()

    async def _authenticate(self, client: _Client) -> None:
        try:
            env = await client.read_frame(self.limits.auth_timeout)
        except TimeoutError:
            raise AuthenticationError(
                f"no hello within auth_timeout={self.limits.auth_timeout}s") from None
        if env.kind != SYSTEM or env.target != "hello" or not isinstance(env.payload, dict):
            raise AuthenticationError("the first frame must be the hello; see docs/operations.md")
        given = env.payload.get("token")
        if self.token is not None and not (
            isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode())
        ):
            raise AuthenticationError("wrong or missing token; give the one in the server's "
                                      "token file (sandbox --token-file, or token=)")
        client.send(REPLY, env.ref, None, {"version": PROTOCOL_VERSION,
                                           "runtime": self.runtime.name})

    async def _handle(self, client: _Client, env: Any) -> None:
        try:
            if env.kind != CALL or env.ref is None:
                raise ProtocolError(f"expected a call frame with a ref, got a {env.kind} frame")
            result = await self._dispatch(client, env.ref, env.target, env.payload)
            client.send(REPLY, env.ref, None, plain(result))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            client.send(ERROR, env.ref, None, error_to_wire(exc))
        finally:
            client.slots.release()

    # -- requests -------------------------------------------------------------------
    async def _handle_of(self, sandbox_id: Any, created: Any) -> AsyncSandbox:
        if not isinstance(sandbox_id, str):
            raise TypeError(f"id must be a sandbox id (a str), not {type(sandbox_id).__name__}")
        key = (sandbox_id, created)
        handle = self._handles.get(key)
        if handle is None:
            if created is None:  # follows the id: bound at its first call
                handle = self._aio.sandbox(sandbox_id)
            else:  # one sandbox: the one created at `created` (checked at its first use)
                bound = Sandbox(self.runtime, sandbox_id)
                bound._created = created
                handle = AsyncSandbox(bound)
            self._handles[key] = handle
        return handle

    async def _on_sandbox(self, args: dict[str, Any], op: Callable[[AsyncSandbox], Any]) -> Any:
        key = (args.get("id"), args.get("created"))
        try:
            return await op(await self._handle_of(*key))
        except SandboxNotFound:
            # The cached handle's sandbox is gone; a handle following the id tries the
            # sandbox that has the id now, if any.
            if self._handles.pop(key, None) is None or key[1] is not None:
                raise
            return await op(await self._handle_of(*key))

    async def _dispatch(self, client: _Client, ref: int, op: Any, args: Any) -> Any:
        if op not in OPS:
            raise ValueError(f"unknown request {op!r}; known: {', '.join(sorted(OPS))}")
        if not isinstance(args, dict):
            raise TypeError(f"the arguments of {op!r} must be a map, not {type(args).__name__}")
        unknown = set(args) - set(OPS[op])
        if unknown:
            raise TypeError(f"{op!r} takes no argument {sorted(unknown)[0]!r}; it takes: "
                            f"{', '.join(OPS[op]) or 'nothing'}")
        rt, a = self.runtime, args
        if op == "call":
            return await self._on_sandbox(a, lambda h: h.call(
                _text(a, "actor"), a.get("request"), timeout=a.get("timeout", 5.0)))
        if op == "cast":
            return await self._on_sandbox(a, lambda h: h.cast(_text(a, "actor"),
                                                              a.get("request")))
        if op == "logs":
            lines = a.get("lines")
            recent = list(self._backlog)
            if lines is not None:
                recent = recent[len(recent) - min(int(lines), len(recent)):]
            if a.get("follow"):
                client.following.add(ref)
            return recent
        if op == "unfollow":  # answered after the discard: no record for it follows
            if not isinstance(a.get("ref"), int):
                raise TypeError("unfollow needs 'ref': the ref of the logs request it ends")
            if a["ref"] not in client.following:
                return False
            client.following.discard(a["ref"])
            return True
        if op == "stop":
            threading.Thread(target=self.on_stop, name="sandbox-control-stop").start()
            return None
        call: Callable[[], Any] = {
            "list": lambda: rt.list_sandboxes(),
            "create": lambda: rt.create_sandbox(a["id"], a["path"],
                                                **(a.get("options") or {})).info(),
            "destroy": lambda: rt.destroy_sandbox(a["id"]),
            "restart": lambda: rt.restart_sandbox(a["id"],
                                                  preserve_state=bool(a.get("preserve_state"))),
            "info": lambda: rt.get_sandbox_info(a["id"]),
            "hot_reload": lambda: rt.hot_reload(
                a["id"], **{k: v for k, v in a.items() if k != "id"}).as_dict(),
            "rollback": lambda: rt.rollback_module(
                a["id"], a["module"], a["version"], extra=a.get("extra"),
                timeout=a.get("timeout", 30.0)).as_dict(),
            "module_versions": lambda: rt.module_versions(a["id"], a.get("module")),
            "reload_status": lambda: rt.reload_status(a["id"]),
            "usage": lambda: rt.resource_usage(a["id"]),
            "output": lambda: rt.output(a["id"], tail=a.get("tail", 100)),
            "health": lambda: rt.health(),
            "metrics": lambda: rt.metrics_text(),
        }[op]
        if op == "destroy":  # its handles are of no use any more
            for key in [k for k in self._handles if k[0] == a.get("id")]:
                del self._handles[key]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, call)
        except KeyError as exc:
            if type(exc) is KeyError:  # a missing argument, not SandboxNotFound
                raise TypeError(f"{op!r} needs the argument {exc.args[0]!r}") from None
            raise

    def _publish(self, record: dict[str, Any]) -> None:
        self._backlog.append(record)
        for client in list(self._clients):
            for ref in client.following:
                client.send_record(ref, record)


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise TypeError(f"argument {name!r} must be a str, not {type(value).__name__}")
    return value


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file no server answers on (left by a killed one)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError("listen", f"unix:{path}", "a path that is free or a stale socket "
                          "(this is another kind of file)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover
        return
    finally:
        probe.close()
    raise ConfigError("listen", f"unix:{path}", "a path no running server listens on "
                      "(another runtime serves this one)")
