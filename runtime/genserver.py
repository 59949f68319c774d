"""GenServer: the OTP behaviour users write, with state kept apart from code.

Subclass :class:`GenServer` and write plain functions of ``(request, state)``; the
runtime hosts the instance in an actor that owns the state. Code and state are
separate objects, so a hot reload can put new code under the same state.

>>> class Counter(GenServer):
...     vsn = 1
...     def init(self, start=0):
...         return start
...     def handle_call(self, request, state):
...         if request == "get":
...             return state, state
...         raise ValueError(f"unknown request {request!r}")
...     def handle_cast(self, request, state):
...         return state + request
>>> ref = Counter.start(40)
>>> ref.cast(2); ref.call("get")
42
>>> _ = ref.stop()
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from runtime import timers
from runtime.actor import (
    DEFAULT_CALL_TIMEOUT,
    NOREPLY,
    Actor,
    ActorRef,
    ExitReason,
    Reply,
    ReplySink,
    _Call,
    _Failed,
    _Wake,
)
from runtime.barrier import BARRIER
from runtime.childspec import ChildSpec, Restart, Shutdown
from runtime.errors import ActorDead, NoSuchActor
from runtime.registry import await_name, register, registered

_get_ident = threading.get_ident

__all__ = ["Continue", "From", "GenServer", "NOREPLY", "call", "cast", "reply"]


@dataclass(frozen=True)
class Continue:
    """Return this in place of the new state to run ``handle_continue(arg, state)``
    before the next message (OTP's ``{continue, Arg}``), from ``init`` or any handler.

    >>> Continue({"n": 1}, "load")
    Continue(state={'n': 1}, arg='load')
    """

    state: Any
    arg: Any


class From:
    """A caller waiting for its answer: ``self.caller`` inside ``handle_call``.

    Keep it (in the state) and return ``NOREPLY`` to answer later with
    :func:`reply`, from any handler or thread. If the server ends first the caller
    gets :class:`~runtime.errors.ActorDead`. A hot reload keeps it as is (it is
    never copied).
    """

    __slots__ = ("_actor", "_sink")

    def __init__(self, actor: Actor, sink: ReplySink) -> None:
        self._actor = actor
        self._sink = sink

    def reply(self, value: Any) -> None:
        """Answer the caller (only the first answer counts; none once the server ended)."""
        actor = self._actor
        with actor._life:
            # Taking the sink out of the pending set is what makes an answer the first.
            if self._sink not in actor._pending:
                return
            actor._pending.discard(self._sink)
        self._sink.set_result(value)

    def __repr__(self) -> str:
        return f"<From caller of {self._actor.actor_id}>"

    # Never copied: a hot reload's state snapshot keeps it by reference.
    def __copy__(self) -> From:
        return self

    def __deepcopy__(self, memo: dict) -> From:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a From is a live caller: it cannot be pickled")


def reply(from_: From, value: Any) -> None:
    """Answer a caller kept from ``handle_call`` (OTP's ``gen_server:reply``).

    >>> class Later(GenServer):
    ...     def handle_call(self, request, state):
    ...         if request == "wait":
    ...             return NOREPLY, self.caller       # keep the caller, answer later
    ...         reply(state, "done"); return "ok", None
    >>> ref = Later.start()
    >>> pending = Reply(); ref.call_into("wait", pending)  # a caller that does not block
    >>> call(ref, "release")
    'ok'
    >>> pending.wait(5), pending.result()
    (True, 'done')
    >>> _ = ref.stop()
    """
    if not isinstance(from_, From):
        raise TypeError(f"reply() needs the From of a call (self.caller), got {from_!r}")
    from_.reply(value)


def _resolve(target: ActorRef | str, deadline: float) -> ActorRef:
    if isinstance(target, ActorRef):
        return target
    if not isinstance(target, str):
        raise TypeError(f"target must be an ActorRef or a registered name, got {target!r}")
    ref = await_name(target, max(0.0, deadline - time.monotonic()))
    if ref is None:
        raise NoSuchActor(target, registered())
    return ref


def _outlive(ref: ActorRef, deadline: float) -> None:
    """Wait (up to ``deadline``) until an ending actor has ended and left the registry,
    so the next lookup finds its successor instead of spinning on it."""
    ref.join(max(0.0, deadline - time.monotonic()))


def call(
    target: ActorRef | str, request: Any, *, timeout: float | None = DEFAULT_CALL_TIMEOUT
) -> Any:
    """Call a server by ref or registered name (OTP's ``gen_server:call``).

    A name that is not registered right now (its server is being restarted) is
    waited for, up to ``timeout`` in all; then :class:`~runtime.errors.NoSuchActor`.
    A name never registered fails at once. A call refused because the server ended
    before taking it is sent again to its successor; one it took is never resent.

    >>> class Echo(GenServer):
    ...     def handle_call(self, request, state):
    ...         return request, state
    >>> ref = Echo.start(name="call-doc")
    >>> call("call-doc", "hi", timeout=2.0)
    'hi'
    >>> _ = ref.stop()
    >>> call("no-such-doc", "x")
    Traceback (most recent call last):
    ...
    runtime.errors.NoSuchActor: no actor named 'no-such-doc'...
    """
    deadline = time.monotonic() + (math.inf if timeout is None else timeout)
    while True:
        ref = _resolve(target, deadline)
        pending = Reply()
        try:
            ref.call_into(request, pending)
        except ActorDead:
            if isinstance(target, ActorRef) or time.monotonic() >= deadline:
                raise
            _outlive(ref, deadline)  # ending as we sent: wait for its successor
            continue
        left = None if timeout is None else max(0.0, deadline - time.monotonic())
        return ref.await_reply(pending, left)


def cast(target: ActorRef | str, request: Any, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
    """Cast to a server by ref or registered name (waiting up to ``timeout`` for a
    name being restarted, as :func:`call`); raises :class:`~runtime.errors.NoSuchActor`
    if there is none by then.
    """
    deadline = time.monotonic() + timeout
    while True:
        ref = _resolve(target, deadline)
        try:
            ref.cast(request)
            return
        except ActorDead:
            if isinstance(target, ActorRef) or time.monotonic() >= deadline:
                raise
            _outlive(ref, deadline)  # ending as we sent: wait for its successor

log = logging.getLogger("runtime.genserver")


class GenServer:
    """Base class of user servers. Override what you need; each runs in the server's thread.

    - ``init(*args, **kwargs) -> state``
    - ``handle_call(request, state) -> (reply, new_state)``; ``(NOREPLY, new_state)``
      to answer later with :func:`reply` (``self.caller`` is who is waiting)
    - ``handle_cast(request, state) -> new_state``
    - ``handle_info(message, state) -> new_state`` (plain messages, timer messages,
      Down/Exit notices)
    - ``handle_continue(arg, state) -> new_state``: runs before the next message
      when ``init`` or a handler returned :class:`Continue` in place of the state
    - ``terminate(reason, state)`` when it ends
    - ``code_change(old_vsn, state, extra) -> state`` when its code is swapped
    - ``vsn``: the code version, compared by ``code_change``

    ``self.ref`` is the server's own :class:`~runtime.actor.ActorRef`;
    :meth:`send_after` / :meth:`cancel_timer` are its timers (see :mod:`runtime.timers`).
    """

    vsn: ClassVar[Any] = 1
    #: Trap exits of linked actors (they arrive at ``handle_info`` as ``Exit``).
    trap_exit: ClassVar[bool] = False

    ref: ActorRef

    def init(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return dict(kwargs)
        return args[0] if len(args) == 1 else (args or None)

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        raise NotImplementedError(f"{type(self).__qualname__} got a call it does not handle: {request!r}")

    def handle_cast(self, request: Any, state: Any) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} got a cast it does not handle: {request!r}")

    def handle_info(self, message: Any, state: Any) -> Any:
        log.info("%s ignored message %r", type(self).__qualname__, message)
        return state

    def handle_continue(self, arg: Any, state: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__qualname__} returned Continue(..., {arg!r}) but has no handle_continue"
        )

    def terminate(self, reason: ExitReason, state: Any) -> None:
        pass

    # -- helpers for handlers ------------------------------------------------------------
    @property
    def caller(self) -> From:
        """The caller of the ``handle_call`` running now (keep it to answer later)."""
        server = self.ref._actor
        sink = server._caller
        if sink is None:
            raise RuntimeError("self.caller is only set while handle_call runs")
        return From(server, sink)

    def send_after(self, message: Any, seconds: float) -> timers.TimerRef:
        """Deliver ``message`` to this server's ``handle_info`` after ``seconds``.

        Pending timers live outside the server: a hot reload keeps them; a restart
        (a new server) does not get the old one's.
        """
        return timers.send_after(self.ref, message, seconds)

    def cancel_timer(self, timer: timers.TimerRef) -> float | None:
        """Cancel a timer; the seconds it had left, or None if it fired already."""
        return timers.cancel_timer(timer)

    def code_change(self, old_vsn: Any, state: Any, extra: Any) -> Any:
        return state

    # -- starting --------------------------------------------------------------------
    @classmethod
    def start(cls, *args: Any, name: str | None = None, **kwargs: Any) -> ActorRef:
        """Start a server running this class; ``init`` runs before this returns.

        With ``name``, the server is registered under it (see :mod:`runtime.registry`).
        """
        ref = ServerActor.start(cls, args, kwargs, name=name)
        if name is not None:
            try:
                register(name, ref)
            except BaseException:
                # The name is taken: do not leave a running, unreachable server behind.
                ref.stop()
                raise
        return ref

    @classmethod
    def child_spec(
        cls,
        *args: Any,
        id: str | None = None,
        name: str | None = None,
        restart: Restart = "permanent",
        shutdown: Shutdown = 5.0,
        **kwargs: Any,
    ) -> ChildSpec:
        """A :class:`~runtime.childspec.ChildSpec` that starts this server.

        ``id`` defaults to ``name``, then to the class name.

        >>> GenServer.child_spec(name="c").id
        'c'
        """
        child_id = id or name or cls.__name__
        # The class is looked up when the child (re)starts, not captured: after a hot
        # reload a restarted child must run the new code.

        def start(*extra: Any, **extra_kwargs: Any) -> ActorRef:
            # ``extra``: what a DynamicSupervisor's start_child appends.
            return current_class(cls).start(*args, *extra, name=name, **kwargs, **extra_kwargs)

        return ChildSpec(
            child_id,
            start=start,
            restart=restart,
            shutdown=shutdown,
            meta={
                "module": cls.__module__,
                "qualname": cls.__qualname__,
                "name": name,
                "args": repr((args, sorted(kwargs.items()))),
                "restart": restart,
                "shutdown": shutdown,
            },
        )


def current_class(cls: type[GenServer]) -> type[GenServer]:
    """The class now bound to ``cls``'s qualified name (the newest code after a reload).

    >>> current_class(GenServer) is GenServer
    True
    """
    obj: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, GenServer) else cls


def _rebound(cls: type[GenServer]) -> type[GenServer]:
    """``current_class(cls)`` for classes of hot-reloadable app modules (served by the
    sandbox's app finder); any other class is used as given."""
    module = sys.modules.get(cls.__module__)
    spec = getattr(module, "__spec__", None)
    if type(getattr(spec, "loader", None)).__name__ != "AppFinder":
        return cls
    return current_class(cls)


_NONE: Any = object()  # no continue instruction pending

#: :meth:`ServerActor.call_here` did nothing: send the call the usual way.
NOT_HERE: Any = object()

#: Every live GenServer host in this process (the hot-reload swap walks them).
SERVERS: weakref.WeakSet[ServerActor] = weakref.WeakSet()


class ServerActor(Actor):
    """The actor hosting one GenServer instance and its state."""

    def __init__(self, impl_cls: type[GenServer], args: tuple, kwargs: dict, *, name: str | None = None):
        super().__init__(name=name or impl_cls.__name__)
        self.impl_cls = impl_cls
        self._args = args
        self._kwargs = kwargs
        self.impl: GenServer | None = None
        self.state: Any = None
        self.trap_exit = impl_cls.trap_exit  # type: ignore[misc]
        # Started by a hot reload's own thread (a module body or code_change starting
        # a server): the swap waits for this init, so init must not wait for the swap.
        self._started_by_swap = BARRIER.owned()
        self._continue: Any = _NONE

    def on_init(self) -> None:
        with nullcontext() if self._started_by_swap else BARRIER.reading():
            # Inside the barrier: a reload that committed after this server's class
            # was looked up is seen here (the newest class is used), and one that
            # starts later finds the server in SERVERS. Either way it never keeps
            # running code that was swapped out.
            if not self._started_by_swap:
                self.impl_cls = _rebound(self.impl_cls)
            impl = self.impl_cls()
            impl.ref = self.ref
            self.state = self._unwrap(impl.init(*self._args, **self._kwargs))
            self.impl = impl
            SERVERS.add(self)
        if self._continue is not _NONE:
            # Runs first in the loop, after start() returned (as OTP's init_ack comes
            # before the continue): it fails the server, not the start.
            self._post(_Wake())

    def _unwrap(self, state: Any) -> Any:
        """The state a handler returned, noting a :class:`Continue` instruction."""
        if type(state) is Continue:
            self._continue = state.arg
            return state.state
        return state

    def _run_continues(self) -> None:
        while self._continue is not _NONE and not self._exiting:
            arg, self._continue = self._continue, _NONE
            try:
                self._dispatch(self._continue_once, arg)
            except _Failed as failed:
                self._end(failed.reason)  # _end: this may run in place (runtime.child.relay)
                return

    def _continue_once(self, arg: Any) -> None:
        self.state = self._unwrap(self.impl.handle_continue(arg, self.state))  # type: ignore[union-attr]

    def on_receive(self, message: Any) -> Any:
        # Every message passes the code barrier, so a reload suspends all servers at
        # once and swaps code and state between two messages, never during one.
        # acquire/release rather than the reading() context manager: this is every
        # call's path, and a generator-based context manager costs as much as the rest.
        BARRIER.acquire_read(nested=type(message) is _Call and message.nested)
        try:
            super().on_receive(message)
            # Before the next message (and after a call's reply went out, as in OTP).
            if self._continue is not _NONE:
                self._run_continues()
        finally:
            BARRIER.release_read()
        return None

    def on_call(self, request: Any) -> Any:
        result = self.impl.handle_call(request, self.state)  # type: ignore[union-attr]
        if not (isinstance(result, tuple) and len(result) == 2):
            self._bad_reply(result)
        answer, state = result
        self.state = self._unwrap(state)
        return answer  # NOREPLY: the actor leaves the caller waiting

    def _bad_reply(self, result: Any) -> NoReturn:
        raise TypeError(
            f"{self.impl_cls.__qualname__}.handle_call must return (reply, new_state), "
            f"got {result!r}"
        )

    def call_here(self, request: Any, sink: ReplySink) -> Any:
        """Handle a call on the calling thread if this server is idle; return the
        answer for the caller to send to ``sink``.

        Returns :data:`NOT_HERE` when nothing was done (a message is queued or
        running, the server is starting or ending): then send the call with
        ``ref.call_into`` as usual.
        Returns ``NOREPLY`` when ``sink`` was answered here (the handler failed, or
        a ``handle_continue`` had to run after the reply) or will be later.

        The same as ``call_into(run_here=True)`` -> ``_run_here`` -> ``on_receive``
        -> ``_handle_call`` -> ``on_call`` (one message at a time, order per sender,
        the code barrier, pending callers failed if the server ends), fused into one
        function because it is every call's path in a sandbox
        (:meth:`runtime.child.boot.ChildServer.call_here`): each layer it skips was a
        Python call, a lock or an allocation per call.
        """
        if not self._up or self._backlog or self._stop_request is not None:
            return NOT_HERE  # a message is queued: this one goes behind it
        # Holding _exec claims the actor: a message posted from now on waits for it
        # on the actor's thread; one running there now means busy (read without
        # _mb, the backlog errs towards the mailbox, which is always right).
        claim = self._exec
        if not claim.acquire(False):  # positional: a keyword costs its parsing
            return NOT_HERE
        try:
            # Pending while it runs: a handler may keep its caller (NOREPLY), or the
            # server may end meanwhile; either way the sink is answered. Put in
            # without _life, then the ending checked (the lock was two C calls and a
            # try block per call): _finish sets the reason and swaps the set under
            # _life, so a check that finds the server not ending was made before the
            # swap and the sink is in the set _finish fails. One that finds it ending
            # takes the sink back out; _finish pops the sinks it fails one by one, so
            # exactly one of the two has it (KeyError: _finish answers the caller).
            pending = self._pending
            pending.add(sink)
            if self._exiting or self._failing or self._exit_reason is not None:
                try:
                    pending.remove(sink)
                except KeyError:
                    return NOREPLY
                return NOT_HERE
            if not BARRIER.try_read():
                BARRIER.acquire_read()  # nested, or a reload waits or runs: after it
                quick = False
            else:
                quick = True
            self._inline_thread = _get_ident()
            try:
                if self._stop_request is not None:  # asked meanwhile: the general path ends it
                    super().on_receive(_Call(request, sink))
                    answer = NOREPLY
                else:
                    self._caller = sink
                    try:
                        result = self.impl.handle_call(request, self.state)  # type: ignore[union-attr]
                        if not (isinstance(result, tuple) and len(result) == 2):
                            self._bad_reply(result)
                        answer, state = result
                        if type(state) is Continue:  # self._unwrap(state), inline
                            self._continue = state.arg
                            state = state.state
                        self.state = state
                    except BaseException as exc:
                        self._caller = None
                        self._end(self._call_failed(sink, exc))
                        answer = NOREPLY  # the sink has the failure
                    else:
                        self._caller = None
                        if answer is not NOREPLY:  # NOREPLY: answered later, stays pending
                            # Without _life: a set's discard is atomic under the GIL, and
                            # _finish pops the set it swapped out instead of iterating it.
                            pending.discard(sink)
                if self._continue is not _NONE:  # after the reply went out, as in OTP
                    if answer is not NOREPLY:
                        sink.set_result(answer)
                        answer = NOREPLY
                    self._run_continues()
                return answer
            finally:
                self._inline_thread = None
                if quick:
                    BARRIER.release_quick()
                else:
                    BARRIER.release_read()
        finally:
            claim.release()

    def on_cast(self, request: Any) -> None:
        self.state = self._unwrap(self.impl.handle_cast(request, self.state))  # type: ignore[union-attr]

    def _on_casts(self, requests: tuple) -> None:
        """``Actor._on_casts`` with ``on_cast``, ``_dispatch`` and ``_unwrap`` inlined:
        every batched cast passes here, and those layers were three Python calls per
        cast. As for single casts, a :class:`Continue` runs its ``handle_continue``
        before the next cast; the state is stored after each cast, so a failure
        leaves the state of the casts before it (as ``terminate`` sees it)."""
        try:
            handle = self.impl.handle_cast  # type: ignore[union-attr]  # no reload mid-message
        except BaseException as exc:
            self._failed(exc)  # as on_cast would
        for request in requests:
            try:
                state = handle(request, self.state)
            except BaseException as exc:
                self._failed(exc)
            if type(state) is Continue:
                self._continue = state.arg
                self.state = state.state
                self._run_continues()
                if self._exiting:
                    break
            else:
                self.state = state
            if self._stop_request is not None:
                break

    def on_info(self, message: Any) -> None:
        self.state = self._unwrap(self.impl.handle_info(message, self.state))  # type: ignore[union-attr]

    def on_exit(self, reason: ExitReason) -> None:
        SERVERS.discard(self)
        if self.impl is not None:
            self.impl.terminate(reason, self.state)

    def _exits_quietly(self) -> bool:
        return self.impl is None or type(self.impl).terminate is GenServer.terminate
