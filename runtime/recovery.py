"""Error classification: what kind of failure an error is, and what recovers from it.

Every error the runtime reports falls in one of six categories, and each
category gets one recovery:

============  ==========  ===================================================================
category      recovery    what the runtime does
============  ==========  ===================================================================
compilation   rollback    nothing new is swapped in: the last good version keeps running
runtime       restart     the failed actor (or sandbox process) is restarted by its supervisor
resource      terminate   the process over its limit is stopped; its supervisor may start anew
security      isolate     the operation is refused and counted; past the threshold, quarantine
protocol      restart     the peer is no longer trusted: killed, and a fresh process started
system        retry       transient or caller-side: retry (after fixing what the message names)
============  ==========  ===================================================================

:func:`classify` takes an exception, an :class:`~runtime.actor.ExitReason`, a
sandbox's ``last_error`` dict (``{"kind", "message"}``) or an exception class
name; :func:`remedy` says what to do about it, in one sentence.

>>> from runtime.errors import CompileError, SecurityViolation, CallTimeout
>>> classify(CompileError("app.py:3:1: invalid syntax"))
'compilation'
>>> classify(SecurityViolation("os.system refused")), recovery(SecurityViolation("x"))
('security', 'isolate')
>>> classify(CallTimeout("counter", 1.0))
'system'
>>> classify({"kind": "protocol", "message": "broke the mailbox protocol"})
'protocol'
>>> classify(MemoryError())
'resource'
>>> classify(ZeroDivisionError("division by zero"))
'runtime'
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CATEGORIES",
    "RECOVERY",
    "annotate",
    "classify",
    "describe",
    "recovery",
    "remedy",
]

CATEGORIES = ("compilation", "runtime", "resource", "security", "protocol", "system")

#: The recovery each category gets.
RECOVERY: dict[str, str] = {
    "compilation": "rollback",
    "runtime": "restart",
    "resource": "terminate",
    "security": "isolate",
    "protocol": "restart",
    "system": "retry",
}

#: Exception class names (looked up along the class's MRO, or as the type name of
#: an error that crossed from a sandbox) and their category.
_BY_NAME: dict[str, str] = {
    # compilation: the code itself is wrong
    "CompileError": "compilation",
    "SyntaxError": "compilation",
    "IndentationError": "compilation",
    "TabError": "compilation",
    "ReloadFailed": "compilation",
    "ImportError": "compilation",
    "ModuleNotFoundError": "compilation",
    # resource
    "ResourceLimitExceeded": "resource",
    "MemoryError": "resource",
    "RecursionError": "resource",
    # security
    "SecurityViolation": "security",
    "PermissionError": "security",
    # protocol
    "ProtocolError": "protocol",
    "ExtraData": "protocol",
    "FormatError": "protocol",
    "StackError": "protocol",
    "UnpicklingError": "protocol",
    "EncodeError": "protocol",
    # system: transient, or the caller's to fix
    "CallTimeout": "system",
    "ActorDead": "system",
    "NoSuchActor": "system",
    "ChannelClosed": "system",
    "SupervisorError": "system",
    "ConfigError": "system",
    "SandboxNotFound": "system",
    "SandboxExists": "system",
    "VersionNotFound": "system",
    "WorkerError": "system",
    "TimeoutError": "system",
    "ConnectionError": "system",
    "BrokenPipeError": "system",
    "OSError": "system",
    "KeyboardInterrupt": "system",
    # runtime: the app's code failed while running
    "ActorFailed": "runtime",
    "SandboxBootError": "runtime",
    "ActorError": "runtime",
}

#: OSError numbers that mean a resource ran out.
_RESOURCE_ERRNOS = {
    getattr(errno, n)
    for n in ("ENOMEM", "EMFILE", "ENFILE", "ENOSPC", "EDQUOT", "EFBIG", "EAGAIN")
    if hasattr(errno, n)
}

#: Exit-reason kinds (see ExitReason) and what they are.
_BY_KIND: dict[str, str] = {
    "protocol": "protocol",
    "noproc": "system",
    "killed": "runtime",
    "escalation": "runtime",
    "exception": "runtime",
    "exit": "runtime",
    "limit": "resource",
    "resource": "resource",
    "security": "security",
    "quarantine": "security",
    "quarantined": "security",
}

_RESOURCE_TEXT = re.compile(
    r"SIGXCPU|SIGXFSZ|limit (?:was )?(?:exceeded|reached)|over (?:its|the) \w*\s*limit|"
    r"out of memory|memory limit|cpu limit|RLIMIT|MemoryError|RecursionError|"
    r"too many open files|no space left|cannot allocate memory|disk quota|file too large|"
    r"resource temporarily unavailable",
    re.IGNORECASE,
)
_SECURITY_TEXT = re.compile(r"refused by (?:the sandbox guard|security profile)", re.IGNORECASE)
_PROTOCOL_TEXT = re.compile(r"mailbox protocol|malformed frame|oversized frame", re.IGNORECASE)
_REMOTE_TYPE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exceeded|Violation|Exit|"
                          r"Interrupt|Failed|Timeout|Dead|Found|Exists))\s*:")

_DEFAULT_REMEDY: dict[str, str] = {
    "compilation": (
        "fix the error at the file:line:col shown and reload again; the sandbox keeps "
        "running its last good version (rollback_module() returns to an older one)"
    ),
    "runtime": (
        "the supervisor restarts the failed actor or sandbox process; read the traceback, "
        "fix the code and hot_reload it"
    ),
    "resource": (
        "the process went over a resource limit and was stopped; raise the sandbox's "
        "limits, or make the app use less memory, CPU or files"
    ),
    "security": (
        "the operation is refused by the sandbox's security profile; remove it from the "
        "app, or run the sandbox under a less strict profile if it is legitimate "
        "(repeated violations quarantine the sandbox)"
    ),
    "protocol": (
        "the sandbox process broke the mailbox protocol and was killed (its supervisor "
        "starts a fresh one); send only msgpack-native values, smaller than max_frame"
    ),
    "system": "transient or caller-side: retry, after fixing what the message names",
}

_REMEDY_BY_NAME: dict[str, str] = {
    "CallTimeout": "raise the call's timeout, or find out what keeps the actor busy; then retry",
    "ActorDead": "retry once its supervisor has restarted it (sandbox info shows its status)",
    "NoSuchActor": "call a registered name (the message lists them), or retry once the "
                   "actor has been restarted and registered again",
    "ConfigError": "fix the option named in the message and retry",
    "SandboxNotFound": "check the sandbox id: list_sandboxes() names the existing ones",
    "SandboxExists": "destroy the existing sandbox first, or pick another id",
    "VersionNotFound": "pick one of the kept versions (module_versions() lists them)",
    "ReloadFailed": (
        "the sandbox still runs its previous code and state; fix the module named in the "
        "error (its code_change or import) and reload again"
    ),
}


def _mro_names(exc: BaseException) -> list[str]:
    return [c.__name__ for c in type(exc).__mro__]


def _from_text(text: str) -> str | None:
    if _SECURITY_TEXT.search(text):
        return "security"
    if _PROTOCOL_TEXT.search(text):
        return "protocol"
    if _RESOURCE_TEXT.search(text):
        return "resource"
    return None


def _remote(text: str) -> str | None:
    """The category of an error that crossed from elsewhere as ``"Type: message"``."""
    m = _REMOTE_TYPE.match(text or "")
    if m is None:
        return None
    return _BY_NAME.get(m.group(1).rsplit(".", 1)[-1])


def _classify_exception(exc: BaseException) -> str:
    explicit = getattr(exc, "category", None)
    if isinstance(explicit, str) and explicit in CATEGORIES:
        return explicit
    names = _mro_names(exc)
    if "ReloadFailed" in names and getattr(exc, "step", None) == "suspend":
        return "system"  # the actors were too busy to suspend: nothing wrong with the code
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        return "resource"
    if "ActorFailed" in names or "SandboxBootError" in names:
        inner = str(getattr(exc, "error", "") or "")
        return _from_text(inner) or _remote(inner) or "runtime"
    for name in names:
        category = _BY_NAME.get(name)
        if category is not None:
            if category in ("runtime", "system"):
                # a generic wrapper: what it wraps may say more
                found = _from_text(str(exc))
                if found is not None and name not in ("ConfigError", "CallTimeout"):
                    return found
            return category
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        return _classify_exception(cause)
    return _from_text(str(exc)) or "runtime"


def _classify_record(kind: str, message: str) -> str:
    if kind in _BY_NAME:
        if kind in ("SandboxBootError", "ActorFailed", "SandboxError", "ActorError"):
            return _from_text(message) or _remote(_after_prefix(message)) or _BY_NAME[kind]
        return _BY_NAME[kind]
    if kind == "exception":
        return _from_text(message) or _remote(message) or "runtime"
    if kind in ("exit", "killed", "escalation"):
        return _from_text(message) or "runtime"
    if kind in _BY_KIND:
        return _BY_KIND[kind]
    return _from_text(message) or _remote(message) or "runtime"


def _after_prefix(message: str) -> str:
    # "sandbox process 'x' failed to start: ValueError: boom" -> "ValueError: boom"
    m = re.search(r"failed (?:to start|handling the call): (.*)", message or "", re.DOTALL)
    return m.group(1) if m else message or ""


def classify(error: Any) -> str:
    """The category of ``error``: one of :data:`CATEGORIES`.

    ``error`` may be an exception, an ExitReason (``kind``/``message``), a
    ``last_error``-style mapping (``kind``/``message``, or ``type``/``message`` as
    sent by a sandbox; an existing ``category`` is kept), or a class name.

    >>> from runtime.actor import ExitReason
    >>> classify(ExitReason("exit", "killed by SIGXCPU"))
    'resource'
    >>> classify("SandboxExists")
    'system'
    """
    if isinstance(error, BaseException):
        return _classify_exception(error)
    if isinstance(error, Mapping):
        if error.get("category") in CATEGORIES:
            return str(error["category"])
        kind = str(error.get("kind") or error.get("type") or "")
        return _classify_record(kind, str(error.get("message") or error.get("reason") or ""))
    if isinstance(error, str):
        return _classify_record(error, "")
    kind_attr = getattr(error, "kind", None)
    if isinstance(kind_attr, str):
        return _classify_record(kind_attr, str(getattr(error, "message", "") or ""))
    return "runtime"


def recovery(error: Any) -> str:
    """The recovery :data:`RECOVERY` gives ``error``'s category (or a category name).

    >>> recovery("compilation"), recovery(ValueError())
    ('rollback', 'restart')
    """
    if isinstance(error, str) and error in RECOVERY:
        return RECOVERY[error]
    return RECOVERY[classify(error)]


def _name_of(error: Any) -> str:
    if isinstance(error, BaseException):
        for name in _mro_names(error):
            if name in _REMEDY_BY_NAME:
                return name
        return type(error).__name__
    if isinstance(error, Mapping):
        return str(error.get("kind") or error.get("type") or "")
    if isinstance(error, str):
        return error
    return str(getattr(error, "kind", "") or "")


def remedy(error: Any) -> str:
    """What to do about ``error``, in one sentence.

    >>> remedy({"kind": "escalation", "message": "restart intensity reached"})[:40]
    'the sandbox crashed more often than its '
    """
    name = _name_of(error)
    category = classify(error)
    if name == "escalation":
        return (
            "the sandbox crashed more often than its restart intensity allows and is not "
            "restarted any more; fix the crash (see the message), then restart_sandbox()"
        )
    if name == "ReloadFailed" and category != "compilation":
        return _DEFAULT_REMEDY[category]
    return _REMEDY_BY_NAME.get(name) or _DEFAULT_REMEDY[category]


def describe(error: Any) -> dict[str, str]:
    """``{"category", "recovery", "remedy"}`` of ``error``.

    >>> describe(PermissionError("os.system refused by the sandbox guard"))["recovery"]
    'isolate'
    """
    category = classify(error)
    return {"category": category, "recovery": RECOVERY[category], "remedy": remedy(error)}


def annotate(last_error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``last_error`` with ``category``, ``recovery`` and ``remedy`` added (those it
    already has are kept). None stays None."""
    if last_error is None:
        return None
    out = dict(last_error)
    for key, value in describe(out).items():
        out.setdefault(key, value)
    return out
