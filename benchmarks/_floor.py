"""Host side of the baselines ("floors") the core benchmarks compare the project against.

- :class:`MpBareChild`: a bare child (:func:`benchmarks._bare.serve_frames`: the
  project's framing and envelope, no runtime) started exactly like a sandbox, by
  ``runtime.host.forkserver.spawn`` — the project's fork server, with its preload
  (``runtime.child.boot``). This is the floor of every target.
- :class:`FloorForkServer`: a minimal fork server without ``multiprocessing`` (fork +
  an fd over SCM_RIGHTS), same preload: what starting a child costs at the least.
  Context only.
- :class:`FloorClient`: the host side of a bare child (call, cast, cast_many).
- :func:`start_pipe_echo`: a child echoing over ``multiprocessing.Pipe`` with pickle.
- :class:`PykkaEcho`: a pykka actor echoing ``ask`` in another thread of this process.

Every child dies on EOF of its socket or pipe, so none outlives the host, and the
fork server exits when its control socket closes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pykka

from benchmarks._bare import CALL, CAST, PID, REPLY, FrameReader, bare_child, pack_frame, pipe_echo

__all__ = [
    "FloorClient",
    "FloorForkServer",
    "MpBareChild",
    "PykkaEcho",
    "start_like_a_sandbox",
    "start_pipe_echo",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: What the minimal fork server imports before forking, like the project's forkserver.
PRELOAD = ("runtime.child.boot",)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class FloorClient:
    """Host side of a bare child: the project's framing, no runtime."""

    def __init__(
        self, sock: socket.socket, pid: int, server: FloorForkServer | None = None
    ) -> None:
        self.sock = sock
        self.pid = pid
        self.server = server
        self.reader = FrameReader(sock)
        self._ref = 0

    def call(self, target: str, payload: Any) -> Any:
        self._ref += 1
        ref = self._ref
        self.sock.sendall(pack_frame([CALL, ref, target, payload]))
        frame = self.reader.next_frame()
        if frame is None:
            raise EOFError("bare child closed its socket")
        kind, got_ref, _, reply = msgpack.unpackb(frame)
        frame.release()
        if kind != REPLY or got_ref != ref:
            raise AssertionError(f"bare child answered {kind!r} ref {got_ref!r} to call ref {ref}")
        return reply

    def cast(self, target: str, payload: Any) -> None:
        self.sock.sendall(pack_frame([CAST, None, target, payload]))

    def cast_many(self, target: str, payloads: list[Any]) -> None:
        self.sock.sendall(b"".join([pack_frame([CAST, None, target, p]) for p in payloads]))

    def close(self) -> None:
        # Kill before closing: until its socket closes the child does not exit, so
        # its pid cannot have been reaped and reused yet.
        if self.server is not None and self.pid in self.server.children:
            _kill(self.pid)
            self.server.children.discard(self.pid)
        self.sock.close()


class _Spawned:
    """A child of the project's fork server, with the bits of a Process the benchmarks use."""

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pid = child.pid

    def join(self, timeout: float | None = None) -> None:
        from multiprocessing.connection import wait

        if wait([self.child.sentinel], timeout):
            self.child.close()

    def is_alive(self) -> bool:
        return self.child.exitcode is None

    def kill(self) -> None:
        _kill(self.pid)


def start_like_a_sandbox(target: Any, sock: socket.socket, name: str) -> Any:
    """Start ``target(sock)`` the way ``runtime.host.process`` starts a sandbox: from the
    project's fork server (``runtime.host.forkserver.spawn``: same preload); its
    output goes to ``/dev/null``. Returns a handle with ``pid``, ``join``,
    ``is_alive`` and ``kill``."""
    from runtime.host import forkserver

    null = os.open(os.devnull, os.O_WRONLY)
    try:
        return _Spawned(forkserver.spawn(target, (), fds=(sock.fileno(), null, null)))
    finally:
        os.close(null)


class MpBareChild(FloorClient):
    """A bare child started like a sandbox (see :func:`start_like_a_sandbox`)."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = start_like_a_sandbox(bare_child, theirs, "bench-bare-child")
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        super().__init__(mine, self.proc.pid)

    def close(self) -> None:
        self.sock.close()  # EOF: the child returns
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class FloorForkServer:
    """A minimal fork server: one preloaded Python process forking a bare child per request."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD) -> None:
        self.preload = preload
        self.proc: subprocess.Popen | None = None
        self.ctrl: socket.socket | None = None
        self.children: set[int] = set()
        self.preloaded: list[str] = []

    def start(self) -> FloorForkServer:
        host, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        code = (
            "import sys; from benchmarks._bare import server_main; "
            "server_main(int(sys.argv[1]), sys.argv[2:])"
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(server.fileno()), *self.preload],
                pass_fds=[server.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            server.close()
        self.ctrl = host
        ready = host.recv(4096)
        if not ready.startswith(b"R"):
            self.close()
            raise RuntimeError("minimal fork server did not start")
        self.preloaded = [m for m in ready[1:].decode().split(",") if m]
        return self

    def spawn(self) -> FloorClient:
        """Fork a bare child and return the host side of its socketpair."""
        if self.ctrl is None:
            raise RuntimeError("start() the fork server first")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.ctrl, [b"serve"], [theirs.fileno()])
        finally:
            theirs.close()
        reply = self.ctrl.recv(16)
        if len(reply) != PID.size or PID.unpack(reply)[0] < 0:
            mine.close()
            raise RuntimeError("minimal fork server failed to fork")
        (pid,) = PID.unpack(reply)
        self.children.add(pid)
        return FloorClient(mine, pid, self)

    def close(self) -> None:
        for pid in self.children:
            _kill(pid)
        self.children.clear()
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> FloorForkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_pipe_echo() -> tuple[Any, Any]:
    """Start a child echoing over a ``multiprocessing.Pipe`` (pickle); returns (process, conn).

    Started by multiprocessing's own forkserver; the start method does not enter
    its round trip.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    host, child = ctx.Pipe(duplex=True)
    try:
        proc = ctx.Process(target=pipe_echo, args=(child,), name="bench-pipe-echo")
        proc.start()
    except BaseException:
        host.close()
        raise
    finally:
        child.close()
    return proc, host


class PykkaEcho(pykka.ThreadingActor):
    """Echoes every ``ask`` (the in-process, two-thread baseline)."""

    def on_receive(self, message: Any) -> Any:
        return message
