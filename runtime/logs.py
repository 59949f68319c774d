"""Structured logging: stdlib :mod:`logging`, a JSON formatter, correlation ids.

Every runtime operation (create, destroy, restart, hot reload, rollback) runs
under a *correlation id*, kept in a :mod:`contextvars` variable. It follows the
operation:

- into the component actors it calls (``ComponentRef.invoke`` carries it to the
  component's thread: the manager, the compiler, the version manager);
- into every telemetry event emitted meanwhile (metadata ``correlation_id``);
- into the sandbox process: the ``reload`` system op carries it, and the child
  logs its side of the swap under the same id (to its stderr, a pipe the host
  relays as ``runtime.output`` records), once the host has called :func:`configure`;
- into every log record (``record.correlation_id``), so one reload's lines,
  host and sandbox, can be grepped together.

Nothing is printed until the application configures logging; :func:`configure`
is a one-line way to get JSON lines on stderr:

>>> import io, json, logging
>>> from runtime import logs
>>> out = io.StringIO()
>>> handler = logs.configure(json=True, level="INFO", stream=out)
>>> with logs.correlation("c0ffee", sandbox="demo"):
...     logging.getLogger("myapp").info("hello %s", "world")
>>> line = json.loads(out.getvalue())
>>> line["message"], line["correlation_id"], line["sandbox"], line["level"]
('hello world', 'c0ffee', 'demo', 'INFO')
>>> logs.unconfigure()
"""

from __future__ import annotations

import contextvars
import functools
import json as _json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "unconfigure",
    "correlation",
    "operation_started",
    "operation_ended",
    "current_id",
    "context",
    "new_id",
    "operation",
    "settings",
    "apply_settings",
    "sandbox_op",
    "ChannelHandler",
    "record_to_wire",
    "emit_from_sandbox",
    "failure_fields",
]

#: The fields of the current operation: correlation_id, sandbox, runtime (a plain
#: dict, never mutated once set: each correlation() block sets a new one).
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "sandbox_log_context", default=None
)

_FIELDS = ("correlation_id", "sandbox", "runtime")

log = logging.getLogger("runtime.ops")


def new_id() -> str:
    """A fresh correlation id: 16 hex digits.

    >>> len(new_id()), new_id() != new_id()
    (16, True)
    """
    return os.urandom(8).hex()


def current_id() -> str | None:
    """The correlation id of the operation running in this context, or None.

    >>> current_id() is None
    True
    """
    ctx = _context.get()
    return ctx["correlation_id"] if ctx is not None else None


def context() -> dict[str, Any]:
    """The current operation's fields (``correlation_id``, ``sandbox``, ``runtime``);
    empty outside any operation."""
    ctx = _context.get()
    return dict(ctx) if ctx is not None else {}


def failure_fields(**known: str | None) -> dict[str, str]:
    """The log fields of a failure happening here: the running operation's
    (``correlation_id``, ``sandbox``, ``runtime``), then ``known`` ones, and always a
    correlation id: the operation's, or a fresh one. Called where a failure is
    recorded (a cold path), so a crash outside any operation (an actor failing in a
    plain call) still has an id that its log record and the caller's error share.

    >>> with correlation("op-1", sandbox="s1"):
    ...     failure_fields(runtime="rt")
    {'correlation_id': 'op-1', 'sandbox': 's1', 'runtime': 'rt'}
    >>> len(failure_fields()["correlation_id"])
    16
    """
    fields = {k: str(v) for k, v in context().items() if v is not None}
    fields.update((k, str(v)) for k, v in known.items() if v is not None)
    fields.setdefault("correlation_id", new_id())
    return fields


@contextmanager
def correlation(cid: str | None = None, **fields: Any) -> Iterator[str]:
    """Run the block under a correlation id; yields it.

    With ``cid=None`` the block joins the operation already running in this
    context (a reload's info lookup is part of the reload), or starts a new one.
    ``fields`` (``sandbox``, ``runtime``) are added to the context; ``None``
    values leave the outer ones in place.

    >>> with correlation() as outer:
    ...     with correlation() as inner:
    ...         inner == outer
    True
    >>> with correlation("abc", sandbox="s1"):
    ...     current_id(), context()["sandbox"]
    ('abc', 's1')
    """
    outer = _context.get()
    if cid is None:
        cid = outer["correlation_id"] if outer is not None else new_id()
    ctx = dict(outer) if outer is not None else {}
    ctx["correlation_id"] = str(cid)
    for key, value in fields.items():
        if value is not None:
            ctx[key] = value
    token = _context.set(ctx)
    try:
        yield ctx["correlation_id"]
    finally:
        _context.reset(token)


