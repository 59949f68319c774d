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

A child is forked before it is told what to run (:func:`begin`, then
:meth:`Pending.start`): the host asks for the fork at the start of a create, and
the fork and the child's first steps run while the host prepares its containment
and compiles; the child then waits on a pipe of the server's for its target and
arguments (the boot configuration, with the isolation plan), and nothing else runs
in it before they arrive. :func:`spawn` asks for both in one message. A request given
up before its start (:meth:`Pending.cancel`) is killed by the server, unused.

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
import math
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
from runtime.wire.channel import recv_exact

__all__ = [
    "EXIT_UNKNOWN",
    "PRELOAD",
    "SERVER_ENV",
    "Child",
    "ForkServerError",
    "Pending",
    "begin",
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

# Host -> server: header (body length, request id, flags), then the body. A fork
# request carries the child's fds; its start (_START) carries the body (the pickled
# target and arguments), which the server hands the child on a pipe. spawn() sends
# both in one message (fds, _START and the body): forked and started at once.
_REQUEST = struct.Struct(">IQB")
_USERNS = 1  # flag: start the child in its own user and pid namespace (runtime.child.userns)
_NETNS = 2  # fork: take a namespace of the pool (runtime.child.netns); start: enter it
_START = 4  # flag: the body of an earlier fork request (the child waits for it)
_DROP = 8  # flag: the earlier fork request was given up: kill its child, unused
# Server -> child, on its pipe: (body length, flags), then the body.
_BODY = struct.Struct(">IB")
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


def readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` polls readable within ``timeout`` seconds (None: no limit).

    One ``poll`` object: :func:`multiprocessing.connection.wait` builds a selector
    per call (~30 us against ~1.5), and a child's close asks up to three times."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))


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
        #: Set once the exit code is known (the child is reaped): what a thread
        #: that holds no descriptor of it waits on.
        self.exited = threading.Event()

    def wait_exited(self, timeout: float | None) -> bool:
        """Whether the child has exited within ``timeout`` seconds: it runs nothing
        any more, has left its cgroups and released its memory and descriptors (its
        pidfd polls readable from the end of its exit, before the server reaps it;
        without a pidfd, once it is reaped). Safe while another thread closes this
        handle: the pidfd is polled through a copy of its own."""
        with self._lock:
            fd = os.dup(self._pidfd) if self._pidfd is not None else -1
        if fd < 0:
            return self.exited.wait(timeout)
        try:
            return readable(fd, timeout)
        finally:
            os.close(fd)

    def _exited(self, code: int) -> None:
        with self._lock:
            if self.exitcode is not None or self._w < 0:
                return
            self.exitcode = code
            os.write(self._w, b"x")
        self.exited.set()

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

    def request(self, fds: list[int], flags: int, body: bytes = b"") -> tuple[int, list[Any]]:
        """Ask for a fork (with ``_START`` in ``flags``, started with ``body`` at
        once); returns the request id and its slot."""
        with self._state:
            if self.dead:
                raise ForkServerError("the fork server is gone")
            self._ids += 1
            req = self._ids
            slot: list[Any] = [threading.Event(), None]
            self._waiting[req] = slot
        try:
            self._send(req, flags, body, fds)
        except ForkServerError:
            with self._state:
                self._waiting.pop(req, None)
            raise
        return req, slot

    def start(self, req: int, slot: list[Any], body: bytes, flags: int, timeout: float) -> Child:
        """Hand request ``req``'s child its body; returns the child once forked."""
        try:
            self._send(req, _START | flags, body)
        except ForkServerError:
            self.drop(req, slot)
            raise
        return self.forked(req, slot, timeout)

    def forked(self, req: int, slot: list[Any], timeout: float) -> Child:
        """The child of request ``req``, once the server reports it."""
        if not slot[0].wait(timeout):
            self.drop(req, slot)
            raise ForkServerError(f"the fork server did not start a child within {timeout}s")
        result = slot[1]
        if isinstance(result, Child):
            return result
        raise ForkServerError(str(result))

    def drop(self, req: int, slot: list[Any]) -> None:
        """Give request ``req`` up: its child (if forked) is killed by the server, and
        its :class:`Child` (if the reader made one) closed."""
        with self._state:
            answered = self._waiting.pop(req, None) is None
        try:
            self._send(req, _DROP, b"")
        except ForkServerError:
            pass  # gone: it killed its children
        if answered:  # the reader took the answer: it fills the slot at once
            slot[0].wait(SPAWN_TIMEOUT)
        child = slot[1]
        if isinstance(child, Child):
            child.close()

    def _send(self, req: int, flags: int, body: bytes, fds: list[int] | None = None) -> None:
        header = [_REQUEST.pack(len(body), req, flags)]
        try:
            with self._send_lock:
                if fds:
                    self.sock.sendmsg(header, [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                struct.pack(f"{len(fds)}i", *fds))])
                else:
                    self.sock.sendall(header[0])
                if body:
                    self.sock.sendall(body)
        except OSError as exc:
            raise ForkServerError(f"the fork server is gone: {exc}") from exc

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
        if slot is None:  # the requester gave up (Pending.cancel): the server kills it
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


class Pending:
    """A fork asked of the server whose child does not know yet what to run
    (:func:`begin`): :meth:`start` tells it, :meth:`cancel` gives it up.

    The caller keeps the descriptors it passed until :meth:`start` returns (a
    server found dead is asked again, once, with them). A server that dies after
    the fork and before the start leaves its child unstarted: it exits without
    running anything, and its start is seen as a child that died while booting.
    """

    def __init__(self, fds: tuple[int, int, int], userns: bool, netns: bool,
                 body: bytes | None = None) -> None:
        self.fds = list(fds)
        self.userns = userns
        self.netns = netns and not userns
        self._body = body  # sent with the fork request (spawn): started at once
        self._ask()

    def _ask(self) -> None:
        flags = (_USERNS if self.userns else 0) | (_NETNS if self.netns else 0)
        if self._body is not None:
            flags |= _START
        for attempt in (1, 2):
            self._server = _current()
            try:
                self._req, self._slot = self._server.request(self.fds, flags, self._body or b"")
                return
            except ForkServerError:
                if attempt == 2 or not self._server.dead:
                    raise
                self._server._reader.join(10.0)  # let it settle, then start a new one

    def start(self, target: Callable[..., Any], args: tuple = (), *, netns: bool = False,
              timeout: float = SPAWN_TIMEOUT) -> Child:
        """Have the child run ``target(channel, *args)``; returns its :class:`Child`.

        ``target`` and ``args`` are pickled (``target`` by reference: it must live
        in an importable module). ``netns``: the child enters the namespace of the
        pool it got at its fork, if it got one, before ``target`` runs (otherwise a
        sandbox's isolation makes its own).
        """
        body = pickle.dumps((target, args), protocol=pickle.HIGHEST_PROTOCOL)
        flags = _NETNS if netns and self.netns else 0
        return self._started(lambda: self._server.start(
            self._req, self._slot, body, flags, timeout))

    def _started(self, start: Callable[[], Child]) -> Child:
        for attempt in (1, 2):
            try:
                return start()
            except ForkServerError:
                if attempt == 2 or not self._server.dead:
                    raise
                self._server._reader.join(10.0)
                self._ask()
        raise AssertionError("unreachable")

    def cancel(self) -> None:
        """Give the fork up: its child is killed before it ran anything."""
        self._server.drop(self._req, self._slot)


def begin(fds: tuple[int, int, int], *, userns: bool = False, netns: bool = False) -> Pending:
    """Ask for a child now; tell it what to run later (:meth:`Pending.start`).

    ``fds`` are the channel socket, and the write ends of the child's stdout and
    stderr pipes (the child gets copies). ``userns``: the child starts as pid 2
    of its own user and pid namespace (a host that is not root;
    :mod:`runtime.child.userns`). ``netns``: the child gets a fresh network
    namespace the server made ahead (:mod:`runtime.child.netns`), if one is ready,
    which it enters only if its start says so. A server found dead is restarted once.
    """
    return Pending(fds, userns, netns)


def spawn(
    target: Callable[..., Any],
    args: tuple = (),
    *,
    fds: tuple[int, int, int],
    timeout: float = SPAWN_TIMEOUT,
    userns: bool = False,
    netns: bool = False,
) -> Child:
    """Fork a child that runs ``target(channel, *args)``; returns its :class:`Child`:
    :func:`begin` and :meth:`Pending.start` in one message to the server (the
    caller keeps its own descriptors; the child gets copies).

    >>> import runtime.host.forkserver as fs
    >>> callable(fs.spawn)
    True
    """
    body = pickle.dumps((target, args), protocol=pickle.HIGHEST_PROTOCOL)
    pending = Pending(fds, userns, netns, body)  # one message: forked and started
    return pending._started(lambda: pending._server.forked(pending._req, pending._slot, timeout))


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
    waiting: dict[int, tuple[int, int]] = {}  # request -> (pid, write end of its body pipe)
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
                _reap(ctrl, children, waiting)
            if ctrl.fileno() in ready:
                request = _read_request(ctrl)
                if request is None:
                    break
                req, fds, body, flags = request
                if fds:  # a fork request (spawn's carries its start too)
                    _fork(ctrl, req, fds, flags, body, pool, children, waiting)
                elif flags & (_START | _DROP):
                    _hand_over(waiting.pop(req, None), body, flags)
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


def _fork(ctrl: socket.socket, req: int, fds: list[int], flags: int, body: bytes,
          pool: _netns.Pool, children: set[int], waiting: dict[int, tuple[int, int]]) -> None:
    """Fork the child of request ``req``: it waits for its body on a pipe of ours.
    A request that carries its start (``spawn``) has the body in the pipe before the
    fork, as far as the pipe holds it, so its child does not wait for this loop."""
    net = pool.take() if flags & _NETNS else None
    body_r, body_w = os.pipe()
    data = _BODY.pack(len(body), flags & _NETNS) + body if flags & _START else b""
    sent = 0
    if data:
        os.set_blocking(body_w, False)
        try:
            sent = os.write(body_w, data)
        except BlockingIOError:
            pass
        os.set_blocking(body_w, True)
    try:
        if flags & _USERNS:
            pid = _userns.spawn(lambda: _child(fds, body_r))
        else:
            pid = os.fork()
            if pid == 0:
                _child(fds, body_r, net)  # never returns
    except OSError as exc:
        err = exc.errno or errno.EAGAIN
        _send(ctrl, _FAILED, req, -err if flags & _USERNS else err)
        os.close(body_w)
    else:
        children.add(pid)
        _send(ctrl, _STARTED, req, pid)
        if data:
            _write_body(body_w, data[sent:])
        else:
            waiting[req] = (pid, body_w)
    os.close(body_r)
    for fd in fds if net is None else [*fds, net]:  # the child holds the only one
        os.close(fd)


def _hand_over(waiting: tuple[int, int] | None, body: bytes, flags: int) -> None:
    """Give a forked child its body (a start), or kill it unused (a drop)."""
    if waiting is None:
        return  # its fork failed, or it died
    pid, body_w = waiting
    if flags & _START:
        _write_body(body_w, _BODY.pack(len(body), flags & _NETNS) + body)
    else:
        _kill_group(pid)
        os.close(body_w)


def _write_body(body_w: int, data: bytes) -> None:
    """Write the rest of a child's body and close the pipe. Blocks only while the
    child reads a body larger than the pipe's buffer."""
    view = memoryview(data)
    try:
        while view:  # a signal (SIGCHLD) may cut a long write short
            view = view[os.write(body_w, view):]
    except OSError:
        pass  # it died: the reap reports it
    finally:
        os.close(body_w)


def _reap(ctrl: socket.socket, children: set[int], waiting: dict[int, tuple[int, int]]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        for req, (child, body_w) in list(waiting.items()):
            if child == pid:  # died before its start: nobody will hand it a body
                del waiting[req]
                os.close(body_w)
        _send(ctrl, _EXITED, pid, os.waitstatus_to_exitcode(status))


def _send(ctrl: socket.socket, kind: int, key: int, value: int) -> None:
    try:
        ctrl.sendall(_RECORD.pack(kind, key, value))
    except OSError:
        pass  # the host is gone; the loop sees EOF next


def _read_request(ctrl: socket.socket) -> tuple[int, list[int], bytes, int] | None:
    msg, fds, _flags, _addr = socket.recv_fds(ctrl, _REQUEST.size, 8)
    if not msg:
        for fd in fds:
            os.close(fd)
        return None
    header = recv_exact(ctrl, _REQUEST.size, msg)
    if header is None:
        return None
    size, req, flags = _REQUEST.unpack(header)
    body = recv_exact(ctrl, size)
    if body is None:
        return None
    return req, list(fds), body, flags


def _read_body(fd: int) -> tuple[bytes, int] | None:
    """The child's body and flags from the server's pipe ``fd``; None if the pipe
    closed first (the server is gone)."""
    data = b""
    size = None
    while size is None or len(data) < _BODY.size + size:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        data += chunk
        if size is None and len(data) >= _BODY.size:
            size = _BODY.unpack_from(data)[0]
    return data[_BODY.size:], data[_BODY.size - 1]


def _child(fds: list[int], body_fd: int, net: int | None = None) -> None:
    """In the forked child: wait for the body (what to run: nothing else runs before
    it), enter the network namespace ``net`` (the pool's) if it says so, keep
    exactly stdin, the output pipes and the channel."""
    code = 73  # runtime.child.boot.EXIT_INTERNAL
    # This server's objects are long-lived in every child: keep the collector off
    # them from the start, so it never writes to (and un-shares) their pages.
    gc.freeze()
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT):
            _signal.signal(sig, _signal.SIG_DFL)
        got = _read_body(body_fd)
        if got is None:
            os._exit(0)  # never started: nothing of it ran
        body, flags = got
        if net is not None and flags & _NETNS:
            try:
                _netns.enter(net)
            except OSError:
                pass  # the sandbox makes its own (runtime.child.isolation.apply)
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
