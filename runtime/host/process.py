"""Child-process actors: the host side of a sandbox.

:func:`start_process` starts one child process from the runtime's forkserver
(:mod:`runtime.host.forkserver`) running :func:`runtime.child.boot.child_main`, connected to
the host by a socketpair that carries mailbox frames (:mod:`runtime.wire.mailbox`,
:mod:`runtime.wire.channel`). It waits for the child's ``ready`` and returns a
:class:`ProcessRef`, the handle of a :class:`ProcessActor`:

- ``ref.call("counter", "get")`` sends a CALL to the actor registered as
  ``counter`` inside the child and waits for its REPLY. Calls go straight to the
  socket from the calling thread (encode and write under the channel's lock), not
  through the actor's mailbox; replies are matched to callers by ref, and the
  caller usually reads its own reply from the socket (see ``_Connection.lead``),
  so any number of threads may call at once and a lone caller pays no thread
  hop.
- ``cast``, ``cast_many`` (one batched write), ``system(op, payload)`` (the
  child's SYSTEM ops: ``ping``, ``names``, ``stop``, ``run`` and whatever other
  modules registered), ``pid``, ``names``.

Errors, all :class:`~runtime.errors.SandboxError`: the remote actor raised ->
:class:`~runtime.errors.ActorFailed` (with the remote traceback); no such name ->
:class:`~runtime.errors.NoSuchActor` (listing the names); the actor or the whole
process is gone -> :class:`~runtime.errors.ActorDead`; no reply in time ->
:class:`~runtime.errors.CallTimeout`; a reply that could not be encoded ->
:class:`~runtime.errors.ActorError`.

When the child exits (crash, signal, ``os._exit``) or breaks the protocol
(garbage, a truncated or oversized frame, a pickled value the host does not
accept), the host kills its process group, emits ``process.exit`` (and
``process.protocol_error``) telemetry and the :class:`ProcessActor` fails with an
abnormal :class:`~runtime.actor.ExitReason` of kind ``exit`` (``"exited with code
3"``, ``"killed by SIGSEGV"``) or ``protocol``; its supervisor restarts it
(:func:`process_spec`); pending calls fail with ``ActorDead``. The host itself
never goes down with a child.

Stopping (``ref.stop()``, a supervisor shutting down) is graceful: SYSTEM
``stop`` (the child's supervisors stop, ``terminate`` callbacks run), up to
``shutdown`` seconds for the process to exit, then SIGKILL to its whole process
group (which also takes along anything it started and left behind); then the
reader thread is joined and the socket closed.

A child runs on whichever CPU the kernel picks unless ``cpu_affinity`` says
otherwise (see :func:`start_process`).

The host never unpickles what a child sends unless it was started with
``trusted=True``.

Telemetry: ``process.start`` (``duration`` of the boot), ``process.boot_failed``,
``process.exit`` (``exitcode``; metadata ``reason``, ``kind``, ``expected``),
``process.protocol_error``, ``process.cast_dropped`` (a cast to a name that is not
registered), ``process.system`` (any other SYSTEM notice from a child). Metadata
always has ``actor``, ``name`` and ``pid``.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import select
import signal
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from runtime import logs, telemetry
from runtime.actor import (
    DEFAULT_CALL_TIMEOUT, Actor, ActorRef, ExitReason, Reply, ReplySink, time_left_here,
)
from runtime.child.boot import EXIT_CODES, BootConfig, child_main, send_rest, shared_codec
from runtime.childspec import ChildSpec, Restart
from runtime.errors import (
    ActorDead,
    ActorError,
    ActorFailed,
    CallTimeout,
    NoSuchActor,
    ProtocolError,
    SandboxError,
)
from runtime.host import forkserver, observed, parking, untrusted
from runtime.host.output import OutputCapture, OutputLine, OutputLog
from runtime.wire.channel import Channel, ChannelClosed
from runtime.wire.mailbox import (
    CALL,
    CAST,
    DEFAULT_MAX_FRAME,
    ERROR,
    MAX_ITEMS,
    REPLY,
    SYSTEM,
)

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "ChildAhead",
    "ProcessActor",
    "ProcessRef",
    "SandboxBootError",
    "process_spec",
    "start_process",
]

log = logging.getLogger("runtime.host.process")

#: Extra seconds a supervisor gives a process child beyond its graceful ``shutdown``
#: (the SIGKILL, reaping it, joining the reader).
KILL_MARGIN = 3.0
#: How long to wait for a killed (or EOF'd) child to be reaped.
_REAP_TIMEOUT = 5.0
#: The receive timeout (SO_RCVTIMEO) of the host's socket: a leading caller blocks
#: in the read itself (one system call per reply, as a bare client does, instead of
#: a poll and then a read) and looks at its deadline at least this often; the last
#: stretch before a deadline closer than this is waited for with poll.
_LEAD_WAIT = 0.05
#: After EOF, how long a child may take to exit on its own before it is killed.
_EXIT_GRACE = 2.0
#: Guard reports handled per child process; the rest are dropped (the security
#: controller has long since terminated a sandbox that sends this many).
MAX_VIOLATION_REPORTS = 10_000
#: Error types in a child's replies that mean it ran into a resource limit
#: (reported as ``process.resource_error`` telemetry: the child's claim).
_RESOURCE_ERRORS = ("MemoryError", "RecursionError", "Too many open files", "File too large")


class SandboxBootError(SandboxError):
    """A child process failed to start its app (or never said it was ready).

    ``remote_traceback`` is the child's traceback text when it sent one;
    ``exitcode`` the child's exit code when it is known.
    """

    def __init__(
        self,
        name: str,
        error: str,
        remote_traceback: str = "",
        exitcode: int | None = None,
    ) -> None:
        self.name = name
        self.error = error
        self.remote_traceback = remote_traceback
        self.exitcode = exitcode
        text = f"sandbox process {name!r} failed to start: {error}"
        if remote_traceback:
            text += f"\n--- remote traceback ---\n{remote_traceback.rstrip()}"
        super().__init__(text)


def describe_exit(exitcode: int | None, note: str | None = None) -> ExitReason:
    """The exit reason of a child that ended on its own with ``exitcode``.

    >>> describe_exit(-11).message
    'killed by SIGSEGV'
    >>> describe_exit(3)
    ExitReason(kind='exit', message='exited with code 3', traceback='')
    >>> describe_exit(0).kind
    'normal'
    """
    if exitcode is None:
        message = "exited (exit status unknown)"
    elif exitcode < 0:
        try:
            message = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            message = f"killed by signal {-exitcode}"
    else:
        message = f"exited with code {exitcode}"
        if exitcode in EXIT_CODES:
            message += f" ({EXIT_CODES[exitcode]})"
    if note:
        message += f": {note}"
    return ExitReason("normal" if exitcode == 0 else "exit", message)


#: The kinds of frame that answer a call.
_ANSWERS = frozenset({REPLY, ERROR})
_monotonic = time.monotonic
_DONTWAIT = socket.MSG_DONTWAIT

_live: weakref.WeakSet[_Connection] = weakref.WeakSet()


class _Connection:
    """Host end of one child: the process, its channel, pending replies, the reader."""

    def __init__(
        self, boot: BootConfig, *, trusted: bool, allow_pickle: bool, output: OutputLog | None = None
    ) -> None:
        self.boot = boot
        self.output = output if output is not None else OutputLog(boot.name)
        self.capture: OutputCapture | None = None
        self.name = boot.name
        self.actor_id = f"process:{boot.name}"
        # What a sandbox sends is hostile: its frames decode to a bounded number of
        # objects (MAX_ITEMS), not only a bounded number of bytes.
        # Shared with every connection of the same settings (runtime.child.boot.shared_codec).
        self.read_codec = shared_codec(trusted, boot.max_frame, None if trusted else MAX_ITEMS)
        if allow_pickle == trusted:
            self.write_codec = self.read_codec
        else:
            self.write_codec = shared_codec(allow_pickle, boot.max_frame)
        self.frame = self.write_codec.frame
        self.refs = itertools.count(1)
        self.pending: dict[int, ReplySink] = {}
        #: The ref of the call whose caller reads its own answer (not in pending).
        self.leading: int | None = None
        self.pid: int | None = None
        self.names: list[str] = []
        self.exitcode: int | None = None
        self.down: ExitReason | None = None  # set once: no more calls can succeed
        self.process: Any = None
        self.channel: Channel | None = None
        self.send_raw: Callable[[bytes], None] = self._not_started
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._proc_lock = threading.Lock()  # only one thread reads the exit status
        self._ready = Reply()  # completed by ``ready``, ``boot_failed`` or the child's end
        self._boot_error: dict[str, Any] | None = None
        self._exit_note: str | None = None
        self._closing = False  # the host is stopping the child: its exit is expected
        self._stop_sent = False  # the graceful stop went (stop_soon): close() sends none
        self._gone_unasked = False  # its end was read as unexpected (its actor fails)
        self._closed = False
        self._released = False  # process.close() done: its sentinel fd is gone
        self._on_down: Callable[[ExitReason], None] | None = None
        self._token = threading.Lock()  # held by the one thread reading the socket
        self._poll_fd = -1
        self._lead_poll = select.poll()
        self._problem: ProtocolError | None = None  # seen by a leading caller
        self._activity = 0  # bumped by every leading caller
        self._cv = threading.Condition()
        self._kicked = False
        #: The event loop reading this socket for its awaited calls, if one does.
        self.loop_watch: _LoopWatch | None = None
        #: Layers of OS isolation the child applied (from its ``ready``), and why
        #: others were skipped; what the child says, shown to operators.
        self.isolation: list[str] = []
        self.isolation_skipped: dict[str, str] = {}
        #: ``on_violation(event)``: the child's guard refused something. Runs in the
        #: thread reading the socket: must not block. The sandbox's identity is the
        #: callback's (bound by whoever started this child), never the event's.
        self.on_violation: Callable[[Any], None] | None = None
        self.violations = 0
        self._unasked_budget = untrusted.Budget(untrusted.UNASKED_RATE, untrusted.UNASKED_BURST)

    def _not_started(self, data: bytes) -> None:
        raise ActorDead(self.actor_id, self.down)

    # -- start -------------------------------------------------------------------------
    def start(self, ahead: ChildAhead | None = None) -> None:
        """Start the child: ``ahead``'s (forked before, and maybe given its plan
        before, if it fits this start: else it is given up) or one forked now; it
        gets its boot configuration (the rest of it, if it has its plan)."""
        plan = self.boot.isolation or {}
        userns, netns = bool(plan.get("userns")), bool(plan.get("netns_pool"))
        if ahead is not None and not ahead.fits(self.boot, userns, self.output):
            ahead.cancel()
            ahead = None
        if ahead is None:
            ahead = ChildAhead(self.output, userns=userns, netns=netns)
        proc = ahead.start(self.boot, netns=netns)
        host_sock, self.capture = ahead.host_sock, ahead.capture
        self.process = proc
        self.pid = proc.pid
        self.channel = Channel(host_sock, self.read_codec)
        usec = int(_LEAD_WAIT * 1_000_000)
        host_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, usec))
        self.send_raw = self.channel.send_raw
        self._poll_fd = os.dup(host_sock.fileno())
        self._lead_poll.register(self._poll_fd, select.POLLIN)
        _live.add(self)
        self._reader = threading.Thread(
            target=self._read_loop, name=f"sandbox-reader:{self.name}", daemon=True
        )
        self._reader.start()

    def wait_ready(self, timeout: float | None) -> None:
        """Wait for the child's ``ready``; on failure close it and raise SandboxBootError.

        The starting thread reads the socket itself while no caller does (:meth:`lead`),
        so ``ready`` wakes it directly instead of through the reader thread.
        """
        ready = self._ready
        if not ready.wait(self.lead(ready, timeout)):
            self.close(graceful=False)
            raise SandboxBootError(
                self.name,
                f"no 'ready' from the child (pid {self.pid}) within {timeout}s; "
                "is the entry function or an actor's init blocking?",
            )
        if self._boot_error is not None:
            err = self._boot_error
            self.close(graceful=True, timeout=_EXIT_GRACE)
            raise SandboxBootError(
                self.name,
                f"{err.get('type')}: {err.get('message')}",
                str(err.get("traceback") or ""),
                self.exitcode,
            )
        if self.down is not None:
            reason = self.down
            self.close(graceful=False)
            raise SandboxBootError(self.name, f"the child died while booting: {reason.message}",
                                   exitcode=self.exitcode)

    def attach(self, actor_id: str, on_down: Callable[[ExitReason], None]) -> None:
        """Hand the connection to its actor; ``on_down`` runs if the child goes away."""
        with self._lock:
            self.actor_id = actor_id
            if self.down is None or self._closing:
                self._on_down = on_down
                return
            reason = self.down
        on_down(reason)  # died between ready and now

    # -- sending -----------------------------------------------------------------------
    def submit(self, kind: str, target: str | None, payload: Any, sink: ReplySink) -> int:
        """Register ``sink`` for a new ref and send the frame; returns the ref."""
        ref = next(self.refs)
        # Nothing sent on TypeError/ProtocolError. Kinds here are this module's and refs
        # its count: a str target leaves nothing for frame() to check.
        pack = self.write_codec.pack_frame if type(target) is str else self.frame
        data = pack(kind, ref, target, payload)
        pending = self.pending
        pending[ref] = sink
        # down is set before pending is swapped out, so a sink registered in the old
        # dict after it was emptied is caught here.
        if self.down is not None:
            pending.pop(ref, None)
            raise ActorDead(self.actor_id, self.down)
        try:
            self.send_raw(data)
        except ChannelClosed:
            self.pending.pop(ref, None)
            pending.pop(ref, None)
            raise ActorDead(self.actor_id, self.down or ExitReason("exit", "channel closed")) from None
        return ref

    def forget(self, ref: int) -> None:
        self.pending.pop(ref, None)

    def cast(self, target: str, payload: Any) -> None:
        data = self.frame(CAST, None, target, payload)
        self._send_checked(data)

    def cast_many(self, target: str, payloads: Iterable[Any]) -> None:
        data = self.write_codec.casts(target, payloads)
        if data:
            self._send_checked(data)

    def _send_checked(self, data: bytes) -> None:
        if self.down is not None:
            raise ActorDead(self.actor_id, self.down)
        try:
            self.send_raw(data)
        except ChannelClosed:
            raise ActorDead(self.actor_id, self.down or ExitReason("exit", "channel closed")) from None

    # -- reading -----------------------------------------------------------------------
    # Replies are read by whoever holds the read token: a caller waiting for its own
    # reply reads the socket itself (the "leader"), so a call costs no thread hop;
    # a caller that finds the token taken just waits, and the leader routes its
    # reply. The reader thread reads whenever no caller leads: it notices EOF,
    # protocol errors and system notices while no call is in flight, and serves
    # call_into sinks. While callers are leading it parks (it would only wake on
    # their replies and fight them for the GIL) until runtime.host.parking sees
    # them quiet; a leader that leaves work behind (other callers'
    # replies, an EOF, a protocol error) kicks it awake. An event loop awaiting
    # calls reads the same way, when its selector sees the socket readable
    # (_LoopWatch, read_here), without blocking.
    # Both poll a private dup of the socket's fd, which stays valid (and reports the
    # hang-up) even after the channel closed its own fd.

    def call(self, target: str, request: Any, timeout: float | None) -> Any:
        """Send a CALL to ``target`` and return its answer (:meth:`ProcessRef.call`).

        The common case, no other thread reading, is one function, a hot path
        inlined for speed: the caller takes the read token, frames and sends, and
        reads until its own answer (routing whatever else arrives), like a bare
        client; no reply slot, no entry in ``pending``. A caller that finds the
        token taken registers a :class:`Reply` and lets the reader route to it
        (:meth:`_call_queued`); so does a read that breaks (EOF, a protocol error),
        whose answer is then the reader thread's ``ActorDead``.
        """
        token = self._token
        if type(target) is not str or self._problem is not None or not token.acquire(False):
            return self._call_queued(target, request, timeout)
        self._activity += 1
        kick = False
        waiter: Reply | None = None
        try:
            if self.down is not None:
                raise ActorDead(self.actor_id, self.down)
            ref = self.leading = next(self.refs)  # in flight: ProcessRef.oldest_request
            data = self.write_codec.pack_frame(CALL, ref, target, request)  # raises: nothing sent
            channel: Channel = self.channel  # type: ignore[assignment]
            try:
                channel.send_raw(data)
            except ChannelClosed:
                raise ActorDead(self.actor_id, self.down or ExitReason("exit", "channel closed")) from None
            deadline = None if timeout is None else _monotonic() + timeout
            recv = channel.recv_some
            while True:
                if (deadline is not None and deadline - _monotonic() < _LEAD_WAIT
                        and not self._readable_by(deadline)):
                    raise CallTimeout(f"{self.actor_id}/{target}", timeout)
                mine = None
                try:
                    for env in recv():
                        if env.ref == ref and mine is None and env.kind in _ANSWERS:
                            mine = env
                        else:
                            self._route((env,))
                except (ChannelClosed, ProtocolError) as exc:
                    self._read_broke(exc)
                    kick = True
                    if mine is None:  # the reader thread answers: ActorDead
                        waiter = Reply()
                        self.pending[ref] = waiter
                        if self.down is not None:  # marked down before the entry went in
                            self.pending.pop(ref, None)
                            raise ActorDead(self.actor_id, self.down) from None
                        break
                if mine is not None:
                    if mine.kind == REPLY:
                        return mine.payload
                    raise self._remote_error(mine.payload)
        finally:
            self.leading = None
            token.release()
            if kick or self.pending:
                self.kick()
        assert waiter is not None  # the loop only breaks with one
        left = None if deadline is None else max(deadline - _monotonic(), 0.0)
        return self._answer(waiter, ref, target, left, timeout)

    def _call_queued(self, target: str, request: Any, timeout: float | None) -> Any:
        """:meth:`call` when another thread is reading: the answer comes through
        ``pending`` (this thread leads if the reader leaves before it arrives)."""
        reply = Reply()
        ref = self.submit(CALL, target, request, reply)
        return self._answer(reply, ref, target, self.lead(reply, timeout), timeout)

    def _answer(self, reply: Reply, ref: int, target: str, left: float | None,
                timeout: float | None) -> Any:
        """The answer in ``reply``, waiting up to ``left`` seconds for it."""
        if not reply.done() and not reply.wait(left):
            self.forget(ref)
            if not reply.wait(0):  # the reply may have raced the timeout
                raise CallTimeout(f"{self.actor_id}/{target}", timeout)
        return reply.result()

    def lead(self, waiter: Reply, timeout: float | None) -> float | None:
        """Read frames in the calling thread until ``waiter`` is done or ``timeout``
        passes, if no other thread is reading (else return at once).

        Returns the time left of ``timeout`` (None for no timeout).
        """
        token = self._token
        if not token.acquire(blocking=False):
            return timeout
        self._activity += 1
        deadline = None if timeout is None else _monotonic() + timeout
        kick = False
        try:
            if self._poll_fd < 0 or self._problem is not None:
                return timeout
            recv = self.channel.recv_some  # type: ignore[union-attr]
            route = self._route
            pending = waiter._done.locked  # true until the reply is in (Reply.done)
            while pending():
                if deadline is not None and not self._readable_by(deadline):
                    return 0.0
                try:
                    route(recv())
                except (ChannelClosed, ProtocolError) as exc:
                    self._read_broke(exc)
                    kick = True
                    break
        finally:
            token.release()
            if kick or self.pending:
                self.kick()
        if deadline is None or not pending():
            return timeout  # done (the caller's wait returns at once) or no deadline
        return max(deadline - _monotonic(), 0.0)

    def read_here(self, watch: _LoopWatch) -> None:
        """Read and route what the socket holds now, in the calling thread, without
        blocking: ``watch``'s loop has seen it readable (:class:`_LoopWatch`).

        Counts as a leading caller's activity, so the parked reader thread stays
        parked. Ends the watch if another thread holds the read token (it routes what
        is there) or the stream ended (the reader thread, kicked, answers the calls).
        """
        token = self._token
        if not token.acquire(False):
            watch.stop()
            return
        self._activity += 1
        ended = broke = False
        try:
            if self._poll_fd < 0 or self._problem is not None:
                ended = True
            else:  # without waiting: a leading caller may have taken it meanwhile
                self._route(self.channel.recv_some(_DONTWAIT))  # type: ignore[union-attr]
        except (ChannelClosed, ProtocolError) as exc:
            self._read_broke(exc)
            ended = broke = True
        finally:
            token.release()
        if ended:
            if broke:
                self.kick()  # the reader thread answers the pending calls
            watch.stop()

    def watch_from(self, loop: asyncio.AbstractEventLoop,
                   reads: Callable[[Callable[[Any], None], Any], None] | None = None) -> bool:
        """Have ``loop`` read this socket (:class:`_LoopWatch`, ``reads`` as in
        :meth:`ProcessRef.call_awaited`); False if it cannot now: another thread is
        reading, the child is gone, or no fd is left."""
        token = self._token
        if not token.acquire(False):
            return False
        try:  # under the token: the reader thread closes _poll_fd holding it
            if self._poll_fd < 0:
                return False
            self.loop_watch = _LoopWatch(self, loop, reads)
            return True
        except OSError:
            return False
        finally:
            token.release()

    def _readable_by(self, deadline: float) -> bool:
        """Whether a read is worth making before ``deadline`` (False: it passed).

        The read itself gives up after _LEAD_WAIT (SO_RCVTIMEO), so with more
        than that left it just reads; a closer deadline is waited for exactly,
        with poll.
        """
        while True:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                return False
            if remaining >= _LEAD_WAIT or self._lead_poll.poll(remaining * 1000.0):
                return True

    def _read_broke(self, exc: BaseException) -> None:
        """A leading caller's read ended the stream: EOF (the reader thread sees it
        too and handles it) or a protocol error (kept for the reader to report)."""
        if isinstance(exc, ProtocolError):
            self._problem = exc
            self.channel.close()  # type: ignore[union-attr]

    def kick(self) -> None:
        """Make the reader thread read now (it may be parked)."""
        with self._cv:
            self._kicked = True
            self._cv.notify()

    def _park(self) -> None:
        """Wait while callers lead; return once someone kicks: a caller leaving work
        behind, the stop, or :mod:`runtime.host.parking` once the callers are quiet
        (one thread looks at every parked reader, so a reader does not wake up
        every period to look for itself)."""
        with self._cv:
            parking.park(self)
            try:
                while not self._kicked:
                    self._cv.wait()
            finally:
                parking.unpark(self)
            self._kicked = False

    @property
    def activity(self) -> int:
        """How many times callers have read for themselves (:mod:`runtime.host.parking`)."""
        return self._activity

    def quiet_since(self, seen: int) -> bool:
        """No caller read since :attr:`activity` was ``seen``, and none reads now."""
        return self._activity == seen and not self._token.locked()

    def _route(self, envelopes: Iterable[Any]) -> None:
        for env in envelopes:
            kind = env.kind
            if kind == REPLY:
                sink = self.pending.pop(env.ref, None)
                if sink is not None:
                    sink.set_result(env.payload)
                else:
                    self._unasked()
            elif kind == ERROR:
                sink = self.pending.pop(env.ref, None)
                if sink is not None:
                    sink.set_exception(self._remote_error(env.payload))
                else:
                    self._unasked()
            elif kind == SYSTEM:
                self._unasked()
                self._on_system(env.target, env.payload)
            else:
                raise ProtocolError(
                    f"the child sent a {kind!r} frame; a sandbox only sends "
                    "reply, error and system frames"
                )

    def _unasked(self) -> None:
        """A frame no call asked for: within the sandbox's budget, or a flood."""
        if not self._unasked_budget.take():
            raise ProtocolError(
                f"the sandbox sent frames nobody asked for (notices, unknown replies) faster "
                f"than {untrusted.UNASKED_RATE}/s beyond a burst of {untrusted.UNASKED_BURST}: "
                "it is flooding its host"
            )

    def _read_loop(self) -> None:
        channel = self.channel
        assert channel is not None
        recv = channel.recv_some
        poller = select.poll()
        poller.register(self._poll_fd, select.POLLIN)
        poll = poller.poll
        token = self._token
        problem: ProtocolError | None = None
        try:
            while True:
                if self._problem is not None:
                    raise self._problem
                seen = self._activity
                poll()  # without the token: a leading caller may read this data
                if self._problem is not None:
                    raise self._problem
                if self._activity != seen or token.locked():
                    self._park()  # callers are leading: leave the reading to them
                    continue
                with token:
                    if self._problem is not None:
                        raise self._problem
                    if poll(0):
                        self._route(recv())
        except ProtocolError as exc:
            problem = exc
        except ChannelClosed:
            problem = self._problem
        except BaseException as exc:  # a bug here must not leave callers hanging
            log.exception("reader of sandbox %s crashed", self.name)
            problem = ProtocolError(f"host reader failed: {type(exc).__name__}: {exc}")
        finally:
            channel.close()  # wakes a leading caller, which then gives the token back
            with token:
                fd, self._poll_fd = self._poll_fd, -1
                os.close(fd)
            watch = self.loop_watch
            if watch is not None:
                watch.stop_soon()
        self._child_gone(problem)

    def _on_system(self, op: str | None, payload: Any) -> None:
        if op == "ready":
            if isinstance(payload, dict):
                names = payload.get("names")
                if isinstance(names, list):
                    self.names = [untrusted.name(n) for n in names[:10_000]]
                layers = payload.get("isolation")
                if isinstance(layers, list):
                    self.isolation = [untrusted.text(x, 40) for x in layers[:20]]
                skipped = payload.get("isolation_skipped")
                if isinstance(skipped, dict):
                    self.isolation_skipped = {
                        untrusted.text(k, 40): untrusted.text(v, 300)
                        for k, v in list(skipped.items())[:20]
                    }
            self._ready.set_result(None)
        elif op == "boot_failed":
            err = payload if isinstance(payload, dict) else {"message": payload}
            self._boot_error = {
                "type": untrusted.name(err.get("type") or "Error"),
                "message": untrusted.text(err.get("message") or ""),
                "traceback": untrusted.block(err.get("traceback") or ""),
            }
            self._ready.set_result(None)
        elif op == "exiting":
            if isinstance(payload, dict):
                self._exit_note = untrusted.text(payload.get("reason", ""))
        elif op == "security_violation":
            self.violations += 1
            if self.violations > MAX_VIOLATION_REPORTS:
                if self.violations == MAX_VIOLATION_REPORTS + 1:
                    telemetry.execute("process.violations_dropped", {"count": 1}, self._md())
                return
            telemetry.execute(
                "process.security_violation", {"count": self.violations}, self._md()
            )
            callback = self.on_violation
            if callback is not None:
                try:
                    callback(payload)
                except Exception:
                    log.exception("violation handler of sandbox %s failed", self.name)
        elif op == "log":  # a record logged in the sandbox (runtime/logs.py)
            logs.emit_from_sandbox(payload, **logs.sandbox_fields(self.name))
        elif op == "cast_dropped":
            md = payload if isinstance(payload, dict) else {}
            telemetry.execute(
                "process.cast_dropped",
                {"count": 1},
                {**self._md(), "target": untrusted.name(md.get("target")),
                 "reason": untrusted.text(md.get("reason"))},
            )
        else:
            telemetry.execute("process.system", {"count": 1},
                              {**self._md(), "op": untrusted.name(op), "payload": payload})

    def _remote_error(self, payload: Any) -> BaseException:
        if not isinstance(payload, dict):
            return ActorError(
                f"sandbox {self.name!r} sent a malformed error: {untrusted.text(repr(payload), 300)}")
        # Everything here is the sandbox's word: neutralised and capped before it
        # reaches an exception, a log, last_error or a terminal.
        kind = untrusted.name(payload.get("type") or "Error")
        message = untrusted.text(payload.get("message") or "")
        tb = untrusted.block(payload.get("traceback") or "")
        actor = payload.get("actor")
        actor = untrusted.name(actor) if actor is not None else None
        where = f"{self.name}/{actor}" if actor else self.name
        exc: BaseException
        if kind == "ActorFailed":
            cid = payload.get("correlation_id")
            exc = ActorFailed(where, message, tb, untrusted.name(cid) if cid else None)
        elif kind == "ActorDead":
            exc = ActorDead(where, message or None)
        elif kind == "NoSuchActor":
            names = payload.get("names")
            exc = NoSuchActor(str(actor), [untrusted.name(n) for n in names[:1000]]
                              if isinstance(names, list) else None)
            exc.add_note(f"(in sandbox {self.name!r})")
        elif kind == "EncodeError":
            exc = ActorError(message)
        else:
            exc = ActorFailed(where, f"{kind}: {message}", tb)
        text = f"{kind}: {message}"
        hit = next((r for r in _RESOURCE_ERRORS if r in text[:2000]), None)
        if hit is not None:
            telemetry.execute(
                "process.resource_error", {"count": 1}, {**self._md(), "error": hit}
            )
        return exc

    # -- the end -----------------------------------------------------------------------
    def _md(self) -> dict[str, Any]:
        return {"actor": self.actor_id, "name": self.name, "pid": self.pid}

    def _child_gone(self, problem: ProtocolError | None) -> None:
        """The reader stopped: the child exited, broke the protocol, or we closed it."""
        with self._lock:
            expected = self._closing
            self._gone_unasked = not expected
        if expected:
            self._mark_down(ExitReason.shutdown())
            return  # close() waits for the exit and reports it
        if problem is not None:
            log.error("sandbox %s (pid %s) broke the protocol: %s; killing it",
                      self.name, self.pid, problem, extra=logs.failure_fields(
                          **logs.sandbox_fields(self.name)))
            telemetry.execute(
                "process.protocol_error", {"count": 1}, {**self._md(), "error": str(problem)}
            )
            self._kill()
        code = self._wait_exit(_EXIT_GRACE)
        self._kill()  # what it left running in its group; or itself, if it lingers
        if code is None:  # it closed its end of the socket but lived on
            code = self._wait_exit(_REAP_TIMEOUT)
        if problem is not None:
            reason = ExitReason(
                "protocol", f"sandbox {self.name!r} (pid {self.pid}) broke the mailbox protocol: {problem}"
            )
        else:
            reason = describe_exit(code, self._exit_note)
        reason = reason.located(**logs.sandbox_fields(self.name))  # for the supervisor's log
        self._mark_down(reason)
        self._ready.set_result(None)  # a child that died while booting
        telemetry.execute(
            "process.exit",
            {"exitcode": code},
            {**self._md(), "reason": reason.message, "kind": reason.kind, "expected": False},
        )
        with self._lock:
            on_down = None if self._closing else self._on_down
        if on_down is not None:
            on_down(reason)

    def _mark_down(self, reason: ExitReason) -> None:
        with self._lock:
            if self.down is None:
                self.down = reason
            reason = self.down
            pending, self.pending = self.pending, {}
        for sink in pending.values():
            sink.set_exception(ActorDead(self.actor_id, reason))

    def wait_exited(self, timeout: float | None) -> bool:
        """Whether the child has exited (see :meth:`forkserver.Child.wait_exited`),
        waiting up to ``timeout``; False for a child not started. Safe while another
        thread closes the connection."""
        proc = self.process
        return proc is not None and proc.wait_exited(timeout)

    def _wait_exit(self, timeout: float | None) -> int | None:
        """The child's exit code once it has exited (within ``timeout``), else None."""
        if self.exitcode is not None or self._released:
            return self.exitcode
        proc = self.process
        if proc is None:
            return None
        # The sentinel becomes readable once the forkserver has reaped the child and
        # written its status; reading the status then does not block. Waiting needs
        # no lock; reading does (two readers would split the status bytes).
        try:
            if not forkserver.readable(proc.sentinel, timeout):
                return None
        except (OSError, ValueError):  # released concurrently by close()
            return self.exitcode
        with self._proc_lock:
            if self._released:
                return self.exitcode
            if self.exitcode is None:
                self.exitcode = proc.exitcode
            return self.exitcode

    def _kill(self) -> None:
        """SIGKILL the child's whole process group (and the child, if it has none yet).

        Also after the child has exited: whatever it started in its group (its
        pgid is its pid, which cannot be handed out again while the group lives)
        goes with it.
        """
        pid = self.pid
        if pid is None:
            return
        exited = self._wait_exit(0) is not None
        kills = (os.killpg,) if exited else (os.killpg, os.kill)  # a reaped pid may be reused
        for kill in kills:
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self, *, graceful: bool = True, timeout: float | None = None) -> ExitReason:
        """Stop the child (gracefully if asked and alive), then release everything.

        Idempotent. Returns how the child ended.
        """
        with self._lock:
            if self._closed:
                return self.down or ExitReason.shutdown()
            self._closed = True
            self._closing = True
        timeout = self.boot.shutdown if timeout is None else timeout
        _live.discard(self)
        was_down = self.down
        code = self._wait_exit(0)
        if code is None and self.process is not None:
            if graceful and self.channel is not None:
                if not self._stop_sent:  # else stop_soon sent it, and kicked the reader
                    try:
                        self.channel.send(SYSTEM, None, "stop", None)
                    except (ChannelClosed, ValueError, TypeError):
                        pass
                    self.kick()  # a parked reader reads the EOF while the child exits
                code = self._wait_exit(timeout)
            if code is None and graceful:
                log.warning("sandbox %s (pid %s) did not stop within %ss; killing it",
                            self.name, self.pid, timeout)
        if self.process is not None:
            self._kill()  # the child if it is still there, and its process group
            if code is None:
                code = self._wait_exit(_REAP_TIMEOUT)
        if self.channel is not None:
            self.channel.close()
        self.kick()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(_REAP_TIMEOUT)
            if reader.is_alive():
                log.error("reader thread of sandbox %s did not end", self.name)
        self._mark_down(ExitReason.shutdown())
        if self.process is not None:
            if code is not None:
                with self._proc_lock:
                    self._released = True
                    try:
                        self.process.close()  # the status pipe's fds
                    except ValueError:
                        pass
            else:
                log.error("sandbox %s (pid %s) could not be reaped", self.name, self.pid)
        if self.capture is not None:
            self.capture.close()  # after the exit: what it wrote last is read first
        if was_down is None and self.pid is not None:
            reason = describe_exit(code) if code not in (0, None) else ExitReason.shutdown()
            telemetry.execute(
                "process.exit",
                {"exitcode": code},
                {**self._md(), "reason": reason.message, "kind": reason.kind, "expected": True},
            )
        return was_down or ExitReason.shutdown()