F = TypeVar("F", bound=Callable[..., Any])


def operation_started(name: str, sandbox_id: Any) -> None:
    """Log that operation ``name`` on ``sandbox_id`` started (logger ``runtime.ops``,
    under the running correlation). :func:`operation` logs it for one sandbox; a
    batch (``Runtime.batch_destroy``) logs it per sandbox of the batch.

    >>> operation_started("destroy", "s1")
    """
    log.info("%s %s: started", name, sandbox_id, extra={"operation": name})


def operation_ended(name: str, sandbox_id: Any, t0: float,
                    error: BaseException | None = None) -> None:
    """Log how operation ``name`` on ``sandbox_id``, started at ``t0``
    (``time.perf_counter()``), ended: done, or failed with ``error``'s category
    and remedy (:mod:`runtime.recovery`).

    >>> operation_ended("destroy", "s1", time.perf_counter())
    """
    took = time.perf_counter() - t0
    if error is None:
        log.info("%s %s: done in %.3fs", name, sandbox_id, took, extra={"operation": name})
        return
    from runtime.recovery import classify, remedy

    log.warning(
        "%s %s: failed after %.3fs: %s: %s [category %s; %s]",
        name, sandbox_id, took, type(error).__name__,
        str(error).split("\n", 1)[0], classify(error), remedy(error),
        extra={"operation": name,
               "traceback": "".join(traceback.format_exception(error))},
    )


def operation(name: str) -> Callable[[F], F]:
    """Decorate a :class:`~sandbox.api.Runtime` method taking the sandbox id first:
    it runs under a correlation id (joined if one is running) with ``sandbox`` and
    ``runtime`` set, and logs its start, end and failure (logger ``runtime.ops``;
    a failure says its error category and remedy, see :mod:`runtime.recovery`)."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Any, sandbox_id: Any, *args: Any, **kwargs: Any) -> Any:
            with correlation(sandbox=str(sandbox_id), runtime=getattr(self, "name", None)):
                t0 = time.perf_counter()
                operation_started(name, sandbox_id)
                try:
                    result = fn(self, sandbox_id, *args, **kwargs)
                except BaseException as exc:
                    operation_ended(name, sandbox_id, t0, exc)
                    raise
                operation_ended(name, sandbox_id, t0)
                return result

        return wrapper  # type: ignore[return-value]

    return deco


# -- formatting --------------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Stamps ``correlation_id``, ``sandbox`` and ``runtime`` on every record (from the
    current operation, unless the call passed them in ``extra``). Runs in the
    logging thread, so it sees that thread's context."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        return True


def _stamp(record: logging.LogRecord) -> None:
    ctx = _context.get()
    for key in _FIELDS:
        if getattr(record, key, None) is None:
            setattr(record, key, ctx.get(key) if ctx is not None else None)


_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message", "asctime", "traceback", *_FIELDS}


def _exc_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback: from ``exc_info``, or the ``traceback`` extra a failure
    handled elsewhere passes (an actor's, maybe from another process), or None."""
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    text = record.exc_text or getattr(record, "traceback", None)
    return str(text).rstrip() if text else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``correlation_id``, ``sandbox``, ``runtime``, ``pid``, ``exc``
    (the formatted exception or null), and any ``extra`` fields given to the call.

    >>> rec = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "hi"})
    >>> sorted(_json.loads(JsonFormatter().format(rec)))[:4]
    ['correlation_id', 'exc', 'level', 'logger']
    """

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)  # also without ContextFilter (a handler of your own)
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
            "sandbox": getattr(record, "sandbox", None),
            "runtime": getattr(record, "runtime", None),
            "pid": record.process,
            "exc": None,
        }
        out["exc"] = _exc_text(self, record)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        return _json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger [correlation id] message`` lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)
        cid = getattr(record, "correlation_id", None)
        record.correlation_id = cid or "-"
        try:
            text = super().format(record)
        finally:
            record.correlation_id = cid
        tb = getattr(record, "traceback", None)
        if tb and not record.exc_info and not record.exc_text:
            text += "\n" + str(tb).rstrip()
        return text


_handler: logging.Handler | None = None
_handler_logger: str | None = None
_settings: dict[str, Any] | None = None


def configure(
    *,
    json: bool = True,
    level: int | str = "INFO",
    stream: IO[str] | None = None,
    logger: str = "",
) -> logging.Handler:
    """Send log records of ``logger`` (default: the root logger) to ``stream``
    (default ``sys.stderr``), as JSON lines (``json=True``) or text, at ``level``.

    Calling it again replaces the handler it installed before. Sandbox processes
    follow these settings: the next reload tells each sandbox to log the same way
    (to its stderr, which the host relays as ``runtime.output`` records), so its
    lines carry the same correlation ids. Returns the handler.
    """
    global _handler, _handler_logger, _settings
    unconfigure()
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
    if not isinstance(lvl, int):
        raise ValueError(f"invalid log level {level!r}: expected DEBUG, INFO, WARNING, ERROR")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(ContextFilter())
    target = logging.getLogger(logger or None)
    target.addHandler(handler)
    handler._sandbox_previous_level = target.level  # type: ignore[attr-defined]
    target.setLevel(lvl)
    _handler, _handler_logger = handler, logger
    _settings = {"json": bool(json), "level": logging.getLevelName(lvl)}
    return handler


def unconfigure() -> None:
    """Remove the handler :func:`configure` installed, and restore the logger's
    level (no-op if none)."""
    global _handler, _handler_logger, _settings
    if _handler is not None:
        target = logging.getLogger(_handler_logger or None)
        target.removeHandler(_handler)
        target.setLevel(getattr(_handler, "_sandbox_previous_level", target.level))
        _handler.close()
    _handler, _handler_logger, _settings = None, None, None


def settings() -> dict[str, Any] | None:
    """What :func:`configure` set (``{"json", "level"}``), for sandboxes to follow;
    None if logging was not configured through this module."""
    return dict(_settings) if _settings is not None else None


def apply_settings(wanted: Any) -> None:
    """In a sandbox process: log like the host (``settings()`` sent by the host), to
    this process's stderr. Does nothing if ``wanted`` is None or already applied.

    Where the sandbox's records cross its channel to the host (a
    :class:`ChannelHandler` on the root logger), only the level is applied: the
    host's handlers format them."""
    global _settings
    if not isinstance(wanted, dict):
        return
    want: dict[str, Any] = {"json": bool(wanted.get("json", True)),
                            "level": str(wanted.get("level", "INFO"))}
    if want == _settings:
        return
    root = logging.getLogger()
    channel = [h for h in root.handlers if isinstance(h, ChannelHandler)]
    if channel:  # records cross to the host, which formats them: only the level is ours
        level = logging.getLevelName(want["level"])
        if isinstance(level, int):
            root.setLevel(level)
            for handler in channel:
                handler.setLevel(level)
        _settings = want
        return
    configure(json=want["json"], level=want["level"])


