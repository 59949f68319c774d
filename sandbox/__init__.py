"""Sandbox: OTP-style supervised actors in child processes, with hot code reload.

>>> import sandbox
>>> with sandbox.start() as rt:
...     rt.create_sandbox("hello", "examples/counter").call("counter", "incr")
1

The actor system underneath is :mod:`runtime`; its names most apps need
(``GenServer``, ``Supervisor``, the errors) are re-exported here.
"""

from __future__ import annotations

import logging as _logging

# A library prints nothing unless the application configures logging (then its
# handlers get every record): without this, Python's last-resort handler would
# print each warning and error of this package on stderr.
_logging.getLogger("sandbox").addHandler(_logging.NullHandler())

from actors.config import AlertThresholds, Limits, SandboxConfig, WatchOptions
from runtime import telemetry
from runtime.childspec import ChildSpec
from runtime.errors import (
    ActorDead,
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
from runtime.genserver import GenServer
from runtime.supervisor import Supervisor, SupervisorSpec
from sandbox.aio import AsyncRuntime, AsyncSandbox, start_async
from sandbox.api import BatchResult, Runtime, Sandbox, start
from sandbox.control import AuthenticationError, ControlError, connect, connect_async
from sandbox.options import CreateOptions, ReloadOptions, StartOptions
from sandbox.statesnapshot import SnapshotError, StateSnapshot

__all__ = [
    # host API
    "start",
    "Runtime",
    "Sandbox",
    "BatchResult",
    "StateSnapshot",
    "SnapshotError",
    # asyncio, and a runtime behind a control endpoint
    "start_async",
    "AsyncRuntime",
    "AsyncSandbox",
    "connect",
    "connect_async",
    "ControlError",
    "AuthenticationError",
    # configuration
    "CreateOptions",
    "StartOptions",
    "ReloadOptions",
    "Limits",
    "SandboxConfig",
    "WatchOptions",
    "AlertThresholds",
    # re-exported from runtime
    "GenServer",
    "ChildSpec",
    "Supervisor",
    "SupervisorSpec",
    "telemetry",
    "SandboxError",
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
