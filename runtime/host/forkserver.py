"""The fork server every sandbox process is started from.

Sandboxes are forked by a small, single-threaded server process that imports the
runtime once (:data:`PRELOAD`) and forks a fresh child per request, so children
share those pages copy-on-write. The host itself never calls plain ``fork()``: it
has threads, and forking a threaded process copies locks in whatever state other
threads left them.

This is the project's own server rather than multiprocessing's ``forkserver``,
because a sandbox must inherit nothing of the host's (issue 11):

- the server is started by ``subprocess`` with an empty argv tail and a minimal
  environment (:data:`SERVER_ENV`), so the environment block and command line a
  sandbox inherits hold no host secrets; ``sys.path`` reaches it on its stdin;
- no multiprocessing plumbing is inherited: no "alive" pipe, no resource tracker
  pipe, no authentication key, no listening socket anyone could connect to. The
  server talks to the host over one private socketpair;
- the forked child keeps exactly: fd 0 on ``/dev/null``, fd 1 and fd 2 on the
  output pipes the host made for that sandbox, fd 3 its channel; every other
  descriptor is closed before any runtime or user code runs.

For a host that is not root, a request may ask for a user and pid namespace: the
server then forks through :func:`runtime.child.userns.spawn` (it becomes a child
subreaper, so the sandbox and its namespace's init are its children).

A sandbox holds no descriptor of the server's, so it cannot send it a byte. If the
server dies anyway, the next :func:`spawn` starts a new one; running sandboxes do
not notice (their channels are direct). Their exit is then seen through a pidfd
and reported with the exit code :data:`EXIT_UNKNOWN` (the status went with the
server). When the host goes away, the server sees EOF, kills the process group of
each child it still has, and exits.

>>> isinstance(helper_pids(), set)
True
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's functions without its enum lookups
import errno
import gc
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from runtime import logs as _logs
from runtime.child import isolation as _isolation
from runtime.child import netns as _netns
from runtime.child import seccomp as _seccomp
from runtime.child import userns as _userns
from runtime.errors import SandboxError

__all__ = [
    "EXIT_UNKNOWN",
    "PRELOAD",
    "SERVER_ENV",
    "Child",
    "ForkServerError",
    "ensure_running",
    "helper_fds",
    "helper_pids",
    "helper_threads",
    "server_pid",
    "spawn",
    "stop_server",
]

#: Modules imported once by the server, shared (copy-on-write) by every child.
#: What every sandbox needs is imported once, here, so its pages are shared
#: instead of costing each sandbox its own copy (measured: 6.4 MiB USS per
#: isolated sandbox without the last three, 5.1 MiB with them): the GenServer
#: every app imports, ``ctypes`` for the isolation layers and ``resource`` for
#: the rlimits.
PRELOAD: list[str] = ["runtime.child.boot", "runtime.genserver", "ctypes", "resource"]

#: Host variables the server (and so every sandbox's inherited environment block)
#: gets; a profile's ``env_allow`` passes others per sandbox, explicitly.
SERVER_ENV: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

#: The exit code reported for a child whose server died before it did.
EXIT_UNKNOWN = 255

#: How long :func:`spawn` waits for the server to report the new child's pid.
SPAWN_TIMEOUT = 30.0

# Host -> server: header (body length, request id, flags) carrying the fds, then the body.
_REQUEST = struct.Struct(">IQB")
_USERNS = 1  # flag: start the child in its own user and pid namespace (runtime.child.userns)
_NETNS = 2  # flag: the child enters a fresh network namespace of the pool (runtime.child.netns)
# Server -> host: (kind, key, value).
_RECORD = struct.Struct(">BQq")
_STARTED, _FAILED, _EXITED = 1, 2, 3
_CHANNEL_FD = 3  # where a child finds its channel
#: Seconds without a request before the server makes a namespace for its pool.
_POOL_IDLE = 0.01

_BOOTSTRAP = (
    "import pickle,sys;d=pickle.loads(sys.stdin.buffer.read());sys.path[:]=d['path'];"
    "from runtime.host.forkserver import _serve;_serve(d)"
)


class ForkServerError(SandboxError):
    """The fork server could not start a child (it died, or fork failed)."""


class Child:
    """A process forked by the server: ``pid``, ``sentinel``, ``exitcode``, ``close()``.

    ``sentinel`` is a descriptor that becomes readable once the exit code is known
    (what :func:`multiprocessing.connection.wait` takes). ``exitcode`` is None while
    the child runs, negative for a signal, :data:`EXIT_UNKNOWN` if its server died
    first.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        self._r, self._w = os.pipe()
        self.sentinel = self._r
        try:
            # Opened now, while the pid surely is this child: watching it through a
            # pidfd later (if its server dies) cannot mistake a reused pid for it.
            self._pidfd: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self._pidfd = None
        self._lock = threading.Lock()

    def _exited(self, code: int) -> None:
        with self._lock:
            if self.exitcode is not None or self._w < 0:
                return
            self.exitcode = code
            os.write(self._w, b"x")

    def close(self) -> None:
        """Release the descriptors (after the child has exited)."""
        with self._lock:
            for fd in (self._r, self._w, self._pidfd):
                if fd is not None and fd >= 0:
                    os.close(fd)
            self._r = self._w = -1
            self._pidfd = None
        _forget(self)

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} exitcode={self.exitcode}>"