def sandbox_fields(boot_name: str) -> dict[str, str]:
    """``{"runtime", "sandbox"}`` from a sandbox process's name (``"<runtime>/<id>"``).

    >>> sandbox_fields("rt1/counter")
    {'runtime': 'rt1', 'sandbox': 'counter'}
    """
    runtime_name, sep, sandbox = boot_name.rpartition("/")
    return {"runtime": runtime_name, "sandbox": sandbox} if sep else {"sandbox": boot_name}


_child_log = logging.getLogger("runtime.child")


def sandbox_op(fn: F) -> F:
    """Decorate a sandbox SYSTEM op ``fn(server, payload)`` whose payload may carry
    ``correlation_id`` and ``log`` (the host's :func:`settings`): in the sandbox
    process it logs like the host and runs the op under the host operation's
    correlation id, logging its start and outcome (logger ``runtime.child``)."""

    @functools.wraps(fn)
    def wrapper(server: Any, payload: Any) -> Any:
        md = payload if isinstance(payload, dict) else {}
        apply_settings(md.get("log"))
        op = fn.__name__.removeprefix("_op_")
        fields = sandbox_fields(str(getattr(getattr(server, "boot", None), "name", "") or ""))
        with correlation(md.get("correlation_id"), **fields):
            changed = md.get("changed") or []
            _child_log.info("%s: swapping %s", op, ", ".join(map(str, changed)) or "nothing",
                            extra={"operation": op})
            t0 = time.perf_counter()
            try:
                result = fn(server, payload)
            except BaseException as exc:
                _child_log.error("%s failed: %s: %s", op, type(exc).__name__, exc,
                                 extra={"operation": op})
                raise
            took = time.perf_counter() - t0
            if isinstance(result, dict) and result.get("ok") is False:
                _child_log.warning("%s failed at step %s (module %s) after %.3fs; the old code "
                                   "keeps running: %s", op, result.get("step"),
                                   result.get("module"), took, result.get("error"),
                                   extra={"operation": op})
            else:
                _child_log.info("%s: done in %.3fs", op, took, extra={"operation": op})
            return result

    return wrapper  # type: ignore[return-value]


