"""Sandbox: OTP-style supervised actors in child processes, with hot code reload.

>>> import runtime
>>> with runtime.start() as rt:
...     rt.create_sandbox("hello", "examples/counter").call("counter", "incr")
1

The names below are loaded on first use, so a sandbox process that imports only
``runtime.child`` does not pay for the host-side components.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    # host API
    "Runtime",
    "Sandbox",
    "BatchResult",
    "start",
    # actors and supervision
    "Actor",
    "ActorRef",
    "ExitReason",
    "Down",
    "Exit",
    "GenServer",
    "ChildSpec",
    "Supervisor",
    "SupervisorSpec",
    "monitor",
    "demonitor",
    "link",
    "unlink",
    "whereis",
    "register",
    # configuration
    "Limits",
    "SandboxConfig",
    # errors
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
    "telemetry",
]

_WHERE = {
    "Runtime": "api", "Sandbox": "api", "BatchResult": "api", "start": "api",
    "Actor": "actor", "ActorRef": "actor", "ExitReason": "actor", "Down": "actor",
    "Exit": "actor", "monitor": "actor", "demonitor": "actor", "link": "actor", "unlink": "actor",
    "GenServer": "genserver", "ChildSpec": "childspec",
    "Supervisor": "supervisor", "SupervisorSpec": "supervisor",
    "whereis": "registry", "register": "registry",
    "Limits": "config", "SandboxConfig": "config",
    "telemetry": None,
}

if TYPE_CHECKING:
    from . import telemetry
    from .actor import Actor, ActorRef, Down, Exit, ExitReason, demonitor, link, monitor, unlink
    from .api import BatchResult, Runtime, Sandbox, start
    from .childspec import ChildSpec
    from .config import Limits, SandboxConfig
    from .errors import (
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
    from .genserver import GenServer
    from .registry import register, whereis
    from .supervisor import Supervisor, SupervisorSpec


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    where = _WHERE.get(name, "errors")
    if where is None:
        value: Any = importlib.import_module(f"{__name__}.{name}")
    else:
        value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
