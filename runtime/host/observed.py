"""Which isolation layers a sandbox process really has, read by the host from /proc.

A sandbox's ``ready`` frame says which layers it applied; that is its own word.
:func:`observe` derives the same facts from outside: its namespaces against the
host's, its uid, ``NoNewPrivs`` and ``Seccomp`` in ``/proc/PID/status``, its
``/proc`` entries being root's (not dumpable), its rlimits against the host's,
and its cgroups against the host's. What cannot be seen from outside (the audit
hook) is left to :func:`layers`, which keeps such a claim only when the host asked
for that layer.

>>> "netns" in observe(os.getpid())
False
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["UNOBSERVABLE", "layers", "observe"]

#: Layers that leave no trace the host can read: only the host's own request and
#: the sandbox's confirmation stand for them.
UNOBSERVABLE = frozenset({"audit-hook", "nftables"})

_NAMESPACES = {"userns": "user", "netns": "net", "mountns": "mnt", "ipcns": "ipc", "pidns": "pid", "utsns": "uts"}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def _cgroups(pid: int | str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (_read(f"/proc/{pid}/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctl in parts[1].split(",") if parts[1] else [""]:
                out[ctl] = parts[2]
    return out


def _limits(pid: int | str) -> list[str]:
    return [line for line in (_read(f"/proc/{pid}/limits") or "").splitlines()[1:]]


def observe(pid: int) -> set[str]:
    """The layers process ``pid`` visibly has (empty if it is gone or unreadable).

    >>> observe(os.getpid()) & {"uid", "netns", "mountns"}
    set()
    """
    found: set[str] = set()
    for layer, ns in _NAMESPACES.items():
        try:
            if os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino:
                found.add(layer)
        except OSError:
            pass
    status = _status(pid)
    if not status:
        return set()
    if "netns" in found:
        devices = (_read(f"/proc/{pid}/net/dev") or "").splitlines()[2:]
        if any(line.split(":")[0].strip() == "tap0" for line in devices):
            found.add("slirp4netns")  # its tap device, in the sandbox's own namespace
    uids = status.get("Uid", "").split()
    if uids and uids[0] != str(os.getuid()):
        found.add("uid")
        try:
            # A non-dumpable process's /proc entries belong to root, not to its uid.
            if os.stat(f"/proc/{pid}/environ").st_uid != int(uids[0]):
                found.add("no_dumpable")
        except OSError:
            pass
    if status.get("NoNewPrivs") == "1":
        found.add("no_new_privs")
    if status.get("Seccomp", "0") not in ("0", ""):
        found.add("seccomp")
    if _limits(pid) != _limits("self"):
        found.add("rlimits")
    mine, theirs = _cgroups("self"), _cgroups(pid)
    for ctl in ("pids", "memory"):
        key = ctl if ctl in theirs else ""
        if key in theirs and theirs[key] != mine.get(key):
            found.add(f"cgroup-{ctl}")
    return found


def layers(pid: int, claimed: Iterable[str], requested: Iterable[str]) -> list[str]:
    """The layers to show for ``pid``: what the host observes, plus the claims of
    unobservable layers the host itself requested; in the order claimed, then
    the rest sorted.

    >>> layers(os.getpid(), ["netns", "audit-hook"], ["audit-hook"])
    ['audit-hook']
    """
    seen = observe(pid) | (set(claimed) & set(requested) & UNOBSERVABLE)
    ordered = [layer for layer in claimed if layer in seen]
    return ordered + sorted(seen - set(ordered))
