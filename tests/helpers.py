"""Test helpers: wait for a condition without sleeping, and record telemetry.

``wait_for`` waits on a Condition that a telemetry handler notifies on every
event, so a test wakes as soon as the runtime reports progress; a short bounded
``wait`` covers changes that no event announces (an actor ending normally).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime import telemetry

__all__ = ["Event", "Recorder", "ensure_attached", "notify", "wait_for"]

_HANDLER_ID = "tests.helpers.wake"
_cond = threading.Condition()
_generation = 0  # bumped by every notify, so a wake-up between checks is not lost


def notify() -> None:
    """Wake every ``wait_for`` (for tests that change state without telemetry)."""
    global _generation
    with _cond:
        _generation += 1
        _cond.notify_all()


def _on_event(_event: str, _m: Mapping[str, Any], _md: Mapping[str, Any]) -> None:
    notify()


def ensure_attached() -> None:
    """Attach the wake-up handler (again, if a test detached every handler)."""
    if _HANDLER_ID not in telemetry.handlers():
        try:
            telemetry.attach(_HANDLER_ID, "", _on_event)
        except ValueError:  # attached concurrently
            pass


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, *, message: str = "") -> Any:
    """Return ``predicate()``'s value once truthy; fail the test after ``timeout`` seconds."""
    ensure_attached()
    deadline = time.monotonic() + timeout
    while True:
        with _cond:
            seen = _generation
        # Outside the lock: the predicate may call actors whose telemetry notifies.
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"condition not met within {timeout}s" + (f": {message}" if message else "")
            )
        with _cond:
            if _generation == seen:
                _cond.wait(min(remaining, 0.02))


@dataclass(frozen=True)
class Event:
    name: str
    measurements: Mapping[str, Any]
    metadata: Mapping[str, Any]


class Recorder:
    """Collect telemetry events under a prefix while in a ``with`` block.

    >>> with Recorder("doc") as rec:
    ...     telemetry.execute("doc.tick", {"n": 1}, {})
    >>> [e.name for e in rec.events]
    ['doc.tick']
    """

    _ids = itertools.count(1)

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._id = f"tests.recorder.{next(self._ids)}"

    def _handle(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        with self._lock:
            self.events.append(Event(name, dict(m), dict(md)))

    def __enter__(self) -> Recorder:
        telemetry.attach(self._id, self.prefix, self._handle)
        ensure_attached()
        return self

    def __exit__(self, *exc: object) -> None:
        telemetry.detach(self._id)

    def named(self, name: str, **metadata: Any) -> list[Event]:
        """Events called ``name`` whose metadata has all of ``metadata``."""
        with self._lock:
            events = list(self.events)
        return [
            e for e in events
            if e.name == name and all(e.metadata.get(k) == v for k, v in metadata.items())
        ]

    def wait(self, name: str, count: int = 1, timeout: float = 5.0, **metadata: Any) -> list[Event]:
        """Wait until at least ``count`` matching events arrived; return them."""
        wait_for(lambda: len(self.named(name, **metadata)) >= count, timeout,
                 message=f"{count} x {name} {metadata or ''}")
        return self.named(name, **metadata)
