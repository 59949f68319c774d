"""What a sandbox writes to its stdout and stderr, read by the host.

A sandbox's fd 1 and fd 2 are the write ends of two pipes the host made for it
(:mod:`runtime.host.forkserver`); the host never lets them reach its own
stdout. One host thread (the *pump*) reads every sandbox's pipes without blocking
and turns the bytes into lines:

- each line becomes a log record of the logger ``runtime.output`` (level INFO)
  with the fields ``sandbox``, ``runtime`` and ``stream`` (``"stdout"`` or
  ``"stderr"``), so it is attributed to the sandbox, never mistaken for the
  host's own output. Nothing is printed unless the application configures
  logging;
- control characters, escape sequences and other non-printable characters
  (terminal escapes, ``\\r``, bidi overrides, invalid UTF-8) are shown escaped
  (:func:`neutralise`), so a line cannot move a terminal's cursor, retitle its
  window or forge a line of the host's log;
- a per-sandbox byte rate and a total size cap (:class:`OutputLimits`) bound
  what is kept; the excess is dropped and counted (``OutputLog.dropped``,
  telemetry ``process.output_dropped`` with ``bytes``, the metric
  ``sandbox_output_dropped_bytes_total``);
- the last :attr:`OutputLimits.tail` lines are kept for ``sb.output(tail=N)``.

The pump reads at most one chunk per pipe per round, so a sandbox that writes
without pause costs the host a bounded share of one thread and delays no other
sandbox's output; a sandbox whose pipe is full blocks only itself.

>>> neutralise("ok\\x1b]0;pwned\\x07 \\u202etxt")
'ok\\\\x1b]0;pwned\\\\x07 \\\\u202etxt'
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import threading
import time
from dataclasses import dataclass
from runtime import telemetry
from runtime.logs import sandbox_fields

__all__ = [
    "OutputCapture",
    "OutputLimits",
    "OutputLine",
    "OutputLog",
    "neutralise",
]

log = logging.getLogger("runtime.output")

STREAMS = ("stdout", "stderr")
#: Bytes read from one pipe per round of the pump.
_CHUNK = 64 * 1024
#: At most this many bytes are drained from a pipe when its capture closes.
_FINAL_DRAIN = 1024 * 1024
#: How often (seconds) a sandbox that keeps overflowing is reported by telemetry.
_REPORT_EVERY = 1.0


@dataclass(frozen=True)
class OutputLimits:
    """How much of a sandbox's output the host keeps (per sandbox, all its processes).

    - ``rate``: bytes per second, sustained; ``burst``: bytes allowed at once
      above it (a token bucket).
    - ``max_bytes``: total bytes over the sandbox's life; past it every byte is
      dropped (and counted).
    - ``line_max``: characters per line; a longer line is cut into pieces marked
      ``truncated``.
    - ``tail``: lines kept for :meth:`OutputLog.tail`, and ``tail_chars`` the
      characters they may hold in all (the oldest lines go first), so a sandbox's
      tail costs the host at most that much memory.

    >>> OutputLimits().rate, OutputLimits().max_bytes
    (65536, 16777216)
    """

    rate: int = 64 * 1024
    burst: int = 256 * 1024
    max_bytes: int = 16 * 1024 * 1024
    line_max: int = 4096
    tail: int = 1000
    tail_chars: int = 256 * 1024

    def __post_init__(self) -> None:
        for name in ("rate", "burst", "max_bytes", "line_max", "tail", "tail_chars"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"invalid OutputLimits.{name}={value!r}: expected a positive int")


@dataclass(frozen=True)
class OutputLine:
    """One line a sandbox wrote: ``stream``, neutralised ``text``, ``time`` (epoch
    seconds, when the host read it), ``truncated`` (a piece of a longer line).

    >>> OutputLine("stdout", "hi", 0.0).text
    'hi'
    """

    stream: str
    text: str
    time: float
    truncated: bool = False


def neutralise(text: str) -> str:
    """``text`` with every non-printable character shown as an escape (tab kept).

    >>> neutralise("a\\tb\\rc")
    'a\\tb\\\\rc'
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == "\t":
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1] if ch not in "'\"" else ch)
    return "".join(out)