# -- records crossing from a sandbox process to the host -----------------------------------

#: Longest traceback or message carried per record (a runaway one is cut, not refused).
_WIRE_TEXT = 16 * 1024


def record_to_wire(record: logging.LogRecord) -> dict[str, Any]:
    """A log record as msgpack-native fields, to cross a sandbox's channel.

    >>> rec = logging.makeLogRecord({"name": "app", "levelno": 40, "msg": "x=%d", "args": (1,)})
    >>> w = record_to_wire(rec); w["name"], w["levelno"], w["msg"], w["exc"]
    ('app', 40, 'x=1', None)
    """
    _stamp(record)
    exc = _exc_text(_WIRE_FORMATTER, record)
    return {
        "name": record.name,
        "levelno": record.levelno,
        "msg": record.getMessage()[:_WIRE_TEXT],
        "exc": exc[-_WIRE_TEXT:] if exc else None,
        "created": record.created,
        "pathname": record.pathname,
        "lineno": record.lineno,
        "funcName": record.funcName,
        "process": record.process,
        "threadName": record.threadName,
        "correlation_id": getattr(record, "correlation_id", None),
        "actor": getattr(record, "actor", None),
    }


_WIRE_FORMATTER = logging.Formatter()


def emit_from_sandbox(payload: Any, *, sandbox: str | None, runtime: str | None = None) -> None:
    """Hand a record sent by a sandbox process (:func:`record_to_wire`) to the host's
    handlers of the same logger name, with the sandbox's id and runtime filled in."""
    if not isinstance(payload, dict):
        return
    name = str(payload.get("name") or "sandbox.app")
    level = payload.get("levelno")
    level = level if isinstance(level, int) else logging.WARNING
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(
        name, level, str(payload.get("pathname") or "?"), int(payload.get("lineno") or 0),
        str(payload.get("msg") or ""), (), None, str(payload.get("funcName") or "") or None,
        extra={
            "sandbox": sandbox,
            "runtime": runtime,
            "correlation_id": payload.get("correlation_id"),
            "traceback": payload.get("exc"),
            "from_sandbox": True,
            **({"actor": payload["actor"]} if payload.get("actor") else {}),
        },
    )
    created = payload.get("created")
    if isinstance(created, float):
        record.created = created
    if isinstance(payload.get("process"), int):
        record.process = payload["process"]
    logger.handle(record)


class ChannelHandler(logging.Handler):
    """In a sandbox process: send every record to the host (``send(record_fields)``),
    where :func:`emit_from_sandbox` hands it to the host's handlers. Installed on the
    root logger, so the sandbox's own loggers cross too and nothing falls through to
    the last-resort handler on the process's stderr."""

    #: Records per second a sandbox may send, and the burst allowed above it: a
    #: sandbox logging in a loop must not flood the host. Past it records are
    #: dropped, and the next one that passes is preceded by a count of them.
    RATE = 500.0
    BURST = 1000.0

    def __init__(self, send: Callable[[dict[str, Any]], None], level: int = logging.WARNING
                 ) -> None:
        super().__init__(level)
        self._send = send
        self._busy = threading.local()  # a record logged while sending one is dropped
        self._tokens = self.BURST
        self._last = time.monotonic()
        self._dropped = 0

    def _admit(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.BURST, self._tokens + (now - self._last) * self.RATE)
        self._last = now
        if self._tokens < 1.0:
            self._dropped += 1
            return False
        self._tokens -= 1.0
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            with self.lock:  # type: ignore[union-attr]
                admitted, dropped = self._admit(), self._dropped
                if admitted:
                    self._dropped = 0
            if not admitted:
                return
            if dropped:
                note = logging.makeLogRecord({
                    "name": "runtime.child.logs", "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": f"{dropped} log records dropped: this sandbox logged more than "
                           f"{self.RATE:.0f} a second"})
                self._send(record_to_wire(note))
            self._send(record_to_wire(record))
        except Exception:
            pass  # the host is gone or the record cannot cross: nothing to tell anyone
        finally:
            self._busy.on = False


def fill_level_caches() -> None:
    """Answer ``isEnabledFor`` once for every level on every logger there is.

    The fork server calls it before forking: each logger memoises the answers in
    a dict of its own, which a sandbox would otherwise fill on its first log call
    (pykka logs at debug level as every actor starts), writing to the server's
    pages (~40 KiB of each sandbox measured). Any level change clears the memo, so
    the answers stay those of the configuration in force.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        if isinstance(logger, logging.Logger):  # not a PlaceHolder
            for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                          logging.CRITICAL):
                logger.isEnabledFor(level)
