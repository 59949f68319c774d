"""Sandbox: OTP-style supervised actors in child processes, with hot code reload.

>>> import sandbox
>>> with sandbox.start() as rt:
...     rt.create_sandbox("hello", "examples/counter").call("counter", "incr")
1

The actor system underneath is :mod:`runtime`; its names most apps need
(``GenServer``, ``Supervisor``, the errors) are re-exported here.
"""

from __future__ import annotations

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
    SecurityViolation,
    SupervisorError,
)
from runtime.genserver import GenServer
from runtime.supervisor import Supervisor, SupervisorSpec
from sandbox.api import BatchResult, Runtime, Sandbox, start
from sandbox.statesnapshot import SnapshotError, StateSnapshot

__all__ = [
    # host API
    "start",
    "Runtime",
    "Sandbox",
    "BatchResult",
    "StateSnapshot",
    "SnapshotError",
    # configuration
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
]