class OutputLog:
    """The output of one sandbox: its last lines, its counters, its limits.

    One per sandbox, handed to each of its processes in turn (so the tail shows
    what a crashed process wrote before it went). Thread-safe.

    >>> out = OutputLog("rt/demo")
    >>> out.tail()
    []
    """

    def __init__(self, name: str, limits: OutputLimits | None = None) -> None:
        self.name = name
        self.limits = limits or OutputLimits()
        self.fields = sandbox_fields(name)
        self._lines: collections.deque[OutputLine] = collections.deque()
        self._chars = 0
        self._lock = threading.Lock()
        self._tokens = float(self.limits.burst)
        self._stamp = time.monotonic()
        #: Bytes kept (turned into lines) and bytes dropped, over the sandbox's life.
        self.accepted = 0
        self.dropped = 0
        self._unreported = 0
        self._reported_at = 0.0

    def tail(self, n: int | None = None) -> list[OutputLine]:
        """The last ``n`` lines (all kept lines if None), oldest first.

        >>> OutputLog("x").tail(5)
        []
        """
        if n is not None and (type(n) is not int or n < 0):
            raise ValueError(f"invalid tail={n!r}: expected a non-negative int or None")
        with self._lock:
            lines = list(self._lines)
        return lines if n is None else lines[len(lines) - n:] if n else []

    def admit(self, size: int) -> int:
        """How many of ``size`` new bytes may be kept; counts the rest as dropped."""
        lim = self.limits
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(lim.burst), self._tokens + (now - self._stamp) * lim.rate)
            self._stamp = now
            room = min(int(self._tokens), lim.max_bytes - self.accepted, size)
            room = max(room, 0)
            self._tokens -= room
            self.accepted += room
            lost = size - room
            if lost:
                self.dropped += lost
                self._unreported += lost
                report = now - self._reported_at >= _REPORT_EVERY
            else:
                report = False
        if report:
            self.report_drops()
        return room

    def report_drops(self) -> None:
        """Emit ``process.output_dropped`` for the bytes dropped since the last report."""
        with self._lock:
            lost, self._unreported = self._unreported, 0
            self._reported_at = time.monotonic()
        if lost:
            telemetry.execute(
                "process.output_dropped", {"bytes": lost, "total": self.dropped},
                {"name": self.name, **self.fields},
            )

    def add(self, stream: str, raw: bytes, truncated: bool = False) -> None:
        """Record one line (raw bytes without the newline)."""
        text = neutralise(raw.decode("utf-8", "backslashreplace"))
        line = OutputLine(stream, text, time.time(), truncated)
        lim = self.limits
        with self._lock:
            lines = self._lines
            lines.append(line)
            self._chars += len(text)
            while len(lines) > lim.tail or (self._chars > lim.tail_chars and len(lines) > 1):
                self._chars -= len(lines.popleft().text)
        log.info("%s", text, extra={**self.fields, "stream": stream, "truncated": truncated})


class _Stream:
    """One pipe of one process: its read end and the partial line read so far."""

    __slots__ = ("capture", "name", "fd", "partial", "skipping")

    def __init__(self, capture: OutputCapture, name: str, fd: int) -> None:
        self.capture = capture
        self.name = name
        self.fd = fd
        self.partial = bytearray()
        self.skipping = False  # the rest of an over-long line was dropped

    def feed(self, data: bytes) -> None:
        out = self.capture.log
        keep = out.admit(len(data))
        if keep < len(data):
            data = data[:keep]
            self.skipping = True  # what follows is cut off: the line is incomplete
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            self.partial += data[start:nl]
            self._emit(truncated=self.skipping)
            self.skipping = False
            start = nl + 1
        self.partial += data[start:]
        line_max = out.limits.line_max
        while len(self.partial) > line_max:  # a long line without its end yet
            piece = bytes(self.partial[:line_max])
            del self.partial[:line_max]
            out.add(self.name, piece, truncated=True)

    def _emit(self, truncated: bool = False) -> None:
        """The partial line is complete: record it, in pieces of ``line_max``."""
        data = bytes(self.partial)
        self.partial.clear()
        if data.endswith(b"\r"):
            data = data[:-1]
        out = self.capture.log
        line_max = out.limits.line_max
        while len(data) > line_max:
            out.add(self.name, data[:line_max], truncated=True)
            data = data[line_max:]
        out.add(self.name, data, truncated)

    def finish(self) -> None:
        if self.partial:
            self._emit(truncated=True)


