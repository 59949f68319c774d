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
import sys
import weakref
from contextlib import nullcontext
from typing import Any, ClassVar

from runtime.actor import Actor, ActorRef, ExitReason, _Call
from runtime.barrier import BARRIER
from runtime.childspec import ChildSpec, Restart
from runtime.registry import register

__all__ = ["GenServer"]

log = logging.getLogger("runtime.genserver")


class GenServer:
    """Base class of user servers. Override what you need; each runs in the server's thread.

    - ``init(*args, **kwargs) -> state``
    - ``handle_call(request, state) -> (reply, new_state)``
    - ``handle_cast(request, state) -> new_state``
    - ``handle_info(message, state) -> new_state`` (plain messages, Down/Exit notices)
    - ``terminate(reason, state)`` when it ends
    - ``code_change(old_vsn, state, extra) -> state`` when its code is swapped
    - ``vsn``: the code version, compared by ``code_change``

    ``self.ref`` is the server's own :class:`~runtime.actor.ActorRef`.
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

    def terminate(self, reason: ExitReason, state: Any) -> None:
        pass

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
        shutdown: float = 5.0,
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
        return ChildSpec(
            child_id,
            start=lambda: current_class(cls).start(*args, name=name, **kwargs),
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
            self.state = impl.init(*self._args, **self._kwargs)
            self.impl = impl
            SERVERS.add(self)

    def on_receive(self, message: Any) -> Any:
        # Every message passes the code barrier, so a reload suspends all servers at
        # once and swaps code and state between two messages, never during one.
        # acquire/release rather than the reading() context manager: this is every
        # call's path, and a generator-based context manager costs as much as the rest.
        BARRIER.acquire_read(nested=type(message) is _Call and message.nested)
        try:
            return super().on_receive(message)
        finally:
            BARRIER.release_read()

    def on_call(self, request: Any) -> Any:
        result = self.impl.handle_call(request, self.state)  # type: ignore[union-attr]
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"{self.impl_cls.__qualname__}.handle_call must return (reply, new_state), "
                f"got {result!r}"
            )
        reply, self.state = result
        return reply

    def on_cast(self, request: Any) -> None:
        self.state = self.impl.handle_cast(request, self.state)  # type: ignore[union-attr]

    def on_info(self, message: Any) -> None:
        self.state = self.impl.handle_info(message, self.state)  # type: ignore[union-attr]

    def on_exit(self, reason: ExitReason) -> None:
        SERVERS.discard(self)
        if self.impl is not None:
            self.impl.terminate(reason, self.state)
