"""What runs inside the baseline children: kept tiny so a child imports little.

The bare child (:func:`serve_frames`) speaks the project's wire format, length-prefixed
msgpack frames carrying ``[kind, ref, target, payload]`` envelopes (as in
``runtime.wire.mailbox``), with nothing else: no actors, no threads. It echoes a call's
payload, counts casts, answers a call to ``counter`` with the count, and returns
at EOF.

Only the standard library and msgpack are imported here; the host-side classes are
in :mod:`benchmarks._floor`.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from typing import Any

import msgpack

CALL, CAST, REPLY = "call", "cast", "reply"  # as in runtime.wire.mailbox
LEN = struct.Struct(">I")
PID = struct.Struct(">i")
_RECV = 256 * 1024


def pack_frame(obj: Any, _pack=msgpack.packb, _len=LEN.pack) -> bytes:
    data = _pack(obj)
    return _len(len(data)) + data


class FrameReader:
    """Reads length-prefixed frames from a socket, buffering what arrives together."""

    __slots__ = ("sock", "buf", "pos")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def _fill(self) -> bool:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        try:
            chunk = self.sock.recv(_RECV)
        except ConnectionResetError:  # the peer closed with data unread: an EOF too
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def next_frame(self) -> memoryview | None:
        """The next frame's bytes (release it before the next call), or None at EOF."""
        while True:
            avail = len(self.buf) - self.pos
            if avail >= 4:
                (n,) = LEN.unpack_from(self.buf, self.pos)
                if avail - 4 >= n:
                    start = self.pos + 4
                    self.pos = start + n
                    return memoryview(self.buf)[start : start + n]
            if not self._fill():
                return None


def serve_frames(sock: socket.socket) -> None:
    """The bare child: echo calls, count casts, until EOF."""
    reader = FrameReader(sock)
    unpackb, packb, plen, sendall = msgpack.unpackb, msgpack.packb, LEN.pack, sock.sendall
    count = 0
    while True:
        frame = reader.next_frame()
        if frame is None:
            return
        kind, ref, target, payload = unpackb(frame)
        frame.release()
        if kind == CAST:
            count += 1
        elif kind == CALL:
            reply = count if target == "counter" else payload
            data = packb([REPLY, ref, None, reply])
            sendall(plen(len(data)) + data)


def bare_child(sock: socket.socket) -> None:
    """Target of a bare ``multiprocessing`` child: serve until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides; EOF ends us
    serve_frames(sock)


def pipe_echo(conn: Any) -> None:
    """Target of the ``multiprocessing.Pipe`` baseline: echo pickled objects until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            obj = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(obj)


def server_main(ctrl_fd: int, preload: list[str]) -> None:
    """The minimal fork server's loop (its own process; see ``_floor.FloorForkServer``).

    Each request on the SOCK_SEQPACKET control socket carries one fd; the server
    forks a child that serves that fd, and answers with the child's pid. Children
    are reaped automatically (SIGCHLD ignored); the server returns at EOF.
    """
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    loaded = []
    for name in preload:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError:
            pass
    ctrl = socket.socket(fileno=ctrl_fd)
    try:
        _serve_forks(ctrl, loaded)
    except OSError:  # the host went away
        pass


def _serve_forks(ctrl: socket.socket, loaded: list[str]) -> None:
    ctrl.sendall(b"R" + ",".join(loaded).encode())
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(ctrl, 64, 4)
        if not msg or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if not msg:
                return
            ctrl.sendall(PID.pack(-1))
            continue
        pid = os.fork()
        if pid == 0:  # the bare child
            code = 0
            try:
                ctrl.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setpgid(0, 0)
                serve_frames(socket.socket(fileno=fds[0]))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(fds[0])
        ctrl.sendall(PID.pack(pid))