class _Server:
    """The host's handle on one running fork server."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = {k: os.environ[k] for k in SERVER_ENV if k in os.environ}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-B", "-c", _BOOTSTRAP],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
                close_fds=True,
            )
        finally:
            theirs_fd = theirs.fileno()
            theirs.close()
        assert self.proc.stdin is not None
        # "" (the current directory) made absolute: the server must import the
        # runtime from where the host did.
        path = [p or os.getcwd() for p in sys.path]
        init = {"path": path, "fd": theirs_fd, "preload": list(PRELOAD)}
        self.proc.stdin.write(pickle.dumps(init))
        self.proc.stdin.close()
        self.pid = self.proc.pid
        self.owner = os.getpid()  # a forked copy of the host must not share this socket
        self.sock = ours
        self.dead = False
        self._send_lock = threading.Lock()
        self._state = threading.Lock()
        self._ids = 0
        self._waiting: dict[int, list[Any]] = {}  # request id -> [event, child or error]
        self.children: dict[int, Child] = {}
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()

    def spawn(self, fds: list[int], body: bytes, timeout: float, flags: int = 0) -> Child:
        done = threading.Event()
        with self._state:
            if self.dead:
                raise ForkServerError("the fork server is gone")
            self._ids += 1
            req = self._ids
            slot: list[Any] = [done, None]
            self._waiting[req] = slot
        try:
            with self._send_lock:
                self.sock.sendmsg(
                    [_REQUEST.pack(len(body), req, flags)],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))],
                )
                self.sock.sendall(body)
        except OSError as exc:
            with self._state:
                self._waiting.pop(req, None)
            raise ForkServerError(f"the fork server is gone: {exc}") from exc
        if not done.wait(timeout):
            with self._state:
                self._waiting.pop(req, None)
            raise ForkServerError(f"the fork server did not start a child within {timeout}s")
        result = slot[1]
        if isinstance(result, Child):
            return result
        raise ForkServerError(str(result))

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    break
                buf += data
                while len(buf) >= _RECORD.size:
                    kind, key, value = _RECORD.unpack_from(buf)
                    buf = buf[_RECORD.size:]
                    self._record(kind, key, value)
        except OSError:
            pass
        self._died()

    def _record(self, kind: int, key: int, value: int) -> None:
        with self._state:
            if kind == _EXITED:
                child = self.children.pop(key, None)
                slot = None
            else:
                slot = self._waiting.pop(key, None)
                child = None
                if kind == _STARTED and slot is not None:
                    child = Child(value)
                    self.children[value] = child
        if kind == _EXITED:
            if child is not None:
                child._exited(value)
            return
        if slot is None:  # the requester gave up: nobody will watch this child
            if kind == _STARTED:
                _kill_group(value)  # the server reaps it; no status pipe is left open
            return
        slot[1] = child if kind == _STARTED else (
            f"fork failed: {os.strerror(value)}" if value > 0 else
            f"the sandbox's user namespace could not be created: {os.strerror(-value)}")
        slot[0].set()

    def _died(self) -> None:
        with self._state:
            self.dead = True
            waiting, self._waiting = self._waiting, {}
            orphans = list(self.children.values())
        for slot in waiting.values():
            slot[1] = "the fork server died while starting the child"
            slot[0].set()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        if orphans:
            _watch_orphans(orphans)

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._reader is not threading.current_thread():
            self._reader.join(10.0)


def _watch_orphans(orphans: list[Child]) -> None:
    """Children of a dead server: report each exit (code unknown) when its pidfd fires."""
    poller = select.poll()
    by_fd: dict[int, Child] = {}
    for child in orphans:
        fd = child._pidfd
        if fd is None or fd < 0:
            child._exited(EXIT_UNKNOWN)
            continue
        by_fd[fd] = child
        poller.register(fd, select.POLLIN)
    if not by_fd:
        return

    def watch() -> None:
        while by_fd:
            for fd, _ev in poller.poll(1000):
                child = by_fd.pop(fd, None)
                poller.unregister(fd)
                if child is not None:
                    child._exited(EXIT_UNKNOWN)
            for fd, child in list(by_fd.items()):
                if child._pidfd is None:  # closed by its owner meanwhile
                    by_fd.pop(fd, None)
                    poller.unregister(fd)

    threading.Thread(target=watch, name="forkserver-orphans", daemon=True).start()


_lock = threading.Lock()
_server: _Server | None = None


def _current() -> _Server:
    global _server
    with _lock:
        if _server is None or _server.dead or _server.owner != os.getpid():
            _server = _Server()
        return _server


def _forget(child: Child) -> None:
    server = _server
    if server is not None:
        with server._state:
            if server.children.get(child.pid) is child:
                del server.children[child.pid]


def spawn(
    target: Callable[..., Any],
    args: tuple = (),
    *,
    fds: tuple[int, int, int],
    timeout: float = SPAWN_TIMEOUT,
    userns: bool = False,
    netns: bool = False,
) -> Child:
    """Fork a child that runs ``target(channel, *args)``; returns its :class:`Child`.

    ``fds`` are the channel socket, and the write ends of the child's stdout and
    stderr pipes (the caller keeps its own descriptors; the child gets copies).
    ``target`` and ``args`` are pickled (``target`` by reference: it must live in
    an importable module). A server found dead is restarted once. ``userns``: the
    child starts as pid 2 of its own user and pid namespace (a host that is not
    root; :mod:`runtime.child.userns`). ``netns``: the child enters a fresh network
    namespace the server made ahead (:mod:`runtime.child.netns`), if one is ready,
    before ``target`` runs (a sandbox's isolation then makes none of its own).

    >>> import runtime.host.forkserver as fs
    >>> callable(fs.spawn)
    True
    """
    body = pickle.dumps((target, args), protocol=pickle.HIGHEST_PROTOCOL)
    for attempt in (1, 2):
        server = _current()
        try:
            flags = (_USERNS if userns else 0) | (_NETNS if netns and not userns else 0)
            return server.spawn(list(fds), body, timeout, flags)
        except ForkServerError:
            if attempt == 2 or not server.dead:
                raise
            server._reader.join(10.0)  # let it settle, then start a new one
    raise AssertionError("unreachable")


def ensure_running() -> int:
    """Start the fork server now if none runs; returns its pid.

    >>> ensure_running() == server_pid()
    True
    """
    return _current().pid


def server_pid() -> int | None:
    """Pid of the running fork server, or None if none is running.

    >>> server_pid() is None or isinstance(server_pid(), int)
    True
    """
    server = _server
    return None if server is None or server.dead else server.pid


def helper_pids() -> set[int]:
    """Pids of the runtime's long-lived helper processes (the fork server).

    They live as long as the host; everything else among the host's descendants
    is a sandbox (or a leak).

    >>> isinstance(helper_pids(), set)
    True
    """
    pid = server_pid()
    return set() if pid is None else {pid}


def helper_fds() -> set[int]:
    """Descriptors the host holds for the running fork server (its control socket).

    >>> isinstance(helper_fds(), set)
    True
    """
    server = _server
    if server is None or server.dead:
        return set()
    fd = server.sock.fileno()
    return {fd} if fd >= 0 else set()


def helper_threads() -> set[int]:
    """Idents of the host threads serving the running fork server (its reader).

    >>> isinstance(helper_threads(), set)
    True
    """
    server = _server
    if server is None or server.dead or server._reader.ident is None:
        return set()
    return {server._reader.ident}


def stop_server() -> None:
    """Stop the fork server (it kills the process groups of its remaining children).

    For tests and tools; :func:`spawn` starts a new one when needed.
    """
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.stop()


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# -- the server process ----------------------------------------------------------------


def _serve(init: dict[str, Any]) -> None:
    """Main loop of the fork server process (started by :class:`_Server`)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    for name in init.get("preload", ()):
        try:
            __import__(name)
        except ImportError:
            pass
    _prepare_children()
    ctrl = socket.socket(fileno=init["fd"])
    ctrl.setblocking(True)
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # Ctrl-C in the host's terminal reaches the whole foreground group: the host
    # decides what happens to its sandboxes, not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: set[int] = set()
    pool = _netns.Pool()
    try:
        while True:
            # Requests first; the pool is topped up only after a quiet spell, so its
            # work does not compete with the start of the child just forked.
            idle = _POOL_IDLE if pool.wanted() else None
            ready, _, _ = select.select([ctrl.fileno(), sig_r], [], [], idle)
            if not ready:
                pool.top_up()
                continue
            if sig_r in ready:
                try:
                    while os.read(sig_r, 512):
                        pass
                except BlockingIOError:
                    pass
                _reap(ctrl, children)
            if ctrl.fileno() in ready:
                request = _read_request(ctrl)
                if request is None:
                    break
                req, fds, body, flags = request
                net = pool.take() if flags & _NETNS else None
                try:
                    if flags & _USERNS:
                        pid = _userns.spawn(lambda: _child(fds, body))
                    else:
                        pid = os.fork()
                        if pid == 0:
                            _child(fds, body, net)  # never returns
                except OSError as exc:
                    err = exc.errno or errno.EAGAIN
                    _send(ctrl, _FAILED, req, -err if flags & _USERNS else err)
                else:
                    children.add(pid)
                    _send(ctrl, _STARTED, req, pid)
                for fd in fds if net is None else [*fds, net]:  # the child holds the only one
                    os.close(fd)
    finally:
        pool.close()
        # The host is gone: so must everything it started through us be.
        for pid in children:
            _kill_group(pid)
        os._exit(0)


def _prepare_children() -> None:
    """Work every sandbox's start would repeat, done once here before any fork: the
    seccomp programs are built (0.2-0.4 ms of each start before, measured as the
    layer's step), so a child only loads one; the ctypes modules a sandbox unloads
    are noted (a pass over ``sys.modules`` in each wrote 0.3 MiB of its pages); the
    loggers' level answers are memoised (see :func:`runtime.logs.fill_level_caches`)."""
    _seccomp.prepare()
    _isolation.note_preloaded()
    _logs.fill_level_caches()


def _reap(ctrl: socket.socket, children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(ctrl, _EXITED, pid, os.waitstatus_to_exitcode(status))


def _send(ctrl: socket.socket, kind: int, key: int, value: int) -> None:
    try:
        ctrl.sendall(_RECORD.pack(kind, key, value))
    except OSError:
        pass  # the host is gone; the loop sees EOF next


def _read_exact(ctrl: socket.socket, n: int, head: bytes = b"") -> bytes | None:
    chunks = [head]
    got = len(head)
    while got < n:
        data = ctrl.recv(min(n - got, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _read_request(ctrl: socket.socket) -> tuple[int, list[int], bytes, int] | None:
    msg, fds, _flags, _addr = socket.recv_fds(ctrl, _REQUEST.size, 8)
    if not msg:
        for fd in fds:
            os.close(fd)
        return None
    header = _read_exact(ctrl, _REQUEST.size, msg)
    if header is None:
        return None
    size, req, flags = _REQUEST.unpack(header)
    body = _read_exact(ctrl, size)
    if body is None:
        return None
    return req, list(fds), body, flags


def _child(fds: list[int], body: bytes, net: int | None = None) -> None:
    """In the forked child: enter the network namespace ``net`` (the pool's), keep
    exactly stdin, the output pipes and the channel."""
    code = 73  # runtime.child.boot.EXIT_INTERNAL
    # This server's objects are long-lived in every child: keep the collector off
    # them from the start, so it never writes to (and un-shares) their pages.
    gc.freeze()
    try:
        signal.set_wakeup_fd(-1)
        if net is not None:
            try:
                _netns.enter(net)
            except OSError:
                pass  # the sandbox makes its own (runtime.child.isolation.apply)
        for sig in (signal.SIGCHLD, signal.SIGINT):
            _signal.signal(sig, _signal.SIG_DFL)
        chan, out, err = fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(chan, _CHANNEL_FD)
        os.closerange(_CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            except (AttributeError, ValueError):
                pass
        target, args = pickle.loads(body)
        target(socket.socket(fileno=_CHANNEL_FD), *args)
        code = 0
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(code)
