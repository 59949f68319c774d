"""Named actors: a process-wide table from names to running actors.

Inside a sandbox the host addresses actors by name; a restarted actor registers
the same name again, so callers never hold a stale reference.

>>> from runtime.actor import Actor
>>> class Nop(Actor): pass
>>> ref = Nop.start()
>>> register("nop-doc", ref); whereis("nop-doc") == ref
True
>>> _ = ref.stop(); whereis("nop-doc") is None
True
"""

from __future__ import annotations

import math
import threading
import time

from runtime.actor import ActorRef, monitor
from runtime.errors import SandboxError

__all__ = ["register", "unregister", "whereis", "registered", "await_name"]

_lock = threading.Condition()
_names: dict[str, ActorRef] = {}
#: Names that were registered once: one missing now is probably being restarted.
_known: set[str] = set()


def register(name: str, ref: ActorRef) -> None:
    """Register ``ref`` under ``name``; the entry goes away when the actor ends.

    A name held by a live actor cannot be taken: stop that actor first.
    """
    with _lock:
        current = _names.get(name)
        if current is not None and current.is_alive() and current != ref:
            raise SandboxError(f"name {name!r} is already registered to {current.id}")
        _names[name] = ref
        _known.add(name)
        _lock.notify_all()

    def _drop(_down: object) -> None:
        with _lock:
            if _names.get(name) == ref:
                del _names[name]

    monitor(ref, _drop)


def unregister(name: str) -> None:
    """Remove ``name`` (no-op if absent)."""
    with _lock:
        _names.pop(name, None)


def whereis(name: str) -> ActorRef | None:
    """The live actor registered under ``name``, or None."""
    ref = _names.get(name)
    return ref if ref is not None and ref.is_alive() else None


def registered() -> list[str]:
    """Names of the live registered actors."""
    with _lock:
        return sorted(n for n, r in _names.items() if r.is_alive())


def await_name(name: str, timeout: float | None) -> ActorRef | None:
    """The actor registered as ``name``, waiting up to ``timeout`` seconds (None or
    ``math.inf``: as long as it takes) while a supervisor restarts it; None at once
    for a name that was never registered, or after the timeout.

    >>> await_name("never-registered-doc", 1.0) is None
    True
    """
    deadline = time.monotonic() + (math.inf if timeout is None else timeout)
    with _lock:
        while True:
            ref = _names.get(name)
            if ref is not None and ref.is_alive():
                return ref
            remaining = deadline - time.monotonic()
            if name not in _known or remaining <= 0:
                return None
            _lock.wait(None if remaining == math.inf else remaining)
