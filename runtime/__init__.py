"""The actor system: OTP-style actors, supervisors and telemetry, embeddable alone.

This package has no notion of sandboxes; the product built on it lives in
:mod:`sandbox`. Subpackages hold the machinery of child-process actors:
:mod:`runtime.wire` (the msgpack mailbox and channel), :mod:`runtime.host` (the
host side of a child process: proxy actor and fork server) and
:mod:`runtime.child` (everything that runs inside a sandbox process).

>>> import runtime
>>> class Greeter(runtime.GenServer):
...     def init(self, args):
...         return args
...     def handle_call(self, request, state):
...         return f"{state}, {request}", state
>>> ref = Greeter.start("hello")
>>> ref.call("world")
'hello, world'
>>> _ = ref.stop()
"""

from __future__ import annotations

import logging as _logging

# A library prints nothing unless the application configures logging (then its
# handlers get every record): without this, Python's last-resort handler would
# print each warning and error of this package on stderr.
_logging.getLogger("runtime").addHandler(_logging.NullHandler())

from runtime import telemetry, timers
from runtime.actor import (
    NOREPLY,
    Actor,
    ActorRef,
    Down,
    Exit,
    ExitReason,
    demonitor,
    link,
    monitor,
    unlink,
)
from runtime.childspec import BRUTAL_KILL, IGNORE, INFINITY, ChildSpec
from runtime.dynamic import DynamicSupervisor, DynamicSupervisorRef
from runtime.errors import (
    ActorDead,
    ActorError,
    ActorFailed,
    CallTimeout,
    ChildSpecError,
    CompileError,
    ConfigError,
    NoSuchActor,
    ProtocolError,
    ReloadFailed,
    ResourceLimitExceeded,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
    SandboxUnavailable,
    SecurityViolation,
    SupervisorError,
)
from runtime.genserver import Continue, From, GenServer, call, cast, reply
from runtime.registry import await_name, register, registered, unregister, whereis
from runtime.supervisor import Supervisor, SupervisorRef, SupervisorSpec, gave_up
from runtime.timers import ManualClock, TimerRef, cancel_timer, send_after, use_clock

__all__ = [
    # actors and supervision
    "Actor",
    "ActorRef",
    "ExitReason",
    "Down",
    "Exit",
    "GenServer",
    "ChildSpec",
    "IGNORE",
    "BRUTAL_KILL",
    "INFINITY",
    "Supervisor",
    "SupervisorRef",
    "SupervisorSpec",
    "DynamicSupervisor",
    "DynamicSupervisorRef",
    "gave_up",
    # GenServer helpers: calls by name, deferred replies, continue, timers
    "call",
    "cast",
    "reply",
    "From",
    "NOREPLY",
    "Continue",
    "send_after",
    "cancel_timer",
    "TimerRef",
    "ManualClock",
    "use_clock",
    "timers",
    "monitor",
    "demonitor",
    "link",
    "unlink",
    # registry
    "whereis",
    "register",
    "unregister",
    "registered",
    "await_name",
    "telemetry",
    # errors
    "SandboxError",
    "ActorError",
    "ActorDead",
    "ActorFailed",
    "CallTimeout",
    "NoSuchActor",
    "ProtocolError",
    "SupervisorError",
    "ChildSpecError",
    "ConfigError",
    "SandboxNotFound",
    "SandboxExists",
    "CompileError",
    "ReloadFailed",
    "SecurityViolation",
    "ResourceLimitExceeded",
    "SandboxUnavailable",
]
