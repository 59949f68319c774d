"""State snapshots inside a sandbox: take every named actor's state, put states back.

:func:`take` holds the code barrier (every actor between two messages, as for a
reload), and copies each named GenServer's state with its class and ``vsn``. A
state the wire carries as plain data (msgpack: what calls and replies may hold)
is copied as such; any other state is pickled when the sandbox may pickle, and
refused otherwise, naming the actor, so a snapshot is always complete.

:func:`put_back` is the same transaction as a reload: under the barrier, each
state is decoded, migrated by the running class's ``code_change`` when the
snapshot's ``vsn`` differs, checked (:mod:`runtime.child.statecheck`), and only
when every actor passed are the states committed. Any failure changes nothing
and raises :class:`~runtime.errors.ReloadFailed` naming the step (``resolve``,
``restore``, ``code_change``, ``check_state``) and the actor.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Mapping
from typing import Any

from runtime.barrier import BARRIER
from runtime.child.statecheck import check_state, declares_shape, shape_warnings
from runtime.errors import ReloadFailed
from runtime.registry import registered, whereis
from runtime.wire.mailbox import Codec

__all__ = ["put_back", "take"]

#: What "plain data" means here: what the wire encodes without pickle.
_PLAIN = Codec(allow_pickle=False)


def _servers() -> dict[str, Any]:
    """``{registered name: GenServer actor}`` of the named GenServers now running."""
    out = {}
    for name in registered():
        ref = whereis(name)
        server = getattr(ref, "_actor", None) if ref is not None else None
        if server is not None and getattr(server, "impl", None) is not None:
            out[name] = server
    return out


def _suspend(timeout: float, what: str) -> None:
    if not BARRIER.acquire_write(timeout):
        raise ReloadFailed(
            f"{what} failed at step 'suspend': actors still busy after {timeout}s; "
            "nothing was changed",
            step="suspend",
        )


def take(*, allow_pickle: bool, suspend_timeout: float = 5.0) -> dict[str, Any]:
    """``{"ok": True, "taken_at", "actors": {name: {"module", "class", "vsn", "state" |
    "pickled"}}}``, or ``{"ok": False, "error"}`` naming the actors whose state is
    neither plain data nor, when ``allow_pickle``, picklable, or the actors that
    stayed busy past ``suspend_timeout`` (nothing is taken then).
    """
    try:
        _suspend(suspend_timeout, "snapshot")
    except ReloadFailed as exc:
        return {"ok": False, "error": str(exc).replace("; nothing was changed", "")}
    actors: dict[str, Any] = {}
    problems: list[str] = []
    try:
        for name, server in _servers().items():
            cls = server.impl_cls
            entry: dict[str, Any] = {"module": cls.__module__, "class": cls.__qualname__,
                                     "vsn": cls.vsn}
            try:
                # Encoded now, while the actor is held: a copy it cannot mutate later.
                entry["state"] = _PLAIN.decode(_PLAIN.encode(server.state))
            except Exception as plain_exc:
                if not allow_pickle:
                    problems.append(f"{name} ({plain_exc})")
                    continue
                try:
                    entry["pickled"] = pickle.dumps(server.state, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as exc:
                    problems.append(f"{name} (not plain data, and {type(exc).__name__}: {exc})")
                    continue
            actors[name] = entry
    finally:
        BARRIER.release_write()
    if problems:
        how = "plain data or picklable" if allow_pickle else (
            "plain data (this sandbox's profile does not allow pickle)")
        return {"ok": False, "error": (
            f"cannot snapshot the state of actor {', '.join(problems)}: a state must be {how}; "
            "keep such objects out of the state, or rebuild them in code_change")}
    return {"ok": True, "taken_at": time.time(), "actors": actors}


def put_back(
    actors: Mapping[str, Mapping[str, Any]],
    *,
    allow_pickle: bool,
    extra: Any = None,
    suspend_timeout: float = 5.0,
) -> dict[str, Any]:
    """Restore the states of ``actors`` (as :func:`take` returns them), all or nothing.

    Returns ``{"actors": n, "migrated": [names whose vsn differed], "warnings": [...]}``.
    """
    _suspend(suspend_timeout, "restore")
    step, actor = "resolve", None
    staged: list[tuple[Any, Any]] = []
    migrated: list[str] = []
    warnings: list[str] = []
    try:
        try:
            running = _servers()
            for actor, entry in actors.items():
                step = "resolve"
                server = running.get(actor)
                if server is None:
                    raise LookupError(
                        f"actor {actor!r} of the snapshot is not running here "
                        f"(running: {', '.join(sorted(running)) or 'none'})"
                    )
                cls = server.impl_cls
                if (entry.get("module"), entry.get("class")) != (cls.__module__, cls.__qualname__):
                    raise LookupError(
                        f"actor {actor!r} runs {cls.__module__}.{cls.__qualname__}, the snapshot "
                        f"holds a state of {entry.get('module')}.{entry.get('class')}"
                    )
                step = "restore"
                if "pickled" in entry:
                    if not allow_pickle:
                        raise PermissionError(
                            "the snapshot holds a pickled state and this sandbox's profile "
                            "does not allow pickle"
                        )
                    state = pickle.loads(entry["pickled"])
                else:
                    state = entry.get("state")
                old = state
                if entry.get("vsn") != cls.vsn:
                    step = "code_change"
                    state = server.impl.code_change(entry.get("vsn"), state, extra)
                    migrated.append(actor)
                step = "check_state"
                if declares_shape(cls):
                    check_state(server.impl, state, actor)
                elif actor in migrated:
                    warnings += shape_warnings(actor, old, state)
                staged.append((server, state))
        except Exception as exc:
            raise ReloadFailed(
                f"restore failed at step {step!r} for actor {actor}: {type(exc).__name__}: "
                f"{exc}; every actor keeps its current state",
                step=step,
            ) from exc
        for server, state in staged:
            server.state = state
    finally:
        BARRIER.release_write()
    return {"actors": len(staged), "migrated": migrated, "warnings": warnings}
