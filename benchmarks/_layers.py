"""What each containment layer costs a sandbox's start, per security profile.

:func:`layer_costs` forks a child from the project's fork server (as a sandbox is),
which applies one profile's isolation plan and installs its guard exactly as a
sandbox's boot does (:func:`runtime.child.isolation.apply`,
:func:`runtime.child.guard.install_guard`) and reports how long each step took.
The child then exits: the layers (a seccomp filter, a UID) are for good.

:func:`cgroup_join` times one way of joining a sandbox's cgroups in such a child: as
the boot does (:func:`runtime.child.isolation._join_cgroup`), or by writing the
pid to ``cgroup.procs`` (how it was done before).

Steps: ``cgroups`` (joining the sandbox's cgroups), ``namespaces`` (network, IPC and
mount namespaces, loopback up, the private mount view; the network namespace is
one the fork server made ahead, entered before the child runs, unless its pool
was empty: :mod:`runtime.child.netns`), ``seccomp`` (loading the filter the fork
server built), ``rlimits``, ``privileges`` (no_new_privs, the sandbox's UID,
not dumpable, the rest of ``apply``), ``guard`` (the audit hook of the profile).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

__all__ = ["STEPS", "cgroup_join", "layer_costs"]

STEPS = ("cgroups", "namespaces", "seccomp", "rlimits", "privileges", "guard")


def _timed(into: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[key] = into.get(key, 0.0) + (time.perf_counter() - t0) * 1000

    return run


def _child(sock: socket.socket, plan: dict[str, Any], guard: dict[str, Any] | None) -> None:
    """In the forked child: apply the layers as a sandbox's boot does, timing each."""
    from runtime.child import guard as _guard
    from runtime.child import isolation

    took: dict[str, float] = {}
    # Wrapped here, in this throw-away child only.
    isolation._join_cgroup = _timed(took, "cgroups", isolation._join_cgroup)  # type: ignore[attr-defined]
    isolation._namespaces = _timed(took, "namespaces", isolation._namespaces)  # type: ignore[attr-defined]
    isolation._seccomp.install = _timed(took, "seccomp", isolation._seccomp.install)  # type: ignore[attr-defined]
    isolation._rlimits = _timed(took, "rlimits", isolation._rlimits)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    applied, _skipped = isolation.apply(plan)
    total = (time.perf_counter() - t0) * 1000
    took["privileges"] = total - sum(took.values())
    if guard is not None:
        t0 = time.perf_counter()
        _guard.install_guard(guard)
        took["guard"] = (time.perf_counter() - t0) * 1000
    sock.sendall(json.dumps({"took": took, "applied": applied}).encode())
    sock.close()


def layer_costs(profile_name: str, app: str) -> dict[str, Any]:
    """One child with ``profile_name``'s layers (``"none"``: a plan and guard of None,
    as a start without containment); returns ``{"took": {step: ms}, "applied": [...]}``."""
    from actors.profiles import BUILTIN_PROFILES
    from runtime.child import isolation
    from runtime.host import forkserver

    base = tempfile.mkdtemp(prefix="bench-layers-")
    workdir = tempfile.mkdtemp(dir=base)
    state: dict[str, Any] | None = None
    plan: dict[str, Any] = {}
    guard = None
    if profile_name != "none":
        profile = BUILTIN_PROFILES[profile_name]
        state = isolation.prepare(workdir, f"layers-{os.getpid()}", group=os.path.basename(base))
        plan = isolation.plan(allow=profile.allow, limits=profile.limits.as_dict(), state=state,
                              env_allow=profile.env_allow, read_only=[app])
        guard = profile.guard_policy(workdir, app)
    mine, theirs = socket.socketpair()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        # As a sandbox's start asks (runtime.host.process): a user namespace where the
        # host is not root, a network namespace from the fork server's pool.
        child = forkserver.spawn(_child, (plan, guard), fds=(theirs.fileno(), null, null),
                                 userns=bool(plan.get("userns")), netns=bool(plan.get("netns_pool")))
        theirs.close()
        data = b""
        while chunk := mine.recv(65536):
            data += chunk
        if wait([child.sentinel], 10):  # it exits once it has answered
            child.close()
    finally:
        os.close(null)
        mine.close()
        if state is not None:
            isolation.release(state)
            isolation.release_group(os.path.basename(base))
        shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = json.loads(data) if data else {"took": {}, "applied": []}
    return result


def _join_child(sock: socket.socket, dirs: list[str], how: str) -> None:
    from runtime.child import isolation

    t0 = time.perf_counter()
    for d in dirs:
        if how == "procs":
            with open(os.path.join(d, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        else:
            isolation._join_cgroup(d)
    sock.sendall(json.dumps((time.perf_counter() - t0) * 1000).encode())
    sock.close()


def cgroup_join(how: str) -> float | None:
    """Milliseconds a fresh fork server child takes to join a new sandbox's cgroups,
    ``how`` = ``"boot"`` (as a sandbox's boot does) or ``"procs"`` (its pid written
    to ``cgroup.procs``); None where this host gives sandboxes no cgroups."""
    from runtime.child import isolation
    from runtime.host import forkserver

    base = tempfile.mkdtemp(prefix="bench-join-")
    group = os.path.basename(base)
    state = isolation.prepare(tempfile.mkdtemp(dir=base), f"join-{os.getpid()}", group=group)
    dirs = sorted((state.get("cgroups") or {}).values())
    mine, theirs = socket.socketpair()
    null = os.open(os.devnull, os.O_WRONLY)
    data = b""
    try:
        if dirs:
            child = forkserver.spawn(_join_child, (dirs, how), fds=(theirs.fileno(), null, null))
            theirs.close()
            while chunk := mine.recv(65536):
                data += chunk
            if wait([child.sentinel], 10):
                child.close()
    finally:
        os.close(null)
        mine.close()
        isolation.release(state)
        isolation.release_group(group)
        shutil.rmtree(base, ignore_errors=True)
    return float(json.loads(data)) if data else None
