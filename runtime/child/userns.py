"""The sandbox's own user and pid namespace, for a host that is not root.

A host running as root gives each sandbox its own UID and makes the namespaces
directly. An ordinary user cannot do either, but it can create an unprivileged
**user namespace** (what rootless containers use) and, inside it, every other
namespace: the same mount, IPC and network layers as the root path. All the
sandboxes of such a host run as the host's own UID (mapped to 0 inside, with
every capability dropped once the layers are in place), so what keeps one
sandbox from another and from the host is not the UID but the namespaces: a
**pid namespace** per sandbox (it can neither see nor signal a process outside
it), a mount view in which other workdirs, the host user's home and runtime
directory are empty, and the seccomp filter (no ``ptrace``).

The namespaces are made by the fork server (:func:`spawn` in the process it
forked for the request), because a pid namespace takes effect only for the
children of the process that made it:

1. ``S`` (forked by the fork server) calls ``unshare(CLONE_NEWUSER |
   CLONE_NEWPID)`` and maps the host's UID and GID to 0;
2. ``S`` forks the namespace's init (pid 1, :func:`_init`: it reaps orphans and
   ends, ending the namespace and everything in it, when the sandbox ends) and
   then the sandbox process itself (pid 2, an ordinary process for signals:
   SIGXCPU and SIGXFSZ end it as they do on the root path);
3. ``S`` reports the sandbox's pid (as the fork server sees it) and exits; the
   fork server, a child subreaper, inherits both and waits for the sandbox as for
   any other child.

The sandbox then applies the usual layers (:func:`runtime.child.isolation.apply`),
mounts a ``/proc`` of its pid namespace, and drops its capabilities
(:func:`drop_capabilities`) before the seccomp filter.

>>> unavailable() is None or isinstance(unavailable(), str)
True
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from runtime.child.libc import check as _check
from runtime.child.libc import libc as _libc

__all__ = [
    "SETTINGS",
    "SYSCTL",
    "drop_capabilities",
    "enter",
    "needed",
    "spawn",
    "unavailable",
]

CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
_PR_CAPBSET_DROP, _PR_SET_CHILD_SUBREAPER, _PR_CAP_AMBIENT = 24, 36, 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: Where the kernel's settings are read.
SYSCTL = "/proc/sys"
#: Kernel settings that forbid unprivileged user namespaces: (file under
#: :data:`SYSCTL`, the value that forbids them, what to run instead).
SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1",
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile "
     "that allows userns for this Python"),
)

# Run in a fresh interpreter by unavailable(): the whole sequence a sandbox needs
# (user + pid namespace, the uid map, a mount namespace, a tmpfs), so a host whose
# kernel lets unshare succeed but then refuses the rest (Ubuntu's AppArmor
# restriction) is found out too.
_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(rc, what):
    if rc != 0:
        sys.exit(f"{what}: {os.strerror(ctypes.get_errno())}")
uid, gid = os.getuid(), os.getgid()
check(libc.unshare(0x10000000 | 0x20000000 | 0x00020000), "unshare(CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNS)")
for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
    with open(f"/proc/self/{name}", "w") as fh:
        fh.write(text)
check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None), "making / private")
check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, b"size=64k"), "tmpfs in the namespace")
"""

_unavailable: list[str | None] = []


def needed() -> bool:
    """Whether sandboxes of this host go into a user namespace (the host is not root).

    >>> needed() == (os.geteuid() != 0)
    True
    """
    return sys.platform.startswith("linux") and os.geteuid() != 0


