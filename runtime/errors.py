"""The exception hierarchy of the runtime.

Every error the runtime raises is a :class:`SandboxError`; each message says what
failed and what to do about it.

>>> from runtime.errors import CallTimeout, SandboxError
>>> issubclass(CallTimeout, SandboxError)
True
"""

from __future__ import annotations

__all__ = [
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


class SandboxError(Exception):
    """Base class of every error raised by the runtime."""


class ActorError(SandboxError):
    """Something went wrong talking to an actor."""


class ActorDead(ActorError):
    """The actor is not running (it stopped, failed or was never started).

    ``reason`` is the exit reason when it is known.
    """

    def __init__(self, actor: str, reason: object | None = None) -> None:
        self.actor = actor
        self.reason = reason
        why = f" (exit reason: {reason})" if reason is not None else ""
        super().__init__(
            f"actor {actor!r} is not running{why}; "
            "if it is supervised, retry once its supervisor has restarted it"
        )


class ActorFailed(ActorError):
    """The actor raised while handling a call; it has failed and stopped.

    ``remote_traceback`` holds the traceback text from where it failed, which may be
    another process. ``correlation_id`` is the one of the failure's log record (the
    supervisor's "child ... ended" line), to find it in the logs.
    """

    def __init__(self, actor: str, error: str, remote_traceback: str = "",
                 correlation_id: str | None = None) -> None:
        self.actor = actor
        self.error = error
        self.remote_traceback = remote_traceback
        self.correlation_id = correlation_id
        text = f"actor {actor!r} failed handling the call: {error}"
        if remote_traceback:
            text += f"\n--- remote traceback ---\n{remote_traceback.rstrip()}"
        super().__init__(text)


class CallTimeout(ActorError):
    """A call got no reply within its timeout."""

    def __init__(self, actor: str, timeout: float | None) -> None:
        self.actor = actor
        self.timeout = timeout
        super().__init__(
            f"call to {actor!r} got no reply within {timeout}s; the actor may be busy "
            "or stuck: raise the timeout or check what it is doing"
        )


class NoSuchActor(ActorError):
    """No actor is registered under the name a message was addressed to."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        hint = f"; registered names: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"no actor named {name!r}{hint}")


class ProtocolError(SandboxError):
    """A frame on a mailbox channel was malformed, oversized or not allowed.

    The side that sees it closes the channel: the peer is no longer trusted.
    """


class SupervisorError(SandboxError):
    """A supervisor operation could not be carried out."""


class ChildSpecError(SupervisorError, ValueError):
    """A child specification is invalid (bad id, restart type, shutdown, ...)."""


class ConfigError(SandboxError, ValueError):
    """An option has a bad value. Names the option, the value and what is accepted."""

    def __init__(self, option: str, value: object, accepted: str) -> None:
        self.option = option
        self.value = value
        self.accepted = accepted
        super().__init__(f"invalid {option}={value!r}: expected {accepted}")


class SandboxNotFound(SandboxError, KeyError):
    """No sandbox with this id exists in the runtime."""

    def __init__(self, sandbox_id: str, known: list[str] | None = None) -> None:
        self.sandbox_id = sandbox_id
        hint = f"; existing sandboxes: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"no sandbox with id {sandbox_id!r}{hint}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class SandboxExists(SandboxError):
    """A sandbox with this id already exists."""

    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        super().__init__(
            f"a sandbox with id {sandbox_id!r} already exists; "
            "destroy it first or pick another id"
        )


class CompileError(SandboxError):
    """Compiling the sandbox's modules failed; ``diagnostics`` has file:line:col entries."""

    def __init__(self, message: str, diagnostics: list | None = None) -> None:
        self.diagnostics = list(diagnostics or [])
        super().__init__(message)


class ReloadFailed(SandboxError):
    """A hot reload failed; the sandbox still runs its previous code and state."""

    def __init__(self, message: str, *, module: str | None = None, step: str | None = None) -> None:
        self.module = module
        self.step = step
        super().__init__(message)


class SecurityViolation(SandboxError):
    """Code or an operation was refused by the sandbox's security profile."""

    def __init__(self, message: str, findings: list | None = None) -> None:
        self.findings = list(findings or [])
        super().__init__(message)


class ResourceLimitExceeded(SandboxError):
    """A sandbox crossed one of its resource limits."""


class SandboxUnavailable(SandboxError):
    """The sandbox exists but cannot answer now: its node was lost and it is being
    started again elsewhere. Retriable: the same call succeeds once it runs again.

    >>> str(SandboxUnavailable("c1", "node 3f2a was lost; restarting on another node"))
    "sandbox 'c1' is unavailable: node 3f2a was lost; restarting on another node (retry)"
    """

    def __init__(self, sandbox_id: str, why: str) -> None:
        self.sandbox_id = sandbox_id
        self.why = why
        super().__init__(f"sandbox {sandbox_id!r} is unavailable: {why} (retry)")