class OutputCapture:
    """The output pipes of one sandbox process.

    Make it before the child starts, hand :meth:`child_fds` to the child, call
    :meth:`started` once the child has its copies, and :meth:`close` when the
    process is gone (what is left in the pipes is read first).
    """

    def __init__(self, output: OutputLog) -> None:
        self.log = output
        self._streams: list[_Stream] = []
        self._child_fds: list[int] = []
        for name in STREAMS:
            r, w = os.pipe()
            os.set_blocking(r, False)
            self._streams.append(_Stream(self, name, r))
            self._child_fds.append(w)
        self._closed = threading.Event()
        self._registered = False

    def child_fds(self) -> tuple[int, int]:
        """The write ends (stdout, stderr) for the child."""
        return self._child_fds[0], self._child_fds[1]

    def started(self) -> None:
        """The child has its copies: drop ours (so EOF comes when it exits) and start reading."""
        for fd in self._child_fds:
            os.close(fd)
        self._child_fds = []
        _pump.add(self)
        self._registered = True

    def close(self, timeout: float = 5.0) -> None:
        """Read what is left (bounded), release the pipes. Idempotent. Returns at
        once if the pump released them already (both pipes at their end)."""
        for fd in self._child_fds:
            os.close(fd)
        self._child_fds = []
        if self._registered:
            _pump.remove(self)
            if not self._closed.wait(timeout):
                log.error("output pipes of %s were not released", self.log.name)
        elif not self._closed.is_set():
            self._release()

    def _release(self) -> None:
        """Drain, flush partial lines and close the read ends (in the pump's thread);
        again (a pipe already at its end is skipped) once :meth:`close` asks."""
        for stream in self._streams:
            if stream.fd < 0:
                continue
            left = _FINAL_DRAIN
            while left > 0:
                try:
                    data = os.read(stream.fd, min(_CHUNK, left))
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                left -= len(data)
                stream.feed(data)
            stream.finish()
            os.close(stream.fd)
            stream.fd = -1
        self.log.report_drops()
        self._closed.set()


class _Pump:
    """The thread reading every sandbox's output pipes; runs while there are any."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._adding: list[OutputCapture] = []
        self._removing: list[OutputCapture] = []
        self._count = 0  # captures registered or waiting to be

    def add(self, capture: OutputCapture) -> None:
        with self._lock:
            self._adding.append(capture)
            self._count += 1
            if self._thread is None:
                self._sel = selectors.DefaultSelector()
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_r, False)
                self._sel.register(self._wake_r, selectors.EVENT_READ, None)
                self._thread = threading.Thread(target=self._run, name="sandbox-output", daemon=True)
                self._thread.start()
            else:
                self._wake()

    def remove(self, capture: OutputCapture) -> None:
        with self._lock:
            self._removing.append(capture)
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending anyway

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        while True:
            with self._lock:
                adding, self._adding = self._adding, []
                removing, self._removing = self._removing, []
            for capture in adding:
                for stream in capture._streams:
                    sel.register(stream.fd, selectors.EVENT_READ, stream)
            for capture in removing:
                for stream in capture._streams:
                    if stream.fd >= 0:
                        try:
                            sel.unregister(stream.fd)
                        except (KeyError, ValueError):
                            pass
                capture._release()
            with self._lock:
                self._count -= len(removing)
                if self._count == 0 and not self._adding:
                    sel.close()
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._thread = self._sel = None
                    return
            for key, _mask in sel.select():
                stream = key.data
                if stream is None:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                self._read(sel, stream)

    @staticmethod
    def _read(sel: selectors.BaseSelector, stream: _Stream) -> None:
        try:
            data = os.read(stream.fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            stream.feed(data)
            return
        sel.unregister(stream.fd)  # EOF: the process (and all it started) closed it
        stream.finish()
        os.close(stream.fd)
        stream.fd = -1
        capture = stream.capture
        if all(s.fd < 0 for s in capture._streams):
            # Both pipes at their end (closed by the process and all it started:
            # usually its exit): released now, so its close (right after the
            # exit, on a destroy's path) waits for no turn of this thread.
            capture._release()


_pump = _Pump()
