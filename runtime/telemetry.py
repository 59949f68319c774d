"""Telemetry: named events with measurements and metadata, delivered to handlers.

Event names are dotted strings (``"supervisor.restart"``); a handler attached to a
prefix gets every event whose name starts with that prefix at a segment boundary.
A handler that raises is detached and logged; it never breaks the code that
emitted the event.

Events emitted while an operation runs under a correlation id
(:func:`runtime.logs.correlation`) carry it as metadata ``correlation_id``.
``*.exception`` events of :func:`span` carry the error's ``category`` (see
:mod:`runtime.recovery`). Every event the runtime emits is listed in
``docs/telemetry.md``.

>>> from runtime import telemetry
>>> seen = []
>>> telemetry.attach("doc", "demo", lambda e, m, md: seen.append((e, m["n"])))
>>> telemetry.execute("demo.tick", {"n": 1}, {})
>>> _ = telemetry.detach("doc")
>>> seen
[('demo.tick', 1)]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from runtime.logs import _context, correlation

__all__ = ["Handler", "attach", "detach", "execute", "span", "handlers"]

log = logging.getLogger("runtime.telemetry")

Handler = Callable[[str, Mapping[str, Any], Mapping[str, Any]], None]

_lock = threading.Lock()
# handler id -> (prefix, fn); copied on write so execute() can iterate without a lock
_handlers: dict[str, tuple[str, Handler]] = {}


def _matches(prefix: str, event: str) -> bool:
    return not prefix or event == prefix or event.startswith(prefix + ".")


def attach(handler_id: str, event_prefix: str, fn: Handler) -> None:
    """Call ``fn(event, measurements, metadata)`` for every event under ``event_prefix``.

    ``event_prefix`` ``""`` matches every event. Attaching an id twice raises
    ``ValueError``: detach it first.

    >>> attach("doc-attach", "x", lambda *a: None); _ = detach("doc-attach")
    """
    global _handlers
    with _lock:
        if handler_id in _handlers:
            raise ValueError(f"telemetry handler {handler_id!r} is already attached; detach it first")
        new = dict(_handlers)
        new[handler_id] = (event_prefix, fn)
        _handlers = new


def detach(handler_id: str) -> bool:
    """Remove a handler; returns whether it was attached.

    >>> detach("never-attached")
    False
    """
    global _handlers
    with _lock:
        if handler_id not in _handlers:
            return False
        new = dict(_handlers)
        del new[handler_id]
        _handlers = new
        return True


def handlers() -> dict[str, str]:
    """The attached handler ids and their prefixes.

    >>> isinstance(handlers(), dict)
    True
    """
    return {hid: prefix for hid, (prefix, _fn) in _handlers.items()}


def execute(
    event: str,
    measurements: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Emit ``event`` to every handler attached to one of its prefixes.

    >>> execute("nobody.listens", {"value": 1}, {"who": "doc"})
    """
    current = _handlers
    if not current:
        return
    m = measurements or {}
    md = metadata or {}
    ctx = _context.get()
    if ctx is not None and md.get("correlation_id") is None:
        md = {**md, "correlation_id": ctx["correlation_id"]}
    for handler_id, (prefix, fn) in current.items():
        if not _matches(prefix, event):
            continue
        try:
            fn(event, m, md)
        except Exception:
            log.exception("telemetry handler %r raised on %s; detaching it", handler_id, event)
            detach(handler_id)


@contextmanager
def span(event: str, metadata: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Emit ``event.start``, then ``event.stop`` (or ``event.exception``) with a duration.

    The body runs under a correlation id (the running operation's, or a new one),
    which every event of the span, and everything the body emits or logs, carries.
    ``event.exception`` adds ``kind``, ``reason`` and the error's ``category``.

    The yielded dict is merged into the stop event's metadata, so the body can add
    what it learned.

    >>> with span("doc.work", {"job": 1}) as extra:
    ...     extra["result"] = "ok"
    """
    md = dict(metadata or {})
    with correlation(md.get("correlation_id")):  # a span is an operation: join or start one
        start = time.monotonic()
        execute(f"{event}.start", {"system_time": time.time()}, md)
        extra: dict[str, Any] = {}
        try:
            yield extra
        except BaseException as exc:
            execute(
                f"{event}.exception",
                {"duration": time.monotonic() - start},
                {**md, **extra, "kind": type(exc).__name__, "reason": str(exc),
                 "category": _category(exc)},
            )
            raise
        execute(f"{event}.stop", {"duration": time.monotonic() - start}, {**md, **extra})


def _category(exc: BaseException) -> str:
    from runtime.recovery import classify

    try:
        return classify(exc)
    except Exception:  # classifying must never hide the error itself
        log.exception("classifying %r failed", exc)
        return "runtime"
