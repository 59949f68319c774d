"""Test helpers: wait for a condition without sleeping, and record telemetry.

``wait_for`` waits on a Condition that a telemetry handler notifies on every
event, so a test wakes as soon as the runtime reports progress; a short bounded
``wait`` covers changes that no event announces (an actor ending normally).
"""

from __future__ import annotations

import itertools
import textwrap
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import telemetry
from sandbox.testing import _ensure_attached, notify
from sandbox.testing import wait_for as _wait_for

__all__ = ["Event", "Recorder", "ensure_attached", "notify", "path_of", "wait_for", "write"]



def ensure_attached() -> None:
    """Attach the wake-up handler (again, if a test detached every handler)."""
    _ensure_attached()


#: How long a test waits for what must happen by default: generous, since CI and a
#: shared machine can be loaded many times over; a passing wait returns at once.
WAIT = 30.0


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, *, message: str = "") -> Any:
    """Return ``predicate()``'s value once truthy; fail the test after ``timeout`` seconds."""
    try:
        return _wait_for(predicate, timeout, message=message or None)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def path_of(sb: Any) -> Path:
    """The app directory of a sandbox (its files are what a reload compiles)."""
    return Path(sb.info()["path"])


def write(sb: Any, name: str, source: str) -> Path:
    """Write (dedented) ``source`` to ``name`` in the sandbox's app directory."""
    p = path_of(sb) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(source))
    return p


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

    def wait(self, name: str, count: int = 1, timeout: float = WAIT, **metadata: Any) -> list[Event]:
        """Wait until at least ``count`` matching events arrived; return them."""
        wait_for(lambda: len(self.named(name, **metadata)) >= count, timeout,
                 message=f"{count} x {name} {metadata or ''}")
        return self.named(name, **metadata)
