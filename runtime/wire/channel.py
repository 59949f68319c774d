"""A socket channel carrying mailbox frames, used by the host and the sandbox child.

Any number of threads may :meth:`Channel.send` at once (whole frames never
interleave); one thread at a time receives with :meth:`Channel.recv` (more are
safe, they take turns). :meth:`Channel.close` may be called from any thread: a
blocked ``recv`` wakes with :class:`ChannelClosed`.

How a channel ends, as seen by ``recv``:

- the peer closed cleanly between frames: :class:`ChannelClosed` (``local=False``);
- the peer closed in the middle of a frame: ``ProtocolError`` (a truncated frame
  is a broken peer, not a clean exit);
- a frame was malformed or over the size limit: ``ProtocolError``; the channel
  closes itself, since the peer is no longer trusted;
- this side called ``close()``: :class:`ChannelClosed` (``local=True``).

>>> import socket
>>> from runtime.wire.mailbox import Codec, CAST
>>> a, b = socket.socketpair()
>>> with Channel(a, Codec()) as left, Channel(b, Codec()) as right:
...     left.send(CAST, None, "log", ("hello", 1))
...     right.recv()
[Envelope(kind='cast', ref=None, target='log', payload=('hello', 1))]
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

from runtime.errors import ProtocolError, SandboxError
from runtime.wire.mailbox import Codec, Envelope, FrameDecoder

__all__ = ["Channel", "ChannelClosed", "recv_exact"]


def recv_exact(sock: socket.socket, n: int, head: bytes = b"") -> bytes | None:
    """``n`` bytes from ``sock``, ``head`` (what was read of them already) first, and
    no more (what follows is the next reader's); None if the peer closed first.

    >>> a, b = socket.socketpair()
    >>> a.sendall(b"abcdef")
    >>> recv_exact(b, 4, b"x")
    b'xabc'
    >>> a.close(); recv_exact(b, 4) is None
    True
    >>> b.close()
    """
    chunks, got = [head], len(head)
    while got < n:
        data = sock.recv(min(n - got, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


class ChannelClosed(SandboxError, EOFError):
    """The channel is closed: the peer hung up, or this side called ``close()``.

    ``local`` says which. It is both a :class:`~runtime.errors.SandboxError` and an
    ``EOFError``, so a reader loop can stop on either. A peer that hangs up in
    the middle of a frame raises ``ProtocolError`` instead.

    >>> ChannelClosed("peer closed the channel", local=False).local
    False
    """

    def __init__(self, message: str, *, local: bool) -> None:
        self.local = local
        super().__init__(message)


class Channel:
    """Frames over a connected stream socket (normally one end of a socketpair).

    The channel owns ``sock``: it puts it in blocking mode and closes it in
    :meth:`close`. ``read_size`` is how much one ``recv`` syscall may read.

    >>> import socket
    >>> from runtime.wire.mailbox import Codec, CALL
    >>> a, b = socket.socketpair()
    >>> left, right = Channel(a, Codec()), Channel(b, Codec())
    >>> left.send(CALL, 1, "counter", ["incr", 2])
    >>> right.recv()[0].payload
    ['incr', 2]
    >>> left.close()
    >>> try:
    ...     right.recv()
    ... except ChannelClosed as exc:
    ...     print(exc, exc.local)
    peer closed the channel False
    >>> right.close()
    """

    def __init__(self, sock: socket.socket, codec: Codec, *, read_size: int = 256 * 1024) -> None:
        if read_size < 1:
            raise ValueError(f"invalid read_size={read_size!r}: expected a positive int")
        sock.setblocking(True)
        self._sock = sock
        self._codec = codec
        self._decoder = FrameDecoder(codec)
        # recv_into a reused buffer: sock.recv(n) allocates n bytes every call,
        # which costs more than the syscall for a 256 KiB read of a small frame.
        self._rbuf = bytearray(read_size)
        self._rview = memoryview(self._rbuf)
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._released = False  # close() let go of the socket

    @property
    def codec(self) -> Codec:
        """The codec frames are encoded and decoded with.

        >>> import socket; a, b = socket.socketpair()
        >>> Channel(a, Codec()).codec.allow_pickle; a.close(); b.close()
        False
        """
        return self._codec

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (by the owner, or after a protocol error).

        >>> import socket; a, b = socket.socketpair(); ch = Channel(a, Codec())
        >>> ch.closed, ch.close(), ch.closed, b.close()
        (False, None, True, None)
        """
        return self._closed

    def fileno(self) -> int:
        """The socket's file descriptor (``-1`` once closed), e.g. for ``select``.

        >>> import socket; a, b = socket.socketpair(); ch = Channel(a, Codec())
        >>> ch.fileno() == a.fileno(); ch.close(); b.close()
        True
        """
        return self._sock.fileno()

    def send(self, kind: str, ref: int | None, target: str | None, payload: Any) -> None:
        """Encode one envelope and write it whole; safe from any thread.

        Raises what :meth:`Codec.frame` raises (nothing is written then) and
        :class:`ChannelClosed` if the channel or the peer is gone.

        >>> import socket; from runtime.wire.mailbox import REPLY
        >>> a, b = socket.socketpair(); left, right = Channel(a, Codec()), Channel(b, Codec())
        >>> left.send(REPLY, 7, None, {"ok": True}); right.recv()[0].ref
        7
        >>> left.close(); right.close()
        """
        # Encode outside the lock so senders only serialise on the write itself.
        self.send_raw(self._codec.frame(kind, ref, target, payload))

    def send_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Write pre-encoded bytes whole (e.g. :meth:`Codec.frames` for a batch).

        The bytes are written as they are: garbage sent here is the peer's
        ``ProtocolError``. A write that fails half-way leaves the stream
        unusable, so the channel closes itself and raises :class:`ChannelClosed`.

        >>> import socket; from runtime.wire.mailbox import CAST
        >>> a, b = socket.socketpair(); left, right = Channel(a, Codec()), Channel(b, Codec())
        >>> left.send_raw(left.codec.frames([(CAST, None, "a", 1), (CAST, None, "b", 2)]))
        >>> [e.target for e in right.recv()]
        ['a', 'b']
        >>> left.close(); right.close()
        """
        lock = self._send_lock  # acquire/release: half a ``with``'s cost, every frame's path
        try:
            lock.acquire()
            try:
                if self._closed:
                    raise ChannelClosed("channel is closed", local=True)
                self._sock.sendall(data)
            finally:
                lock.release()
        except OSError as exc:
            local = self._closed
            self.close()
            what = "channel was closed" if local else f"peer is gone ({exc.strerror or exc})"
            raise ChannelClosed(what, local=local) from exc

    def recv(self) -> list[Envelope]:
        """Block until at least one whole envelope arrives; return all that did.

        Raises :class:`ChannelClosed` on a clean end and ``ProtocolError`` on a
        bad or truncated frame (after which the channel is closed).

        >>> import socket; from runtime.wire.mailbox import CAST
        >>> a, b = socket.socketpair(); left, right = Channel(a, Codec()), Channel(b, Codec())
        >>> left.send(CAST, None, "x", b"\\x00"); right.recv()[0].payload
        b'\\x00'
        >>> left.close(); right.close()
        """
        lock = self._recv_lock  # acquire/release: half a ``with``'s cost, every read's path
        try:
            lock.acquire()
            try:
                return self.recv_held()
            finally:
                lock.release()
        except ProtocolError:
            self.close()
            raise

    @property
    def recv_lock(self) -> threading.Lock:
        """The lock a reader holds while it reads (see :meth:`recv_held`).

        >>> import socket; a, b = socket.socketpair(); ch = Channel(a, Codec())
        >>> ch.recv_lock.locked(); ch.close(); b.close()
        False
        """
        return self._recv_lock

    def recv_some(self, flags: int = 0) -> list[Envelope]:
        """Read once (blocking only until some bytes arrive); return the envelopes
        completed, possibly none. ``flags`` go to the read (``socket.MSG_DONTWAIT``:
        what is there now, without blocking, and no poll first).

        For a reader that polls the socket first and must not stay blocked on a
        peer that sent part of a frame and stalled: after a readable poll this
        returns at once. On a socket with a receive timeout (``SO_RCVTIMEO``) it
        also returns, with nothing, when the timeout runs out: a reader can then
        block in the read itself, one system call, instead of a poll and a read.
        Ends like :meth:`recv`.

        >>> import socket; from runtime.wire.mailbox import CAST
        >>> a, b = socket.socketpair(); left, right = Channel(a, Codec()), Channel(b, Codec())
        >>> data = left.codec.frame(CAST, None, "x", 1)
        >>> left.send_raw(data[:5]); right.recv_some()
        []
        >>> left.send_raw(data[5:]); right.recv_some()[0].target
        'x'
        >>> right.recv_some(socket.MSG_DONTWAIT)  # nothing there: no wait
        []
        >>> left.close(); right.close()
        """
        lock = self._recv_lock
        try:
            lock.acquire()
            try:
                return self.recv_held(True, flags)
            finally:
                lock.release()
        except ProtocolError:
            self.close()
            raise

    def recv_held(self, once: bool = False, flags: int = 0) -> list[Envelope]:
        """:meth:`recv` (``once``: :meth:`recv_some`) for a caller that already holds
        :attr:`recv_lock`: the one owner of the reading that uses that lock as its own
        token (the sandbox's relay), so a read takes one lock and one Python call
        fewer. Also what :meth:`recv` and :meth:`recv_some` run under the lock.

        Ends as :meth:`recv` does, except that after a protocol error the channel is
        only stopped (closed for reads and sends, the peer hung up on); its socket
        is released by :meth:`close`, which needs the lock the caller holds.

        >>> import socket; from runtime.wire.mailbox import CAST
        >>> a, b = socket.socketpair(); left, right = Channel(a, Codec()), Channel(b, Codec())
        >>> left.send(CAST, None, "x", 1)
        >>> with right.recv_lock:
        ...     right.recv_held()[0].payload
        1
        >>> left.close(); right.close()
        """
        try:
            decoder = self._decoder
            if decoder.error is not None:  # a bad frame followed good ones in the last read
                raise decoder.error
            while True:
                if self._closed:
                    raise ChannelClosed("channel was closed locally", local=True)
                try:
                    n = self._sock.recv_into(self._rbuf, 0, flags)
                except BlockingIOError:
                    # A receive timeout on the socket (SO_RCVTIMEO) ran out, or nothing
                    # was there (MSG_DONTWAIT).
                    if once:
                        return []
                    continue
                except ConnectionResetError:
                    n = 0  # the peer died: same as EOF, truncated frame or not
                except OSError as exc:
                    if self._closed:  # close() from another thread got to the fd first
                        raise ChannelClosed("channel was closed locally", local=True) from None
                    raise ChannelClosed(f"channel broke: {exc}", local=False) from exc
                if n == 0:
                    if self._closed:
                        raise ChannelClosed("channel was closed locally", local=True)
                    decoder.eof()  # raises ProtocolError when the peer stopped mid-frame
                    raise ChannelClosed("peer closed the channel", local=False)
                envelopes = decoder.feed(self._rview[:n])
                if envelopes or once:
                    return envelopes
        except ProtocolError:
            self._stop()  # the peer is no longer trusted: no more reads or sends
            raise

    def close(self) -> None:
        """Close the channel; idempotent, and safe while other threads use it.

        >>> import socket; a, b = socket.socketpair(); ch = Channel(a, Codec())
        >>> ch.close(); ch.close(); b.close()
        """
        self._stop()
        with self._state_lock:
            if self._released:
                return
            self._released = True
        # Release the fd only once no thread is inside a syscall on it: a number
        # freed under a blocked reader could be reused by an unrelated file.
        with self._send_lock, self._recv_lock:
            self._sock.close()

    def _stop(self) -> None:
        """Mark the channel closed and hang up on the peer (once), waking any thread
        blocked on the socket. Takes neither the send nor the receive lock, so a
        reader holding one may call it; :meth:`close` then releases the socket."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        try:
            # shutdown, unlike close, wakes a thread blocked in recv or sendall.
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer or the owner already tore it down

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._sock.fileno()}"
        return f"<Channel {state} {self._codec!r}>"
