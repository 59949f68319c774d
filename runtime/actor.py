"""Actors with links and monitors, on top of pykka's ``ThreadingActor``.

pykka gives each actor a thread and a mailbox; it has no links, monitors or exit
reasons, which OTP-style supervision needs. This module adds them:

- every actor ends with an :class:`ExitReason` (normal, shutdown, exception with the
  traceback text, killed, ...);
- :func:`monitor` delivers a :class:`Down` notice to a watcher when the actor ends;
- :func:`link` ties two actors: when one ends abnormally the other is stopped with
  the same reason, unless it traps exits, in which case it gets an :class:`Exit`
  message instead.

Calls, casts and plain messages all travel through the pykka mailbox; a call
carries a reply object, so the same actor code answers a caller in this process or
one on the other end of a socket.

>>> class Echo(Actor):
...     def on_call(self, request):
...         return request
>>> ref = Echo.start()
>>> ref.call("hi")
'hi'
>>> ref.stop().kind
'shutdown'
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # pthread_sigmask without signal's enum wrapping
import contextlib
import contextvars
import itertools
import logging
import math
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NoReturn, Protocol

import pykka
from pykka._envelope import Envelope

from runtime import logs, telemetry
from runtime.barrier import BARRIER
from runtime.errors import ActorDead, ActorFailed, CallTimeout, SandboxError
from runtime.ondemand import OnDemandInbox

__all__ = [
    "Actor",
    "ActorRef",
    "Down",
    "Exit",
    "ExitReason",
    "NOREPLY",
    "Reply",
    "ReplySink",
    "demonitor",
    "link",
    "monitor",
    "stop_here",
    "unlink",
]

log = logging.getLogger("runtime.actor")

DEFAULT_CALL_TIMEOUT = 5.0
DEFAULT_SHUTDOWN = 5.0

_ids = itertools.count(1)


@dataclass(frozen=True)
class ExitReason:
    """Why an actor ended.

    ``kind`` is ``normal`` (finished its work), ``shutdown`` (asked to stop),
    ``exception`` (a handler raised; ``traceback`` has the text), ``killed`` (did
    not stop in time and was abandoned), ``exit`` (a child process exited; the
    message has the code or signal), or ``protocol`` (a peer broke the mailbox
    protocol).

    >>> ExitReason.shutdown().abnormal
    False
    >>> ExitReason.from_exception(ValueError("bad")).message
    'ValueError: bad'
    """

    kind: str
    message: str = ""
    traceback: str = ""
    #: Log fields of where it ended (``correlation_id``, and ``sandbox``/``runtime``
    #: where known; :func:`runtime.logs.failure_fields`), for whoever logs it: the
    #: supervisor that handles a failure logs it in its own thread, out of context.
    log_fields: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def abnormal(self) -> bool:
        """True unless the actor stopped normally or was shut down (OTP's rule for transient)."""
        return self.kind not in ("normal", "shutdown")

    @classmethod
    def normal(cls) -> ExitReason:
        return cls("normal")

    @classmethod
    def shutdown(cls, message: str = "") -> ExitReason:
        return cls("shutdown", message)

    @classmethod
    def killed(cls, message: str = "") -> ExitReason:
        return cls("killed", message)

    @classmethod
    def from_exception(cls, exc: BaseException) -> ExitReason:
        # The message is one line; everything else (a remote traceback an ActorFailed
        # carries after its first line) is in the traceback, said once.
        first = str(exc).split("\n", 1)[0]
        return cls(
            "exception",
            f"{type(exc).__name__}: {first}",
            "".join(traceback.format_exception(exc)),
            logs.failure_fields(),
        )

    def located(self, **fields: str | None) -> ExitReason:
        """This reason with :func:`~runtime.logs.failure_fields` (plus ``fields``) as
        its log fields, keeping a correlation id it already has.

        >>> r = ExitReason("exit", "killed by SIGKILL").located(sandbox="s1")
        >>> r.log_fields["sandbox"], len(r.log_fields["correlation_id"])
        ('s1', 16)
        """
        return replace(self, log_fields={**logs.failure_fields(**fields), **self.log_fields})

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else self.kind


@dataclass(frozen=True)
class Down:
    """Delivered to a monitor's watcher when the watched actor ends."""

    actor_id: str
    monitor_ref: str
    reason: ExitReason


@dataclass(frozen=True)
class Exit:
    """Delivered to a linked actor that traps exits when its peer ends."""

    actor_id: str
    reason: ExitReason


class ReplySink(Protocol):
    """Where a call's answer goes: a waiting thread here, or a socket to another process."""

    def set_result(self, value: Any) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


class Reply:
    """A one-shot reply slot a calling thread waits on.

    A lock acquired at creation and released on completion is the cheapest
    one-shot wake-up CPython has; calls are the hot path.

    >>> r = Reply(); r.set_result(3); r.wait(0.1) and r.result()
    3
    """

    __slots__ = ("_done", "_value", "_exc")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Any = None
        self._exc: BaseException | None = None

    def set_result(self, value: Any) -> None:
        self._value = value
        self._release()

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._release()

    def _release(self) -> None:
        try:
            self._done.release()
        except RuntimeError:  # completed twice: the first answer stands
            pass

    def done(self) -> bool:
        """Whether the reply has arrived (never blocks).

        >>> r = Reply(); r.done(), r.set_result(1), r.done()
        (False, None, True)
        """
        return not self._done.locked()

    def wait(self, timeout: float | None) -> bool:
        timeout = _wait_arg(timeout)
        if self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            self._done.release()
            return True
        return False

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value


# Mailbox messages. Plain data; the actor thread interprets them.
@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is slow, and calls are hot
class _Call:
    request: Any
    reply: ReplySink
    #: Sent by a handler holding the code barrier (an actor calling another actor
    #: of this process): the callee passes the barrier ahead of a waiting reload.
    nested: bool = False


@dataclass(frozen=True)
class _Cast:
    request: Any


@dataclass(frozen=True)
class _CastBatch:
    """Consecutive casts delivered as one mailbox item: one wake-up, one barrier pass."""

    requests: tuple


@dataclass(frozen=True)
class _Info:
    message: Any


@dataclass(frozen=True)
class _Wake:
    """Wakes an idle actor so it notices a stop request."""


Watcher = Callable[[Down], None]


class _NoReply:
    def __repr__(self) -> str:
        return "runtime.NOREPLY"

    def __reduce__(self) -> str:
        return "NOREPLY"


#: Where threads have signal masks (POSIX): read and set without signal's enum wrapping.
_sigmask = getattr(_signal, "pthread_sigmask", None)

#: Returned by a call handler that answers later (OTP's ``noreply``): the caller
#: keeps waiting until the reply sink (``Actor._caller`` at the time) is answered,
#: or gets :class:`~runtime.errors.ActorDead` if the actor ends first.
NOREPLY: Any = _NoReply()


def _wait_arg(timeout: float | None) -> float | None:
    """``timeout`` for threading waits: ``math.inf`` means no limit (it would overflow)."""
    return None if timeout is None or timeout == math.inf else timeout


class _Here(threading.local):
    """Set while this thread runs :func:`stop_here`: the stop's deadline
    (``time.monotonic()``; None: no limit)."""

    active = False
    deadline: float | None = None
    wake = True


_here = _Here()


def _uuid4_urn() -> str:
    """``uuid.uuid4().urn`` (a random version-4 UUID as a URN) from the bytes alone."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = b.hex()
    return f"urn:uuid:{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class Actor(pykka.ThreadingActor):
    """Base class of every actor: a thread with a mailbox, links, monitors and exit reasons.

    Override the hooks; each runs in the actor's own thread, one message at a time
    (``on_init`` of a :attr:`thread_on_demand` actor on the thread that starts it):

    - ``on_init()``: set up; raising here makes :meth:`start` raise.
    - ``on_call(request) -> reply``, ``on_cast(request)``, ``on_info(message)``
      (plain messages, :class:`Down` and :class:`Exit` notices).
    - ``on_exit(reason)``: clean up; runs once however the actor ends (unless it is
      killed while stuck).

    An exception escaping a hook fails the actor: the caller of a call gets
    :class:`~runtime.errors.ActorFailed` with the traceback text, monitors get
    ``Down`` with an ``exception`` reason, and links propagate it.

    >>> class Adder(Actor):
    ...     def on_init(self): self.total = 0
    ...     def on_call(self, n): self.total += n; return self.total
    >>> ref = Adder.start(); ref.call(2); ref.call(3)
    2
    5
    >>> _ = ref.stop()
    """

    #: True: a linked peer's abnormal exit arrives as an :class:`Exit` message
    #: instead of stopping this actor.
    trap_exit: ClassVar[bool] = False
    use_daemon_thread = True  # a killed (abandoned) actor must not hold up interpreter exit
    #: True: ``on_init`` runs on the starter's thread and the actor's own thread starts
    #: with its first message (:mod:`runtime.ondemand`); for actors whose ``on_init``
    #: is the runtime's (supervisors), which often get no message at all.
    thread_on_demand: ClassVar[bool] = False

    @staticmethod
    def _create_actor_inbox() -> Any:  # pykka hook
        # SimpleQueue is C code with no Condition: a put from a sender and a get from
        # the actor do not fight over a Python-level lock (pykka's Queue spends most
        # of a cast there).
        return queue.SimpleQueue()

    def __init__(self, *, name: str | None = None) -> None:
        # pykka.Actor.__init__'s fields, with the URN made by _uuid4_urn instead of
        # uuid.uuid4(): the uuid module's code wrote ~70 KiB of the fork server's
        # pages in every sandbox (tests/test_actor.py checks the fields still match).
        self.actor_urn = _uuid4_urn()
        self.actor_inbox = OnDemandInbox() if self.thread_on_demand else self._create_actor_inbox()
        self.actor_stopped = threading.Event()
        self._actor_ref = pykka.ActorRef(self)
        self.actor_id = f"{name or type(self).__name__}#{next(_ids)}"
        self.name = name
        self._life = threading.Lock()
        self._exiting = False
        self._failing = False
        self._exit_reason: ExitReason | None = None
        self._exited = threading.Event()
        self._started = threading.Event()
        self._up = False  # _started is set (read on every call run in place: no method call)
        self._stop_request: ExitReason | None = None
        self._pending: set[ReplySink] = set()
        # The call whose handler failed, answered once the actor has ended (_finish).
        self._failed_call: tuple[ReplySink, ActorFailed] | None = None
        #: The reply sink of the call being handled (None outside a call).
        self._caller: ReplySink | None = None
        self._watchers: dict[str, Watcher] = {}
        self._links: dict[str, Actor] = {}
        self._thread: threading.Thread | None = None
        # Running a message on another thread (see ActorRef.call_into's run_here):
        # _exec is held by whichever thread handles a message, _backlog counts the
        # messages posted and not yet handled (under _mb), _inline_thread is the
        # ident of the thread running one in place of the actor's own (an ident,
        # not the Thread: threading.get_ident() is a third of current_thread()'s cost).
        self._exec = threading.Lock()
        self._mb = threading.Lock()
        self._backlog = 0
        self._inline_thread: int | None = None

    # -- hooks -----------------------------------------------------------------------
    def on_init(self) -> None:
        """Set up the actor (runs in its thread before any message; with
        :attr:`thread_on_demand`, on the starter's thread)."""

    def on_call(self, request: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle calls (got {request!r})")

    def on_cast(self, request: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not handle casts (got {request!r})")

    def on_info(self, message: Any) -> None:
        log.debug("%s ignored message %r", self.actor_id, message)

    def on_exit(self, reason: ExitReason) -> None:
        """Clean up; ``reason`` says why the actor is ending."""

    # -- start -----------------------------------------------------------------------
    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> ActorRef:  # type: ignore[override]
        """Start the actor in its own thread and wait for ``on_init`` to finish
        (with :attr:`thread_on_demand`, ``on_init`` runs here and the thread starts
        with the first message).

        Raises :class:`~runtime.errors.ActorFailed` if ``on_init`` raised.
        """
        obj = cls(*args, **kwargs)
        pykka.ActorRegistry.register(obj.actor_ref)
        if cls.thread_on_demand:
            obj._init_here()
        else:
            obj._start_actor_loop()
            obj._started.wait()
        ref = obj.ref
        if obj._exit_reason is not None and obj._exit_reason.abnormal:
            r = obj._exit_reason
            raise ActorFailed(obj.actor_id, f"init failed: {r.message}", r.traceback)
        return ref

    ref_class: ClassVar[type[ActorRef]]  # set below, after ActorRef exists

    @property
    def ref(self) -> ActorRef:
        return self.ref_class(self)

    def _init_here(self) -> None:
        """``on_init`` on this thread, in a context of its own (as a new thread's is
        empty); the actor's thread starts with its first message (runtime.ondemand).
        Only messages put after ``on_init`` are handled, all on that thread."""
        # The signal mask its thread gets: the one it would have been born with now
        # (a sandbox's threads keep SIGALRM blocked for the relay, runtime.child.relay,
        # though the main thread that may post the first message has it unblocked).
        self._birth_mask = _sigmask(_signal.SIG_BLOCK, ()) if _sigmask else None
        self._interrupted: BaseException | None = None
        contextvars.Context().run(self._actor_loop_setup)  # pykka: on_start, on_init
        self._thread = None  # on_init's own stops were from "its" thread; no longer
        if self._interrupted is not None:
            # A Ctrl-C (or exit) during on_init, here on the starter's thread: the
            # actor has ended (as any failed init); the starter gets it as it would
            # have while waiting for an init on the actor's thread, not ActorFailed.
            raise self._interrupted
        if not self.actor_stopped.is_set():
            inbox = self.actor_inbox
            assert isinstance(inbox, OnDemandInbox)  # thread_on_demand's (__init__)
            inbox.arm(self._start_own_thread)

    def _start_own_thread(self) -> None:
        """The first message came (runtime.ondemand): the loop gets its thread now."""
        thread = threading.Thread(target=self._loop_after_init,
                                  name=f"{type(self).__name__}-{self.actor_id}", daemon=True)
        self._thread = thread  # before it runs: a stop from it must not wait for itself
        birth, setmask = self._birth_mask, _sigmask
        mine = setmask(_signal.SIG_SETMASK, birth) if birth is not None and setmask else None
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had (pids limit, interpreter exit):
            self._terminate(ExitReason.from_exception(exc))  # it fails, as a crash would
        finally:
            if mine is not None and setmask:  # the new thread inherited birth; ours back
                setmask(_signal.SIG_SETMASK, mine)

    def _loop_after_init(self) -> None:
        self._actor_loop_running()
        self._actor_loop_teardown()

    def on_start(self) -> None:  # pykka hook; runs in the actor thread
        self._thread = threading.current_thread()
        try:
            self.on_init()
        except BaseException as exc:
            self._terminate(ExitReason.from_exception(exc), run_on_exit=False)
            if not isinstance(exc, Exception) and self.thread_on_demand:
                self._interrupted = exc  # _init_here raises it to the starter
        finally:
            self._up = True
            self._started.set()

    # -- the message loop ------------------------------------------------------------
    def _handle_receive(self, message: Any) -> Any:  # pykka: each message of the inbox
        with self._exec:  # a message run in place (call_into run_here) finishes first
            try:
                return super()._handle_receive(message)
            finally:
                with self._mb:
                    self._backlog -= 1

    def on_receive(self, message: Any) -> Any:
        if self._stop_request is not None:
            self._end(self._stop_request)
            return None
        try:
            if isinstance(message, _Call):
                self._handle_call(message)
            elif isinstance(message, _Cast):
                self._dispatch(self.on_cast, message.request)
            elif isinstance(message, _CastBatch):
                self._on_casts(message.requests)
            elif isinstance(message, _Info):
                self._dispatch(self.on_info, message.message)
            elif isinstance(message, _Wake):
                pass
            else:
                self._dispatch(self.on_info, message)
        except _Failed as failed:
            self._end(failed.reason)
        except BaseException as exc:
            # Not a hook failure but the machinery around it (e.g. a reply sink whose
            # socket broke). Left to pykka, the thread would stop without _finish, so
            # monitors would never get Down and stop() would wait its full timeout.
            log.error("actor %s: internal error: %s", self.actor_id, exc, exc_info=exc)
            self._end(ExitReason.from_exception(exc))
        return None

    def _on_casts(self, requests: tuple) -> None:
        """The casts of one batch, in order, as if each were its own message: a
        failure at one fails the actor there, a stop asked meanwhile drops the rest
        (as the rest of a stopping mailbox is)."""
        on_cast = self.on_cast
        for request in requests:
            self._dispatch(on_cast, request)
            if self._stop_request is not None:
                break

    def _end(self, reason: ExitReason) -> None:
        """End the actor with ``reason``: now on its own thread; from a message run in
        place on another thread, by its own thread before its next message (only that
        thread can leave pykka's loop)."""
        if self._inline_thread is None:
            self._terminate(reason)
            return
        with self._life:
            if self._exiting:
                return
            if self._stop_request is None:
                self._stop_request = reason
        self._post(_Wake())

    def _run_here(self, message: Any) -> bool:
        """Handle ``message`` on the calling thread if the actor is idle: nothing in its
        mailbox, nothing running, no stop asked. False (nothing done) otherwise.

        Order per sender holds: the message goes ahead only of messages posted after
        it, which wait on ``_exec`` until it is done.
        """
        if not self._up:  # on_init still runs on the actor's thread
            return False
        with self._mb:
            if self._backlog or self._stop_request is not None or self._exiting:
                return False
            self._backlog = 1
        try:
            with self._exec:
                self._inline_thread = threading.get_ident()
                try:
                    self.on_receive(message)
                finally:
                    self._inline_thread = None
        finally:
            with self._mb:
                self._backlog -= 1
        return True

    def _dispatch(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """Run a hook; any exception becomes this actor's failure."""
        try:
            return fn(arg)
        except BaseException as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> NoReturn:
        """A hook raised ``exc``: record and report the failure, raise :class:`_Failed`."""
        reason = ExitReason.from_exception(exc)
        # Refuse new calls from now on: a caller told of this failure may call
        # again before the actor has finished ending, and must hear "dead" at
        # once, not have its call accepted and then dropped.
        with self._life:
            self._failing = True
        # Logged once, where the failure is handled: by the supervisor (or whoever
        # links or monitors this actor); only an actor nobody watches says it here.
        watched = bool(self._links or self._watchers)
        log.log(logging.DEBUG if watched else logging.ERROR, "actor %s failed: %s",
                self.actor_id, reason.message,
                extra={**reason.log_fields, "traceback": reason.traceback,
                       "actor": self.actor_id})
        telemetry.execute(
            "actor.failure",
            {"count": 1},
            {"actor": self.actor_id, "reason": reason.message, "traceback": reason.traceback},
        )
        raise _Failed(reason) from exc

    def _handle_call(self, msg: _Call) -> None:
        self._caller = msg.reply
        try:  # self._dispatch(self.on_call, ...), inline: every call passes here
            value = self.on_call(msg.request)
        except BaseException as exc:
            self._caller = None
            raise _Failed(self._call_failed(msg.reply, exc)) from exc
        self._caller = None
        if value is NOREPLY:
            return  # answered later; stays pending, so the caller hears if the actor ends
        reply = msg.reply
        with self._life:  # self._discard(reply), inline: every call passes here
            self._pending.discard(reply)
        reply.set_result(value)

    def _call_failed(self, reply: ReplySink, exc: BaseException) -> ExitReason:
        """A call handler raised ``exc``: the actor fails (see :meth:`_failed`) and the
        caller gets :class:`~runtime.errors.ActorFailed`; returns the exit reason.

        The caller hears it once the actor has ended (:meth:`_finish`), as an OTP
        caller hears of a crash through its monitor: whoever catches the error sees
        ``is_alive()`` false and the ``exit_reason`` set.
        """
        try:
            self._failed(exc)
        except _Failed as failed:
            reason = failed.reason
        error = ActorFailed(self.actor_id, reason.message, reason.traceback,
                            reason.log_fields.get("correlation_id"))
        with self._life:
            self._pending.discard(reply)
            ended = self._exit_reason is not None
            if not ended:
                self._failed_call = (reply, error)
        if ended:  # killed meanwhile: _finish has run and will not look again
            reply.set_exception(error)
        return reason

    def _discard(self, reply: ReplySink) -> None:
        with self._life:
            self._pending.discard(reply)

    # -- ending ----------------------------------------------------------------------
    def _terminate(self, reason: ExitReason, *, run_on_exit: bool = True) -> None:
        """End the actor from its own thread: on_exit, then notify everyone."""
        with self._life:
            if self._exiting:
                return
            self._exiting = True
        if run_on_exit:
            try:
                self.on_exit(reason)
            except BaseException as exc:
                log.error("on_exit of %s raised: %s", self.actor_id, exc, exc_info=exc)
                if not reason.abnormal:
                    reason = ExitReason.from_exception(exc)
        self._finish(reason)
        self._stop()  # pykka: unregister, stop the loop, skip the rest of the mailbox

    def _finish(self, reason: ExitReason) -> None:
        """Record the reason, fail waiting callers, tell monitors and links. Exactly once."""
        with self._life:
            failed_call, self._failed_call = self._failed_call, None
            if self._exit_reason is not None:
                return
            self._exit_reason = reason
            pending, self._pending = self._pending, set()
            watchers, self._watchers = self._watchers, {}
            links, self._links = self._links, {}
        self.actor_stopped.set()
        if failed_call is not None:
            failed_call[0].set_exception(failed_call[1])
        # Each sink taken out with one pop (atomic under the GIL), not the set
        # iterated: a call run in place puts its sink in and takes it out without
        # _life (ServerActor.call_here), and whichever of the two takes it answers it.
        while True:
            try:
                reply = pending.pop()
            except KeyError:
                break
            reply.set_exception(ActorDead(self.actor_id, reason))
        for mref, watcher in watchers.items():
            _deliver_down(watcher, Down(self.actor_id, mref, reason))
        for peer in links.values():
            peer._exit_signal(self, reason)
        self._exited.set()

    def _exit_signal(self, sender: Actor, reason: ExitReason, *, linked: bool = True) -> None:
        """A linked peer ended (OTP exit signal semantics).

        ``linked=False`` is for :func:`link` to an actor that had already ended,
        where no link was ever recorded.
        """
        with self._life:
            was_linked = self._links.pop(sender.actor_id, None) is not None
        if linked and not was_linked:
            # unlink() ran after the peer started ending: as in OTP, no exit signal
            # may arrive once unlink has returned.
            return
        if self.trap_exit:
            self._post(_Info(Exit(sender.actor_id, reason)))
        elif reason.kind != "normal":
            self._request_stop(reason)

    def _request_stop(self, reason: ExitReason) -> None:
        """Ask the actor to end before its next message (out of band, like an exit signal)."""
        with self._life:
            if self._exiting or self._stop_request is not None:
                return
            self._stop_request = reason
        self._post(_Wake())

    def _kill(self, reason: ExitReason) -> None:
        """Abandon an actor that did not stop in time; its thread is left to die alone."""
        with self._life:
            self._exiting = True
        self._finish(reason)
        pykka.ActorRegistry.unregister(self.actor_ref)
        # An idle actor's thread is blocked on its inbox and _post() refuses messages
        # now: put a wake-up in directly so the loop sees actor_stopped and the thread
        # ends instead of lingering forever.
        self.actor_inbox.put(Envelope(_Wake()))

    def _exits_quietly(self) -> bool:
        """Whether ending runs none of the app's code (no ``on_exit`` of its own), so
        no overrun of its ``shutdown`` can need its thread abandoned (see _end_here)."""
        return type(self).on_exit is Actor.on_exit

    def _end_here(self, reason: ExitReason) -> bool:
        """End the actor on the calling thread, as its own thread would on a stop, if
        it is idle (nothing queued or running, no stop asked) and its ending runs
        none of the app's code; False (nothing done) otherwise.

        Used by :func:`stop_here`: no wake-up of its thread, no wait for it. An
        ending with app code (``on_exit``, ``terminate``) stays on the actor's own
        thread, the only one a stop can abandon when that code overruns. Holding
        ``_exec`` keeps any message from running meanwhile, as ``_run_here`` does.
        """
        if not self._up or not self._exits_quietly():
            return False
        with self._mb:
            if (self._backlog or self._stop_request is not None or self._exiting
                    or not self._exec.acquire(False)):
                return False
            self._backlog = 1
        try:
            self._inline_thread = threading.get_ident()  # a stop of itself from here asks only
            try:
                self._terminate(reason)
            finally:
                self._inline_thread = None
        finally:
            self._exec.release()
            with self._mb:
                self._backlog -= 1
        if _here.wake:
            # Its thread is parked on the inbox and _post() refuses messages now: wake
            # it directly, so it sees actor_stopped and ends (as _kill does).
            self.actor_inbox.put(Envelope(_Wake()))
        return True

    def _post(self, message: Any) -> bool:
        if self.actor_stopped.is_set():
            return False
        with self._mb:
            self._backlog += 1
        self.actor_inbox.put(Envelope(message))
        return True

    def on_stop(self) -> None:  # pykka hook
        pass

    def on_failure(self, *exc_info: Any) -> None:  # pykka hook; our loop never raises
        pass


class _Failed(Exception):
    def __init__(self, reason: ExitReason) -> None:
        self.reason = reason


def _deliver_down(watcher: Watcher, down: Down) -> None:
    try:
        watcher(down)
    except Exception:
        log.exception("monitor callback for %s raised", down.actor_id)


class ActorRef:
    """A handle on a running (or ended) actor; cheap to create and to pass around.

    >>> class Shout(Actor):
    ...     def on_call(self, s): return s.upper()
    >>> ref = Shout.start(name="shout")
    >>> ref.call("hey"), ref.is_alive()
    ('HEY', True)
    >>> ref.stop().kind, ref.is_alive()
    ('shutdown', False)
    """

    __slots__ = ("_actor",)

    def __init__(self, actor: Actor) -> None:
        self._actor = actor

    @property
    def id(self) -> str:
        return self._actor.actor_id

    @property
    def name(self) -> str | None:
        return self._actor.name

    @property
    def exit_reason(self) -> ExitReason | None:
        """The reason the actor ended, or None while it runs."""
        return self._actor._exit_reason

    def is_alive(self) -> bool:
        return self._actor._exit_reason is None and not self._actor.actor_stopped.is_set()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._actor is self._actor

    def __hash__(self) -> int:
        return id(self._actor)

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else f"ended: {self.exit_reason}"
        return f"<{type(self).__name__} {self.id} {state}>"

    # -- messages --------------------------------------------------------------------
    def call(self, request: Any, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Send ``request`` and wait for the reply.

        Raises :class:`~runtime.errors.CallTimeout` after ``timeout`` seconds,
        :class:`~runtime.errors.ActorFailed` if the handler raised (the actor has
        then failed), :class:`~runtime.errors.ActorDead` if the actor is not running.
        """
        reply = Reply()
        self.call_into(request, reply)
        return self.await_reply(reply, timeout)

    def await_reply(self, reply: Reply, timeout: float | None) -> Any:
        """Wait for the answer of a call sent with :meth:`call_into`; as :meth:`call`."""
        if not reply.wait(timeout):
            self._actor._discard(reply)
            raise CallTimeout(self.id, timeout)
        return reply.result()

    def call_into(self, request: Any, reply: ReplySink, *, run_here: bool = False) -> None:
        """Send a call whose answer goes to ``reply`` (for callers that do not block).

        ``run_here=True``: if the actor is idle (empty mailbox, no message running),
        run the handler on the calling thread now, saving the hand-off to the actor's
        thread; the actor's semantics hold (one message at a time, order per sender).
        For a thread that has nothing else to do meanwhile, like a sandbox's reader
        (which hands its reading to another thread when a handler runs long).

        >>> class Twice(Actor):
        ...     def on_call(self, n): return 2 * n
        >>> ref, r = Twice.start(), Reply()
        >>> ref.call_into(21, r, run_here=True); r.wait(0), r.result()
        (True, 42)
        >>> _ = ref.stop()
        """
        actor = self._actor
        with actor._life:
            if actor._exiting or actor._failing or actor._exit_reason is not None:
                raise ActorDead(self.id, actor._exit_reason)
            # Pending from here on, in place too: a handler may keep its caller
            # (NOREPLY) and answer it later, or an ending actor fails it.
            actor._pending.add(reply)
        msg = _Call(request, reply, BARRIER.held())
        if run_here and actor._run_here(msg):
            return
        with actor._mb:
            actor._backlog += 1
        actor.actor_inbox.put(Envelope(msg))

    def cast(self, request: Any) -> None:
        """Send ``request`` without waiting. A failure in its handler fails the actor.

        Raises :class:`~runtime.errors.ActorDead` if the actor is not running.
        """
        if not self._actor._post(_Cast(request)):
            raise ActorDead(self.id, self.exit_reason)

    def cast_many(self, requests: Iterable[Any]) -> None:
        """Send several casts as one mailbox item; handled in order, like single casts.

        Raises :class:`~runtime.errors.ActorDead` if the actor is not running.
        """
        batch = tuple(requests)
        if batch and not self._actor._post(_CastBatch(batch)):
            raise ActorDead(self.id, self.exit_reason)

    def tell(self, message: Any) -> None:
        """Deliver a plain message to ``on_info`` (or ``handle_info``)."""
        if not self._actor._post(_Info(message)):
            raise ActorDead(self.id, self.exit_reason)

    # -- lifecycle -------------------------------------------------------------------
    def stop(
        self,
        reason: ExitReason | None = None,
        *,
        timeout: float | None = DEFAULT_SHUTDOWN,
    ) -> ExitReason:
        """Stop the actor before its next message, wait up to ``timeout``, then kill it.

        Returns the exit reason (``shutdown`` unless it had already ended otherwise).
        From inside the actor itself, only asks; the stop happens after the current
        message.
        """
        actor = self._actor
        reason = reason or ExitReason.shutdown()
        wait = _wait_arg(timeout)
        if _here.active:
            if ended_here(self, reason):
                return actor._exit_reason or reason
            if _here.deadline is not None:  # no wait beyond the whole stop's deadline
                left = max(0.0, _here.deadline - time.monotonic())
                wait = left if wait is None else min(wait, left)
        actor._request_stop(reason)
        me = threading.current_thread()
        if me is actor._thread or me.ident == actor._inline_thread:
            return reason
        if not actor._exited.wait(wait):
            log.warning("%s did not stop within %ss; abandoning its thread", self.id, wait)
            actor._kill(ExitReason.killed(f"did not stop within {wait}s"))
        return actor._exit_reason or ExitReason.shutdown()

    def kill(self, reason: ExitReason | None = None) -> None:
        """End the actor at once without running its cleanup (OTP's ``exit(Pid, kill)``)."""
        self._actor._kill(reason or ExitReason.killed())

    def join(self, timeout: float | None = None) -> ExitReason | None:
        """Wait until the actor has ended; returns its exit reason (None on timeout)."""
        self._actor._exited.wait(_wait_arg(timeout))
        return self._actor._exit_reason


Actor.ref_class = ActorRef


def time_left_here() -> float | None:
    """Within :func:`stop_here`: the seconds its timeout leaves (None: no limit). An
    ending that waits (``_exits_quietly``) may run in place only if it fits."""
    deadline = _here.deadline
    return None if deadline is None else deadline - time.monotonic()


def ended_here(ref: ActorRef, reason: ExitReason) -> bool:
    """Within :func:`stop_here`: end ``ref`` on this thread if it is idle and its
    ending runs none of the app's code (for a stop that asks first and waits later)."""
    return _here.active and ref._actor._end_here(reason)


def stop_here(ref: ActorRef, reason: ExitReason | None = None, *,
              timeout: float | None = DEFAULT_SHUTDOWN, wake: bool = True) -> ExitReason:
    """Stop ``ref`` as :meth:`ActorRef.stop` does, ending on the calling thread each
    actor of its tree that is idle and whose ending runs none of the app's code.

    The same ending as the actors' own threads would run (a supervisor stops its
    children in reverse order, monitors get ``Down``, links their exit signal),
    without a thread wake-up and a wait per actor. An actor that is busy, or has an
    ``on_exit`` (a GenServer a ``terminate``) of its own, is stopped by its own
    thread within its ``shutdown`` and abandoned if it overruns, as before; no
    wait goes beyond ``timeout`` from now, the time the whole stop may take (after
    it, what is still stopping is abandoned, as ``ref`` itself would have been).
    ``wake=False`` leaves the threads of the actors ended here parked: for a caller
    that ends the process next (they end with it; waking them would only take CPU
    and the GIL from the exit).

    >>> class Idle(Actor): pass
    >>> stop_here(Idle.start()).kind
    'shutdown'
    """
    with ending_here(timeout, wake=wake):
        # ActorRef.stop itself, not ref.stop: SupervisorRef.stop is this function.
        return ActorRef.stop(ref, reason, timeout=timeout)


@contextlib.contextmanager
def ending_here(timeout: float | None = None, *, wake: bool = True) -> Iterator[None]:
    """Within it, each stop this thread makes (:meth:`ActorRef.stop`) ends an idle
    actor whose ending runs none of the app's code on this thread, as
    :func:`stop_here` does (``timeout``, ``wake``: as there). Inside another, the
    outer one's deadline and ``wake`` hold."""
    if _here.active:
        yield
        return
    limit = _wait_arg(timeout)
    _here.active, _here.wake = True, wake
    _here.deadline = None if limit is None else time.monotonic() + limit
    try:
        yield
    finally:
        _here.active, _here.wake = False, True
        _here.deadline = None


_mrefs = itertools.count(1)


def monitor(watched: ActorRef, watcher: ActorRef | Watcher) -> str:
    """Watch ``watched``: when it ends, ``watcher`` gets a :class:`Down` notice.

    ``watcher`` is an actor (the notice arrives as a message to its ``on_info``) or
    a callable (called with the notice from the thread that ends the actor: its
    own, or one running :func:`stop_here`; keep it short). Monitoring an actor
    that has already ended delivers the notice at once. Returns the monitor
    reference for :func:`demonitor`.

    >>> class Idle(Actor): pass
    >>> downs = []
    >>> ref = Idle.start()
    >>> _ = monitor(ref, downs.append)
    >>> _ = ref.stop(); downs[0].reason.kind
    'shutdown'
    """
    deliver: Watcher
    if isinstance(watcher, ActorRef):
        target = watcher._actor
        def deliver(down: Down) -> None:
            target._post(_Info(down))
    else:
        deliver = watcher
    mref = f"#mon{next(_mrefs)}"
    actor = watched._actor
    with actor._life:
        reason = actor._exit_reason
        if reason is None:
            actor._watchers[mref] = deliver
            return mref
    _deliver_down(deliver, Down(actor.actor_id, mref, reason))
    return mref


def demonitor(watched: ActorRef, monitor_ref: str) -> None:
    """Stop watching; no Down notice will be delivered for ``monitor_ref``."""
    with watched._actor._life:
        watched._actor._watchers.pop(monitor_ref, None)


def link(a: ActorRef, b: ActorRef) -> None:
    """Link two actors both ways: an abnormal end of one stops the other.

    An actor whose class sets ``trap_exit = True`` gets an :class:`Exit` message
    instead. Linking to an actor that has already ended delivers its exit at once.
    """
    x, y = a._actor, b._actor
    if x is y:
        raise SandboxError("an actor cannot link to itself")
    # Lock in a fixed order so two threads linking the same pair cannot deadlock.
    first, second = sorted((x, y), key=id)
    with first._life, second._life:
        x_reason, y_reason = x._exit_reason, y._exit_reason
        if x_reason is None and y_reason is None:
            x._links[y.actor_id] = y
            y._links[x.actor_id] = x
            return
    if x_reason is not None and y_reason is None:
        y._exit_signal(
            x, ExitReason("noproc", f"{x.actor_id} had already ended ({x_reason})"), linked=False
        )
    elif y_reason is not None and x_reason is None:
        x._exit_signal(
            y, ExitReason("noproc", f"{y.actor_id} had already ended ({y_reason})"), linked=False
        )


def unlink(a: ActorRef, b: ActorRef) -> bool:
    """Remove a link between two actors (no-op if there is none).

    Once this returns, no exit signal from ``b`` reaches ``a`` (nor the reverse).
    Returns whether ``a`` was still linked to ``b``: False means ``b`` had already
    ended and its :class:`Exit` may already be in ``a``'s mailbox (if ``a`` traps
    exits), which a supervisor needs to know to recognise that message.
    """
    x, y = a._actor, b._actor
    first, second = sorted((x, y), key=id)
    with first._life, second._life:
        was_linked = x._links.pop(y.actor_id, None) is not None
        y._links.pop(x.actor_id, None)
    return was_linked
