"""State snapshots, host side: ``Sandbox.snapshot()`` and ``Sandbox.restore(snapshot)``.

A :class:`StateSnapshot` is plain data the application keeps (in memory, in a
file, in its own database): for each named actor of the sandbox, its class, the
class's ``vsn`` and its state. States are msgpack-native values (dicts, lists,
tuples, str, bytes, numbers); under a profile that allows pickle, a state that is
not is carried as pickled bytes the host never unpickles (``pickled``).

Restoring goes through the same barrier as a hot reload (see
:mod:`runtime.child.snapshot`): all actors or none, ``code_change(old_vsn,
state, extra)`` when the snapshot's ``vsn`` differs from the running class's,
and the class's declared state shape checked before anything is committed.

>>> snap = StateSnapshot("demo", 0.0, {"counter": ActorState("counter", "Counter", 1, {"n": 1})})
>>> StateSnapshot.from_dict(snap.to_dict()) == snap
True
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime import logs, telemetry
from runtime.errors import ConfigError, ReloadFailed, SandboxError

if TYPE_CHECKING:
    from sandbox.api import Runtime

__all__ = ["ActorState", "RestoreReport", "SnapshotError", "StateSnapshot", "restore", "take"]


class SnapshotError(SandboxError):
    """A snapshot cannot be taken: an actor's state is not plain data (and the
    profile does not allow pickle, or it does not pickle either)."""


@dataclass(frozen=True)
class ActorState:
    """One actor's state in a snapshot: its class, the class's ``vsn`` and the state
    (``pickled`` holds the pickled state instead when it is not plain data)."""

    module: str
    cls: str
    vsn: Any
    state: Any = None
    pickled: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"module": self.module, "class": self.cls, "vsn": self.vsn}
        if self.pickled is not None:
            d["pickled"] = self.pickled
        else:
            d["state"] = self.state
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActorState:
        return cls(str(d["module"]), str(d["class"]), d.get("vsn"), d.get("state"),
                   d.get("pickled"))


@dataclass(frozen=True)
class StateSnapshot:
    """The states of a sandbox's named actors at one instant (``taken_at``, epoch s)."""

    sandbox: str
    taken_at: float
    actors: dict[str, ActorState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (msgpack-encodable; JSON too when no state is pickled or bytes)."""
        return {"sandbox": self.sandbox, "taken_at": self.taken_at,
                "actors": {n: a.to_dict() for n, a in self.actors.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StateSnapshot:
        """The inverse of :meth:`to_dict`; raises ConfigError for anything else."""
        try:
            return cls(str(d["sandbox"]), float(d["taken_at"]),
                       {str(n): ActorState.from_dict(a) for n, a in d["actors"].items()})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(
                "snapshot", type(d).__name__,
                f"a StateSnapshot or its to_dict() ({type(exc).__name__}: {exc})") from None

    def states(self) -> dict[str, Any]:
        """``{actor: state}`` of the plain-data states (pickled ones are left out)."""
        return {n: a.state for n, a in self.actors.items() if a.pickled is None}


@dataclass
class RestoreReport:
    """What a restore did: ``actors`` restored, ``migrated`` (their ``vsn`` differed,
    so ``code_change`` ran), ``warnings`` (states that lost keys or changed size in
    that migration, for classes that declare no state shape), ``duration`` seconds."""

    sandbox: str
    actors: int = 0
    migrated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duration: float = 0.0


def take(rt: Runtime, sandbox_id: str, *, timeout: float = 30.0) -> StateSnapshot:
    """The states of every named actor of ``sandbox_id`` now (see :class:`StateSnapshot`);
    raises :class:`SnapshotError` naming the actors whose state cannot be kept."""
    slot = rt._slot(sandbox_id)
    meta = {"sandbox": sandbox_id, "runtime": rt.name}
    with slot.reload_lock, telemetry.span("sandbox.snapshot", meta) as md:
        payload = {"suspend_timeout": min(timeout, 10.0)}
        result = slot.get(timeout).system("snapshot", payload, timeout=timeout)
        if not result.get("ok"):
            raise SnapshotError(f"sandbox {sandbox_id!r}: {result.get('error')}")
        md.update(actors=len(result["actors"]))
    return StateSnapshot(sandbox_id, float(result["taken_at"]),
                         {n: ActorState.from_dict(a) for n, a in result["actors"].items()})


def restore(
    rt: Runtime,
    sandbox_id: str,
    snapshot: StateSnapshot | Mapping[str, Any],
    *,
    extra: Any = None,
    timeout: float = 30.0,
) -> RestoreReport:
    """Put ``snapshot``'s states back into ``sandbox_id``'s actors, all or nothing.

    Raises ReloadFailed naming the step (``resolve``: an actor of the snapshot is
    not running or runs another class; ``restore``; ``code_change``;
    ``check_state``) and the actor; then every actor keeps its current state.
    """
    t0 = time.perf_counter()
    snap = snapshot if isinstance(snapshot, StateSnapshot) else StateSnapshot.from_dict(snapshot)
    slot = rt._slot(sandbox_id)
    meta = {"sandbox": sandbox_id, "runtime": rt.name, "from": snap.sandbox}
    with slot.reload_lock, telemetry.span("sandbox.restore", meta) as md:
        payload = {"actors": {n: a.to_dict() for n, a in snap.actors.items()}, "extra": extra,
                   "suspend_timeout": min(timeout, 10.0),
                   "correlation_id": logs.current_id()}
        result = slot.get(timeout).system("restore", payload, timeout=timeout)
        if not result.get("ok"):
            err = ReloadFailed(f"sandbox {sandbox_id!r}: {result.get('error')}",
                               module=result.get("module"), step=result.get("step"))
            err.remote_traceback = result.get("traceback", "")  # type: ignore[attr-defined]
            raise err
        md.update(actors=result["actors"], migrated=result["migrated"])
    return RestoreReport(sandbox_id, result["actors"], list(result["migrated"]),
                         list(result["warnings"]), time.perf_counter() - t0)
