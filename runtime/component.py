"""Component actors: actors whose calls are named operations, like a GenServer API module.

The runtime's components (manager, compiler, versions, ...) talk to each other only
through references; a call names an operation and carries its arguments, and runs
in the component's own thread, one at a time.

>>> class Greeter(Component):
...     def op_greet(self, who, *, punct="!"):
...         return f"hello {who}{punct}"
>>> ref = Greeter.start()
>>> ref.invoke("greet", "you", punct=".")
'hello you.'
>>> _ = ref.stop()
"""

from __future__ import annotations

from typing import Any

from runtime.actor import DEFAULT_CALL_TIMEOUT, Actor, ActorRef, Reply
from runtime.errors import SandboxError
from runtime.logs import _context as _log_context

__all__ = ["Component", "ComponentRef", "Pending"]


class ComponentRef(ActorRef):
    """Reference to a :class:`Component`: ``invoke(op, *args, **kwargs)``."""

    __slots__ = ()

    def invoke(self, op: str, *args: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT, **kwargs: Any) -> Any:
        """Run operation ``op`` in the component's thread and return its result.

        A :class:`~runtime.errors.SandboxError` raised by the operation is re-raised
        here and the component keeps running; any other exception fails the component
        (its supervisor restarts it) and reaches the caller as ``ActorFailed``.
        """
        return self.send(op, *args, **kwargs).result(timeout)

    def send(self, op: str, *args: Any, **kwargs: Any) -> Pending:
        """Send operation ``op`` and return at once; :meth:`Pending.result` waits for
        its result (as :meth:`invoke` would return or raise it). Operations sent by
        one thread run in the order sent, so a thread that sends one and invokes the
        next waits once for both.

        >>> class Box(Component):
        ...     def op_put(self, v): self.v = v
        ...     def op_get(self): return self.v
        >>> ref = Box.start()
        >>> pending = ref.send("put", 1)
        >>> ref.invoke("get"), pending.result()
        (1, None)
        >>> _ = ref.stop()
        """
        return self._send(op, args, kwargs, False)

    def invoke_here(self, op: str, *args: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT,
                    **kwargs: Any) -> Any:
        """As :meth:`invoke`, run on the calling thread if the component is idle (see
        :meth:`~runtime.actor.ActorRef.call_into`'s ``run_here``): no hand-off to its
        thread and back. For a short operation whose caller only waits meanwhile.

        >>> import threading
        >>> class Where(Component):
        ...     def op_thread(self): return threading.current_thread()
        >>> ref = Where.start()
        >>> ref.invoke_here("thread") is threading.current_thread()
        True
        >>> ref.invoke("thread") is threading.current_thread()
        False
        >>> _ = ref.stop()
        """
        return self._send(op, args, kwargs, True).result(timeout)

    def _send(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], run_here: bool) -> Pending:
        ctx = _log_context.get()  # the caller's correlation id follows the operation
        reply = Reply()
        self.call_into((op, args, kwargs) if ctx is None else (op, args, kwargs, ctx), reply,
                       run_here=run_here)
        return Pending(self, reply)


class Pending:
    """An operation sent with :meth:`ComponentRef.send`, its result to come."""

    __slots__ = ("_ref", "_reply")

    def __init__(self, ref: ComponentRef, reply: Reply) -> None:
        self._ref = ref
        self._reply = reply

    def result(self, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Wait for the result; raises what :meth:`ComponentRef.invoke` raises."""
        value = self._ref.await_reply(self._reply, timeout)
        if isinstance(value, _Refusal):
            raise value.error
        return value


class _Refusal:
    """An expected error: re-raised in the caller, does not fail the component."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Component(Actor):
    """An actor whose calls dispatch to ``op_<name>`` methods.

    A :class:`~runtime.errors.SandboxError` raised by an operation (bad input, unknown
    sandbox, compile error, ...) is the caller's problem: it is re-raised in the
    caller and the component keeps running. Any other exception is a bug in the
    component: it fails, and its supervisor restarts it.
    """

    ref_class = ComponentRef

    def on_call(self, request: Any) -> Any:
        if len(request) == 4:  # carries the caller's log context (runtime.logs)
            token = _log_context.set(request[3])
            try:
                return self.on_call(request[:3])
            finally:
                _log_context.reset(token)
        op, args, kwargs = request
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            known = sorted(n[3:] for n in dir(self) if n.startswith("op_"))
            return _Refusal(SandboxError(f"{type(self).__name__} has no operation {op!r}; known: {', '.join(known)}"))
        try:
            return fn(*args, **kwargs)
        except SandboxError as exc:
            return _Refusal(exc)