class _LoopWatch:
    """An event loop reading one connection's answers itself for its awaited
    calls (:meth:`ProcessRef.call_awaited`), as a blocking caller reads its own.

    The reader thread would otherwise wake on each answer, wait for the GIL the
    loop holds and hand the answer over (two wake-ups per call); the loop reads
    under the read token, so the reader thread stays parked. The loop watches a
    private dup of the socket's fd: the reader thread closes its own when the
    child goes, and a number freed under the loop's selector could be reused.
    The watch outlives the calls (adding and removing it per call costs four
    system calls): it ends (the reader thread reads alone again) when another
    thread holds the token as it reads, when the stream ends, or when another
    loop calls once this one is closed.
    """

    __slots__ = ("conn", "loop", "fd", "_lock")

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop,
                 reads: Callable[[Callable[[Any], None], Any], None] | None = None) -> None:
        self.conn = conn
        self.loop = loop
        self._lock = threading.Lock()  # stop() may run in the reader thread too
        self.fd = os.dup(conn._poll_fd)
        try:
            # The connection's read itself, or the caller's callback around it.
            if reads is None:
                loop.add_reader(self.fd, conn.read_here, self)
            else:
                loop.add_reader(self.fd, reads, conn.read_here, self)
        except BaseException:
            os.close(self.fd)
            raise

    def stop(self) -> None:
        """End the watch: in the loop's thread, or in any once the loop is closed."""
        if self.conn.loop_watch is self:
            self.conn.loop_watch = None
        with self._lock:
            fd, self.fd = self.fd, -1
            if fd >= 0:
                if not self.loop.is_closed():
                    self.loop.remove_reader(fd)
                os.close(fd)

    def stop_soon(self) -> None:
        """End the watch from the reader thread (the child is gone): the loop's
        thread does it if the loop is open; a closed loop no longer uses the fd."""
        try:
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.stop)
                return
        except RuntimeError:  # closed meanwhile
            pass
        self.stop()