def unavailable() -> str | None:
    """Why this (non-root) host cannot give a sandbox its user namespace, naming the
    kernel setting and what to change; None when it can. Probed once per process
    in a fresh interpreter (the host has threads: it must not fork itself).

    >>> unavailable() is None or "namespace" in unavailable()
    True
    """
    if _unavailable:
        return _unavailable[0]
    why: str | None = None
    forbidding = []
    for name, bad, fix in SETTINGS:
        try:
            with open(os.path.join(SYSCTL, name), encoding="ascii") as fh:
                if fh.read().strip() == bad:
                    forbidding.append(f"{name.replace('/', '.')}={bad} ({fix})")
        except OSError:
            pass
    try:
        probe = subprocess.run([sys.executable, "-I", "-c", _PROBE], capture_output=True,
                               text=True, timeout=30, env={})
        failed = probe.returncode != 0
        detail = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        failed, detail = True, f"the probe could not run: {exc}"
    if failed or forbidding:
        setting = "; ".join(forbidding) if forbidding else (
            "no known sysctl forbids them here: a seccomp policy of the container "
            "or a security module may (with Docker, --security-opt seccomp=unconfined)")
        why = (f"this host is not root and cannot create an unprivileged user namespace "
               f"({detail}): {setting}; or run the host as root")
    _unavailable.append(why)
    return why


def enter() -> None:
    """Move this (single-threaded) process into a new user and pid namespace, the
    host's UID and GID mapped to 0; its next child is the pid namespace's init.

    In the process the fork server forked for a sandbox::

        enter()
        init = os.fork()   # pid 1 of the new namespace
    """
    uid, gid = os.getuid(), os.getgid()
    _check(_libc().unshare(CLONE_NEWUSER | CLONE_NEWPID), "unshare(CLONE_NEWUSER|CLONE_NEWPID)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as fh:
            fh.write(text)


def drop_capabilities() -> None:
    """Drop every capability (bounding, ambient, effective, permitted, inheritable):
    the sandbox is uid 0 of its user namespace but may do nothing root may.

    Called by :func:`runtime.child.isolation.apply` after the namespaces are set up::

        drop_capabilities()
    """
    import ctypes

    libc = _libc()
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as fh:
            last = int(fh.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        _check(libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0), f"dropping capability {cap}")
    libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all 0
    _check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def spawn(child: Callable[[], object]) -> int:
    """In the fork server: fork ``child`` (which must never return: it ends with
    ``os._exit``) as pid 2 of a new user and pid namespace; returns its pid (as
    the fork server sees it).

    Raises OSError when the namespace cannot be made. The fork server must be a
    child subreaper (it is made one here) so both processes become its children.

        pid = spawn(lambda: _child(fds, body))
    """
    import ctypes
    import struct

    _libc().prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0)
    r, w = os.pipe()
    s = os.fork()
    if s == 0:  # S: makes the namespace, forks its init and the sandbox, reports, exits
        code = 1
        try:
            os.close(r)
            try:
                enter()
            except OSError as exc:
                os.write(w, struct.pack("q", -(exc.errno or 1)))
                raise
            go_r, go_w = os.pipe()
            if os.fork() == 0:
                _init(go_r)
            os.close(go_r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.close(go_w)
                child()  # ends the process itself
            os.write(go_w, b"1")
            os.write(w, struct.pack("q", pid))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = b""
        while len(data) < 8:
            more = os.read(r, 8 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(r)
        os.waitpid(s, 0)
    if len(data) != 8:
        raise OSError(1, "the namespace set-up process died")
    (pid,) = struct.unpack("q", data)
    if pid < 0:
        raise OSError(-pid, f"cannot create the sandbox's user namespace: {os.strerror(-pid)}")
    return pid


def _init(go: int) -> NoReturn:
    """pid 1 of a sandbox's pid namespace: reap orphans until the sandbox (pid 2)
    ends, then end, which makes the kernel kill whatever is left in the namespace."""
    import select
    import signal

    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.dup2(go, 3)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        if os.read(3, 1) != b"1":  # S died before the sandbox was forked
            os._exit(0)
        os.close(3)
        sandbox = os.pidfd_open(2)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        while True:
            ready, _, _ = select.select([sandbox, wake_r], [], [])
            if wake_r in ready:
                os.read(wake_r, 512)
            while True:
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
            if sandbox in ready:
                break
    except BaseException:
        pass
    os._exit(0)
