"""The control protocol: addresses, frames, requests and errors on the wire.

A control connection carries the runtime's mailbox frames
(:mod:`runtime.wire.mailbox`: a 4-byte big-endian length, then a msgpack
``[kind, ref, target, payload]`` array), with a codec that never unpickles:

1. the client's first frame is ``[system, 0, "hello", {"version": 1, "token": T}]``;
   the server answers ``[reply, 0, nil, {"version": 1, "runtime": NAME}]``, or an
   ``error`` frame and closes the connection. Nothing else is read before it.
2. then each request is ``[call, REF, OP, {ARGS}]`` and gets one
   ``[reply, REF, nil, RESULT]`` or ``[error, REF, nil, ERROR]``; requests on one
   connection run concurrently and may be answered in any order.
3. a ``logs`` request with ``follow`` true is answered at once (the recent
   records) and then keeps sending ``[system, REF, "log", RECORD]`` frames until
   an ``unfollow`` request names that REF (answered true; no record for REF is
   sent after its answer) or the connection closes.

``ERROR`` is ``{"type": NAME, "message": TEXT, "attrs": {...}}``; NAME is a class of
:mod:`runtime.errors` (or ``TypeError``, ``ValueError``, ...) and the client raises
that class again (:func:`error_from_wire`).

>>> parse_address("unix:/run/sandbox.sock")
Address(kind='unix', path='/run/sandbox.sock', host='', port=0)
>>> parse_address("tcp:127.0.0.1:7000").port
7000
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from runtime import errors
from runtime.errors import ConfigError, SandboxError
from runtime.wire.mailbox import Codec

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME",
    "OPS",
    "Address",
    "AuthenticationError",
    "ControlError",
    "parse_address",
    "make_codec",
    "plain",
    "error_to_wire",
    "error_from_wire",
]

PROTOCOL_VERSION = 1
#: Largest frame body either side accepts (a hot reload's ``source`` travels in one).
DEFAULT_MAX_FRAME = 4 * 1024 * 1024

#: The requests a server answers, with the arguments each takes.
OPS: dict[str, tuple[str, ...]] = {
    "list": (),
    "create": ("id", "path", "options"),
    "destroy": ("id",),
    "restart": ("id", "preserve_state"),
    "info": ("id",),
    "call": ("id", "actor", "request", "timeout", "created"),
    "cast": ("id", "actor", "request", "created"),
    "hot_reload": ("id", "modules", "source", "extra", "changed_files", "timeout",
                   "compile_timeout"),
    "rollback": ("id", "module", "version", "extra", "timeout"),
    "module_versions": ("id", "module"),
    "reload_status": ("id",),
    "usage": ("id",),
    "output": ("id", "tail"),
    "health": (),
    "metrics": (),
    "logs": ("follow", "lines"),
    "unfollow": ("ref",),
    "stop": (),
}


class ControlError(SandboxError):
    """The control connection failed: refused, closed, or the server broke the protocol."""


class AuthenticationError(ControlError):
    """The server refused the token (or none was given where one is required)."""


class Address(NamedTuple):
    """A parsed control address: ``unix:PATH`` or ``tcp:HOST:PORT``."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


_ADDRESS_FORMS = "'unix:PATH' or 'tcp:HOST:PORT' (e.g. unix:/run/sandbox.sock, tcp:127.0.0.1:7000)"


def parse_address(address: str | Address, *, option: str = "listen") -> Address:
    """Parse ``unix:PATH`` or ``tcp:HOST:PORT``; a bad one raises ConfigError naming ``option``.

    >>> parse_address("tcp:[::1]:0")
    Address(kind='tcp', path='', host='::1', port=0)
    >>> parse_address("localhost:80")
    Traceback (most recent call last):
    ...
    runtime.errors.ConfigError: invalid listen='localhost:80': expected 'unix:PATH' or 'tcp:HOST:PORT' (e.g. unix:/run/sandbox.sock, tcp:127.0.0.1:7000)
    """
    if isinstance(address, Address):
        return address
    if not isinstance(address, str):
        raise ConfigError(option, address, _ADDRESS_FORMS)
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return Address("unix", path=os.path.abspath(rest))
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and int(port) < 65536:
            return Address("tcp", host=host, port=int(port))
    raise ConfigError(option, address, _ADDRESS_FORMS)


def make_codec(max_frame: int = DEFAULT_MAX_FRAME) -> Codec:
    """The codec of both ends: msgpack only, never pickle."""
    return Codec(allow_pickle=False, max_frame=max_frame)


def plain(value: Any) -> Any:
    """``value`` as msgpack-native data: dataclasses as dicts, paths and other
    objects as their ``str`` (results only; requests must be native already).

    >>> plain({"a": (1, {2})})
    {'a': (1, {2})}
    """
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):  # a namedtuple too: it arrives as a tuple
        return tuple(plain(v) for v in value)
    if isinstance(value, frozenset):
        return frozenset(plain(v) for v in value)
    if isinstance(value, set):
        return {plain(v) for v in value}
    if hasattr(value, "isoformat"):
        return value
    return str(value)


# Exceptions the client raises again by name; anything else arrives as ControlError.
_BUILTIN_ERRORS = ("TypeError", "ValueError", "KeyError", "TimeoutError", "PermissionError",
                   "FileNotFoundError", "NotADirectoryError", "OSError")


def _error_class(name: str) -> type[BaseException] | None:
    if name in errors.__all__:
        return getattr(errors, name)
    if name in ("ControlError", "AuthenticationError"):
        return globals()[name]
    if name in _BUILTIN_ERRORS:
        return getattr(builtins, name)
    return None


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """An exception as an ``error`` frame's payload: its class name, message and
    plain attributes (``sandbox_id``, ``option``, ``remote_traceback``, ...)."""
    attrs = {k: plain(v) for k, v in vars(exc).items() if not k.startswith("_")}
    name = type(exc).__name__
    if _error_class(name) is not type(exc):
        # A class the client cannot know: the nearest one it does, with the real name.
        base = next((c for c in type(exc).__mro__ if _error_class(c.__name__) is c), None)
        message = f"{name}: {exc}"
        name = base.__name__ if base is not None and base is not BaseException else "ControlError"
        return {"type": name, "message": message, "attrs": attrs}
    message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return {"type": name, "message": message, "attrs": attrs}


def error_from_wire(payload: Any) -> BaseException:
    """The exception an ``error`` frame describes, of the same class it had on the server.

    >>> exc = error_from_wire(error_to_wire(errors.SandboxNotFound("x")))
    >>> type(exc).__name__, str(exc), exc.sandbox_id
    ('SandboxNotFound', "no sandbox with id 'x'", 'x')
    """
    if not isinstance(payload, dict):
        return ControlError(f"the server sent a malformed error: {payload!r:.200}")
    message = str(payload.get("message", ""))
    cls = _error_class(str(payload.get("type"))) or ControlError
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    attrs = payload.get("attrs")
    for key, value in (attrs.items() if isinstance(attrs, dict) else ()):
        try:
            setattr(exc, str(key), value)
        except AttributeError:
            pass
    return exc