class ChildAhead:
    """A child asked of the fork server before its boot configuration is known
    (:func:`runtime.host.forkserver.begin`): its fork and first steps overlap
    whatever the host does before :func:`start_process` (a sandbox's containment
    and compile). It runs nothing until :meth:`start` hands it its configuration,
    or :meth:`isolate` its isolation plan (its OS layers then overlap the rest of
    the host's work, and :meth:`start` sends the rest); :meth:`cancel` gives it up
    (it is killed unused). ``output``: where its stdout/stderr go;
    ``userns``/``netns``: as the plan it will get should say (a start whose plan
    differs gives it up and forks another).
    """

    def __init__(self, output: OutputLog, *, userns: bool, netns: bool) -> None:
        self.output, self.userns = output, userns
        #: The first part of its configuration, once :meth:`isolate` sent it.
        self.first: BootConfig | None = None
        #: The child, once forked and given (part of) its configuration.
        self.proc: forkserver.Child | None = None
        self.host_sock, child_sock = socket.socketpair()
        self.capture = OutputCapture(output)
        self._child_sock: socket.socket | None = child_sock
        try:
            self._pending: forkserver.Pending | None = forkserver.begin(
                (child_sock.fileno(), *self.capture.child_fds()), userns=userns, netns=netns)
        except BaseException:
            self.cancel()
            raise

    def isolate(self, isolation: dict[str, Any] | None, *, cpu_affinity: list[int] | None = None) -> None:
        """Hand the child its isolation plan (and CPU affinity) now, before the rest
        of its configuration is known: it applies its OS layers while the host
        compiles and records versions, then waits on its channel for the rest,
        which :meth:`start` sends (:func:`runtime.child.boot.read_rest`). Nothing
        of the app reaches it before its layers are on. On failure nothing of it
        is left."""
        plan = isolation or {}
        if bool(plan.get("userns")) != self.userns or self._pending is None:
            return  # not forked as this plan needs (or given up): its start forks another
        first = BootConfig(entry="", isolation=isolation, cpu_affinity=cpu_affinity,
                           rest_follows=True)
        self._launch(first, netns=bool(plan.get("netns_pool")))
        self.first = first

    def fits(self, boot: BootConfig, userns: bool, output: OutputLog) -> bool:
        """Whether this child may run the start of ``boot``: forked as its plan
        needs, for its output, and (if given its plan already) given this plan."""
        if self.userns != userns or self.output is not output:
            return False
        if self._pending is None and self.proc is None:
            return False  # given up (or its fork server died)
        first = self.first
        return first is None or (first.isolation == boot.isolation
                                 and first.cpu_affinity == boot.cpu_affinity)

    def start(self, boot: BootConfig, *, netns: bool) -> forkserver.Child:
        """Hand the child ``boot`` (it runs :func:`child_main`), or the rest of it
        after :meth:`isolate`; returns it. On failure nothing of it is left."""
        if self.first is None:
            self._launch(boot, netns=netns)
        else:
            try:
                send_rest(self.host_sock, boot)
            except OSError:
                pass  # it died: the start sees it as a child that died while booting
        proc, self.proc = self.proc, None
        assert proc is not None
        return proc

    def _launch(self, boot: BootConfig, *, netns: bool) -> None:
        assert self._pending is not None and self._child_sock is not None
        try:
            self.proc = self._pending.start(child_main, (boot,), netns=netns)
        except BaseException:
            self.cancel()
            raise
        self._pending = None
        self._child_sock.close()
        self._child_sock = None
        self.capture.started()

    def cancel(self) -> None:
        """Give the child up: killed before it ran anything (or, given its plan
        only, killed and waited for: nothing of it is left). Does nothing after
        :meth:`start` succeeded."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _kill_unused(proc)
            self.host_sock.close()
            self.capture.close()
            return
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._child_sock is not None:
            self._child_sock.close()
            self._child_sock = None
            self.host_sock.close()
            self.capture.close()


def _kill_unused(proc: forkserver.Child) -> None:
    """Kill a child that never got the rest of its configuration (it ran nothing
    of the app, started nothing) and wait until it is gone, so a failed create's
    clean-up finds its cgroups empty."""
    if not proc.wait_exited(0):  # one that exited may be reaped, its pid reused
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if not proc.wait_exited(_REAP_TIMEOUT):
        log.error("an unused child (pid %s) did not exit", proc.pid)
    if proc.exited.wait(_REAP_TIMEOUT):
        proc.close()


def _close_all_at_exit() -> None:
    """At host exit: stop every child still running (EOF makes each stop gracefully)."""
    conns = list(_live)
    for conn in conns:
        try:
            conn.close(graceful=True, timeout=min(conn.boot.shutdown, 2.0))
        except Exception:  # exiting anyway
            pass


# Registered after multiprocessing's own exit handler, so it runs before it.
atexit.register(_close_all_at_exit)


class ProcessActor(Actor):
    """The host-side actor of one child process (see the module docstring).

    Its mailbox carries only lifecycle traffic; calls and casts go straight to the
    socket. The actor fails (abnormal exit reason ``exit`` or ``protocol``) when the
    child goes away without being asked, so supervisors and monitors see it.
    """

    def __init__(self, conn: _Connection, *, name: str | None = None, shutdown: float = 5.0) -> None:
        super().__init__(name=name)
        self.conn = conn
        self.shutdown = shutdown

    def _child_down(self, reason: ExitReason) -> None:  # from the reader thread
        self._request_stop(reason)

    def on_call(self, request: Any) -> Any:
        raise TypeError("call a sandbox with ProcessRef.call(target, request)")

    def on_cast(self, request: Any) -> None:
        raise TypeError("cast to a sandbox with ProcessRef.cast(target, request)")

    def on_exit(self, reason: ExitReason) -> None:
        self.conn.close(graceful=True, timeout=self.shutdown)

    def _exits_quietly(self) -> bool:
        # Its ending is the runtime's (close the connection within the process's own
        # shutdown and kill), so a stop_here may run it on the stopping thread: if
        # that fits in the time the stop has left (else its thread is abandoned then).
        left = time_left_here()
        return (type(self).on_exit is ProcessActor.on_exit
                and (left is None or left >= self.shutdown + KILL_MARGIN))


class ProcessRef(ActorRef):
    """Handle on a :class:`ProcessActor`: talk to the actors inside its child process.

    Everything here is safe from any number of threads.
    """

    __slots__ = ("_conn",)

    def __init__(self, actor: Actor) -> None:
        super().__init__(actor)
        self._conn: _Connection = actor.conn  # type: ignore[attr-defined]

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._conn.pid

    @property
    def names(self) -> list[str]:
        """Names registered in the child when it became ready (``system("names")`` is live)."""
        return list(self._conn.names)

    @property
    def isolation(self) -> list[str]:
        """The isolation layers the child has, as the host reads them from /proc
        (:mod:`runtime.host.observed`); the audit hook, invisible from outside,
        counts when the host installed a guard and the child confirmed it."""
        conn = self._conn
        if conn.pid is None:
            return []
        requested = ["audit-hook"] if conn.boot.guard is not None else []
        if (conn.boot.isolation or {}).get("egress"):
            requested.append("nftables")  # loaded before user code, or the boot failed
        return observed.layers(conn.pid, conn.isolation, requested)

    @property
    def isolation_claimed(self) -> list[str]:
        """The layers the child says it applied (its word; see :attr:`isolation`)."""
        return list(self._conn.isolation)

    @property
    def isolation_skipped(self) -> dict[str, str]:
        """Layers not applied, with the reason."""
        return dict(self._conn.isolation_skipped)

    def oldest_request(self) -> int | None:
        """The ref of the oldest call or system request still awaiting its reply
        (None: none); the resource monitor charges CPU to it (``cpu_seconds``)."""
        conn = self._conn
        leading = conn.leading  # a call read by its caller is not in pending
        oldest = None
        for _ in range(3):
            try:
                oldest = next(iter(conn.pending), None)
                break
            except RuntimeError:  # changed by another thread meanwhile: look again
                continue
        if oldest is None or leading is None:
            return leading if oldest is None else oldest
        return min(oldest, leading)

    @property
    def exitcode(self) -> int | None:
        """The child's exit code once it has exited (negative: killed by that signal)."""
        return self._conn.exitcode

    def output(self, tail: int | None = None) -> list[OutputLine]:
        """The last ``tail`` lines the child (and earlier processes sharing its
        :class:`~runtime.host.output.OutputLog`) wrote to stdout/stderr, neutralised."""
        return self._conn.output.tail(tail)

    def call(  # type: ignore[override]
        self, target: str, request: Any, *, timeout: float | None = DEFAULT_CALL_TIMEOUT
    ) -> Any:
        """Call the actor registered as ``target`` in the child; return its reply.

        Raises ``ActorFailed`` (the remote handler raised; remote traceback
        included), ``NoSuchActor``, ``ActorDead`` (the actor or the process is gone),
        ``CallTimeout``, ``ActorError`` (the reply could not be encoded), and
        ``TypeError`` if ``request`` cannot be encoded (nothing is sent then).
        """
        return self._conn.call(target, request, timeout)

    def call_wait(self, target: str, request: Any, reply: Reply, timeout: float | None) -> bool:
        """Send a call whose answer goes to ``reply`` and wait for it up to ``timeout``
        seconds, reading the socket in this thread as :meth:`call` does (no thread
        hand-off); True once the answer is in ``reply``.

        On False the call stays pending: its answer still reaches ``reply`` (the
        reader thread reads it). For a caller that keeps the reply after its own
        wait, e.g. to watch a deadline.

        >>> from runtime.actor import Reply
        >>> callable(ProcessRef.call_wait)
        True
        """
        conn = self._conn
        conn.submit(CALL, target, request, reply)
        left = conn.lead(reply, timeout)
        return reply.done() or reply.wait(left)

    def call_into(  # type: ignore[override]
        self, request: Any, reply: ReplySink, *, run_here: bool = False
    ) -> int:
        """Send a call whose answer goes to ``reply``; ``request`` is ``(target, request)``
        (``run_here`` does not apply: the handler runs in the child).

        Returns the call's ref, for :meth:`forget` when nobody wants the answer any more.
        """
        target, payload = request
        ref = self._conn.submit(CALL, target, payload, reply)
        self._conn.kick()  # nobody waits in a call to read the answer: the reader does
        return ref

    def call_awaited(self, target: str, request: Any, sink: ReplySink,
                     loop: asyncio.AbstractEventLoop,
                     reads: Callable[[Callable[[Any], None], Any], None] | None = None) -> int:
        """:meth:`call_into` for a caller awaiting in ``loop`` (run in its thread):
        the loop reads the answer itself (:class:`_LoopWatch`: ``sink`` is then
        answered in the loop's thread) instead of the reader thread. Returns the
        call's ref.

        ``reads``, if given, is the loop's reader callback for the socket instead of
        the connection's read: called as ``reads(read, watch)``, it must call
        ``read(watch)`` (e.g. to act on the answers once the read is done); only the
        first call's counts while the loop watches the socket.
        """
        conn = self._conn
        ref = conn.submit(CALL, target, request, sink)
        watch = conn.loop_watch
        if watch is not None and watch.loop is not loop:
            if not watch.loop.is_closed():
                conn.kick()  # another loop reads: the reader thread serves this one
                return ref
            watch.stop()
            watch = None
        if watch is None and not conn.watch_from(loop, reads):
            conn.kick()  # the reader thread answers this one
        return ref

    def forget(self, ref: int) -> None:
        """Drop the pending answer of a :meth:`call_into` (its caller gave up)."""
        self._conn.forget(ref)

    def cast(self, target: str, request: Any) -> None:  # type: ignore[override]
        """Send ``request`` to ``target`` without waiting (a missing target is reported
        by ``process.cast_dropped`` telemetry)."""
        self._conn.cast(target, request)

    def cast_many(self, target: str, requests: Iterable[Any]) -> None:  # type: ignore[override]
        """Send many casts to ``target`` in one write."""
        self._conn.cast_many(target, requests)

    def system(self, op: str, payload: Any = None, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Run the child's SYSTEM op ``op`` with ``payload``; return its result."""
        conn = self._conn
        reply = Reply()
        ref = conn.submit(SYSTEM, op, payload, reply)
        if not reply.wait(conn.lead(reply, timeout)):
            conn.forget(ref)
            if not reply.wait(0):
                raise CallTimeout(f"{self.id} (system {op!r})", timeout)
        return reply.result()

    def stop(
        self, reason: ExitReason | None = None, *, timeout: float | None = None
    ) -> ExitReason:
        """Stop the child gracefully (see the module docstring); returns the exit reason.

        ``timeout`` defaults to the process's ``shutdown`` plus a margin for the kill.
        """
        if timeout is None:
            timeout = self._actor.shutdown + KILL_MARGIN  # type: ignore[attr-defined]
        return super().stop(reason, timeout=timeout)

    def stop_soon(self) -> bool:
        """Ask the child to stop gracefully now, without waiting.

        From here its exit is expected: it neither fails the actor nor makes a
        supervisor restart it; the actor runs until stopped, and :meth:`stop` then
        waits for the exit (and kills the child if it is late). A destroy asks
        first, so the child's shutdown overlaps the hand-offs that lead to the stop.

        Returns whether the child's end is the host's from here (asked now or
        before, and not read as unexpected earlier): then no supervisor restarts
        it, and once it has exited (:meth:`wait_exited`) its sandbox runs no process
        of this start any more. False for a child not started.
        """
        conn = self._conn
        with conn._lock:
            if conn.channel is None:
                return False
            if conn._closing:
                return not conn._gone_unasked
            conn._closing = conn._stop_sent = True
        try:
            conn.channel.send(SYSTEM, None, "stop", None)
        except (ChannelClosed, ValueError, TypeError):
            pass  # gone already: stop() reads its exit
        # A reader parked behind leading callers would see the EOF only when stop()
        # kicks it, after the exit: so it reads now, and is done by then.
        conn.kick()
        return True

    def wait_exited(self, timeout: float | None) -> bool:
        """Whether the child has exited (within ``timeout``): it runs nothing any more
        and has left its cgroups; its server may not have reaped it yet."""
        return self._conn.wait_exited(timeout)

    def kill(self, reason: ExitReason | None = None) -> None:
        """SIGKILL the child's process group now; the actor ends with ``reason`` (killed)."""
        conn = self._conn
        with conn._lock:
            conn._closing = True
        conn._kill()
        self._actor._request_stop(reason or ExitReason.killed("killed by the host"))


ProcessActor.ref_class = ProcessRef


_cpu_turn = itertools.count()


def _next_cpu() -> list[int] | None:
    """One CPU of the host's, round-robin; None if there is only one."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    return [cpus[next(_cpu_turn) % len(cpus)]]


def _child_env(env: dict[str, str | None] | None, isolation: dict[str, Any] | None) -> dict[str, str | None]:
    """The environment overrides a child gets: its fork server's environment is
    nearly empty (:data:`runtime.host.forkserver.SERVER_ENV`), so what the host
    means to pass is passed here, explicitly."""
    if isolation is None:
        base: dict[str, str | None] = dict(os.environ)
    else:
        allow = isolation.get("env_allow") or ()
        base = {k: os.environ[k] for k in allow if k in os.environ}
    base.update(env or {})
    return base


def start_process(
    entry: str,
    *,
    args: Sequence[Any] = (),
    app_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    name: str | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    allow_pickle: bool = False,
    trusted: bool = False,
    shutdown: float = 5.0,
    env: dict[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ready_timeout: float | None = 10.0,
    states: Any = None,
    modules: Sequence[Any] = (),
    cpu_affinity: str | Iterable[int] | None = None,
    isolation: dict[str, Any] | None = None,
    guard: dict[str, Any] | None = None,
    on_violation: Callable[[Any], None] | None = None,
    output: OutputLog | None = None,
    run_in_place: bool = True,
    ahead: ChildAhead | None = None,
) -> ProcessRef:
    """Start a child process running the app ``entry`` and return its :class:`ProcessRef`.

    - ``entry``: ``"module:function"``; the function gets ``*args`` and returns a
      list of child specs or a ``SupervisorSpec`` (see :mod:`runtime.child.boot`).
    - ``app_path``: directory (or directories) put in front of the child's
      ``sys.path``.
    - ``name``: the process actor's name (defaults to ``entry``).
    - ``max_frame``: largest frame body, both ways; a child sending more is closed.
    - ``allow_pickle``: values msgpack cannot carry are pickled to the child (which
      then unpickles them), e.g. functions for ``system("run", (fn, args))``.
    - ``trusted``: the host unpickles what the child sends (and the child may
      pickle its replies). Only for code you trust as much as the host.
    - ``shutdown``: seconds a graceful stop may take before the process group is
      killed.
    - ``env``: environment overrides in the child (``None`` removes a variable);
      ``cwd``: its working directory.
    - ``ready_timeout``: how long the app may take to start.
    - ``states``: ``{name: pickled state}`` from a previous process's
      ``get_states`` op, restored into those actors after boot (opaque here).
    - ``modules``: the app's compiled modules (:class:`runtime.child.swap.ModuleCode`);
      the child imports the app from these, never from disk.
    - ``cpu_affinity``: ``None`` (default) leaves scheduling to the kernel;
      ``"auto"`` pins the child, all its threads, to one CPU chosen round-robin
      among the host's; or the CPUs to allow. Pinning used to pay when every call
      crossed from the child's reader thread to an actor thread (a local context
      switch instead of a cross-CPU wake-up); calls to idle actors now run on the
      reader itself (:mod:`runtime.child.relay`), and on a busy shared machine a
      pinned child waits for its one CPU: p90 of a call 590-770 us pinned against
      186-198 us unpinned, same run (docs/benchmarks.md).
    - ``isolation``: the OS isolation plan (:func:`runtime.child.isolation.plan`)
      applied in the child before anything else; ``guard``: the runtime guard's
      policy, installed before the entry is imported; ``on_violation(event)``:
      called (in the reading thread, keep it short) for each refusal the guard
      reports. The event is the child's word, plain data, to be treated as hostile.
    - ``run_in_place``: a call to an idle actor runs on the child's reading thread,
      without a thread hand-off (:mod:`runtime.child.relay`); False sends every
      call through the actor's mailbox (for comparison: ``benchmarks/bench_core.py``).
    - ``output``: where the child's stdout/stderr lines go (its rate and size caps,
      its tail); one per sandbox, shared by its successive processes. Default: a
      new one for this process. Nothing the child writes reaches the host's own
      stdout or stderr (:mod:`runtime.host.output`).
    - ``ahead``: a child forked beforehand (:class:`ChildAhead`, with this
      ``output``), which this start uses if it fits its isolation plan (else it is
      given up and another forked). Given this ``isolation`` plan (and CPU
      affinity) before (:meth:`ChildAhead.isolate`), it has applied its layers:
      this start sends it the rest; given another, it is killed and another
      forked. If a bad option makes this raise first, it is still the caller's
      to :meth:`~ChildAhead.cancel` (which does nothing once it started).
    - The child's environment: with an ``isolation`` plan, only ``env`` and the
      plan's ``env_allow`` variables (from the host's environment); without one,
      the host's environment plus ``env``.

    Raises :class:`SandboxBootError` (with the child's traceback) if the app fails
    to start, and ``ValueError`` for a bad ``entry``.
    """
    module, sep, fn = entry.partition(":")
    if not (module and sep and fn):
        raise ValueError(f"invalid entry {entry!r}: expected 'module:function'")
    if app_path is None:
        paths: list[str] = []
    elif isinstance(app_path, (str, os.PathLike)):
        paths = [os.fspath(app_path)]
    else:
        paths = [os.fspath(p) for p in app_path]
    name = name or entry
    if cpu_affinity == "auto":
        cpus: list[int] | None = _next_cpu()
    elif cpu_affinity is None:
        cpus = None
    elif isinstance(cpu_affinity, str):
        raise ValueError(f"invalid cpu_affinity={cpu_affinity!r}: expected 'auto', None or CPU numbers")
    else:
        cpus = sorted({int(c) for c in cpu_affinity})
    boot = BootConfig(
        entry=entry,
        args=tuple(args),
        sys_path=[os.path.abspath(p) for p in paths],
        name=name,
        max_frame=max_frame,
        allow_pickle=allow_pickle,
        send_pickle=trusted,
        cwd=os.fspath(cwd) if cwd is not None else None,
        env=_child_env(env, isolation),
        shutdown=shutdown,
        states=states,
        cpu_affinity=cpus,
        modules=list(modules),
        isolation=isolation,
        guard=guard,
        run_in_place=run_in_place,
    )
    conn = _Connection(boot, trusted=trusted, allow_pickle=allow_pickle,
                       output=output if output is not None or ahead is None else ahead.output)
    conn.on_violation = on_violation
    t0 = time.perf_counter()
    conn.start(ahead)
    # The process actor's thread starts while the child boots, rather than after its
    # ``ready``; it hears of the child's end only once the child is up (attach below).
    try:
        ref = ProcessActor.start(conn, name=name, shutdown=shutdown)
    except BaseException:
        conn.close(graceful=False)
        raise
    try:
        conn.wait_ready(ready_timeout)
    except BaseException as exc:
        if isinstance(exc, SandboxBootError):
            telemetry.execute(
                "process.boot_failed", {"count": 1}, {**conn._md(), "error": exc.error}
            )
        else:
            conn.close(graceful=False)
        ref.stop(timeout=_EXIT_GRACE)  # its on_exit finds the connection closed
        raise
    actor = ref._actor
    assert isinstance(actor, ProcessActor)
    conn.attach(actor.actor_id, actor._child_down)
    telemetry.execute(
        "process.start",
        {"duration": time.perf_counter() - t0},
        {**conn._md(), "entry": entry},
    )
    assert isinstance(ref, ProcessRef)
    return ref


def process_spec(
    id: str,
    entry: str,
    *,
    restart: Restart = "permanent",
    shutdown: float = 5.0,
    **start_opts: Any,
) -> ChildSpec:
    """A :class:`~runtime.childspec.ChildSpec` that runs ``entry`` in a child process.

    ``start_opts`` are :func:`start_process` options (``name`` defaults to ``id``).
    The spec's ``shutdown`` is the process's graceful ``shutdown`` plus
    :data:`KILL_MARGIN`, so the supervisor waits for the kill too.

    >>> spec = process_spec("echo", "app:children", app_path="/tmp/app")
    >>> spec.id, spec.shutdown, spec.meta["entry"]
    ('echo', 8.0, 'app:children')
    """
    opts = dict(start_opts)
    opts.setdefault("name", id)

    def start() -> ProcessRef:
        return start_process(entry, shutdown=shutdown, **opts)

    return ChildSpec(
        id,
        start=start,
        restart=restart,
        shutdown=shutdown + KILL_MARGIN,
        meta={"entry": entry, "kind": "process", **{k: v for k, v in opts.items() if k != "states"}},
    )

