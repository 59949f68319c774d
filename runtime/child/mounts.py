"""The sandbox's view of the file system, in its own mount namespace.

:func:`private_view` runs in the sandbox process, as root, right after
``unshare(CLONE_NEWNS)`` (:func:`runtime.child.isolation.apply`): every mount
becomes read-only, :data:`PRIVATE_TMP` get empty tmpfs of the sandbox's own (what
it leaves there ends with its namespace), and the workdir (read-write), the app
directory and hidden parts of the Python installation (read-only) are bound back;
for a host that is not root, the directories :func:`runtime.child.isolation.hidden_for_userns`
names are hidden the same way and the sandbox's pid namespace gets its own ``/proc``.
Plain ``mount(2)`` calls through ctypes: Python 3.11's ``os`` has no ``mount``.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["HOSTS_DIR", "PRIVATE_TMP", "TMPFS_OPTIONS", "private_view"]

#: Directories every sandbox gets as its own empty tmpfs (the host's stay unseen):
#: what it leaves there ends with its mount namespace, so the next sandbox with the
#: same UID never finds it.
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
#: Where the sandbox's /etc/hosts is kept (bound read-only on /etc/hosts); root
#: may rewrite it in place when the allowlist's names resolve anew (egress.py).
HOSTS_DIR = os.path.join(PRIVATE_TMP[0], ".sandbox-etc")
#: Size of each private tmpfs (its pages count against the sandbox's memory cgroup).
TMPFS_OPTIONS = "mode=1777,size=64m,nr_inodes=16384"

_SYS_MOUNT_SETATTR, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, 0x8000, 0x1
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
#: mount_setattr's ``struct mount_attr`` (attr_set, attr_clr, propagation, userns_fd),
#: read by the kernel only: made once here, in the fork server that preloads this
#: module, rather than in each sandbox (a ctypes array type and its instance).
_RDONLY_ATTR = (ctypes.c_uint64 * 4)(_MOUNT_ATTR_RDONLY, 0, 0, 0)


def private_view(
    libc: Any, mounts: dict[str, Any], expose: list[Any], hosts: str | None = None
) -> None:
    """The sandbox's mount namespace (just unshared): the host's tree read-only, private tmpfs on
    :data:`PRIVATE_TMP`, the workdir bound back read-write, ``read_only`` paths
    (and the hidden parts of the Python installation, ``expose``) bound back
    read-only. Paths are opened before anything is hidden, so a workdir that
    lives under ``/tmp`` is found again under the private ``/tmp``.

    In a sandbox process, as root, after ``unshare(CLONE_NEWNS)``::

        private_view(libc, {"workdir": "/srv/sb/s1-x", "tmpfs": list(PRIVATE_TMP),
                            "read_only": ["/srv/apps/counter"]}, expose=[])
    """

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    # Nothing done here may propagate back to the host's mounts.
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    wd = mounts.get("workdir")
    keep: list[tuple[str, int, bool]] = []  # (path, O_PATH fd, writable)
    exposed: dict[str, int] = {}
    try:
        for _hidden, paths in expose:
            for q in paths:
                exposed[q] = os.open(q, os.O_PATH | os.O_DIRECTORY)
        if wd:
            keep.append((wd, os.open(wd, os.O_PATH | os.O_DIRECTORY), True))
        for q in mounts.get("read_only") or ():
            keep.append((q, os.open(q, os.O_PATH | os.O_DIRECTORY), False))
        if mounts:
            _read_only_tree(libc, check)
            for d in mounts.get("tmpfs") or ():
                if os.path.isdir(d):
                    opts = str(mounts.get("tmpfs_options") or TMPFS_OPTIONS).encode()
                    check(
                        libc.mount(b"tmpfs", d.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts),
                        f"tmpfs on {d}",
                    )
        # Hidden directories first, then the read-only trees (an app under a
        # hidden home is bound back), then hidden directories inside those trees
        # (a home or base_dir inside a checkout bound back from the private /tmp
        # stays hidden), then the workdir: it may sit under any of them.
        ro = [k[0] for k in keep if not k[2]]
        inner = [e for e in expose if _under(e[0], ro)]
        _expose(libc, check, [e for e in expose if e not in inner], exposed)
        for q, fd, writable in keep:
            if not writable:
                _bind(libc, check, fd, q, writable)
        _expose(libc, check, inner, exposed)
        for q, fd, writable in keep:
            if writable:
                _bind(libc, check, fd, q, writable)
        if mounts:
            if hosts is not None:  # the allowlist's names, resolved before unshare
                # Kept in the private /tmp, in a directory of root's (the sandbox's
                # UID can read the file, not change it).
                os.makedirs(HOSTS_DIR, mode=0o755, exist_ok=True)
                src = os.path.join(HOSTS_DIR, "hosts")
                with open(src, "w", encoding="utf-8") as fh:
                    fh.write(hosts)
                os.chmod(src, 0o444)
                check(libc.mount(src.encode(), b"/etc/hosts", None, _MS_BIND, None),
                      "bind /etc/hosts")
                check(libc.mount(None, b"/etc/hosts", None,
                                 _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None),
                      "read-only /etc/hosts")
        if expose:
            _seal_exposed(libc, check, expose)
        if mounts.get("proc"):
            # Its own pid namespace's /proc (a host that is not root,
            # runtime.child.userns): the host's processes are not even listed.
            # Last: the binds above go through /proc/self/fd.
            check(libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None),
                  "proc on /proc")
    finally:
        for fd in [k[1] for k in keep] + list(exposed.values()):
            os.close(fd)


def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _mkdirs(path: str, mode: int = 0o755) -> None:
    """``os.makedirs(path, mode, exist_ok=True)``, for an absolute ``path`` (a relative
    one goes to ``os.makedirs``) with one ``mkdir`` per component, from the top, an
    existing one passed over (``EEXIST`` comes before a read-only mount's ``EROFS``);
    parents get the default mode, the last component ``mode``. Where a mount point
    is made inside a fresh tmpfs, ``os.makedirs`` looked at each missing parent
    first (a ``stat`` and a Python call each): a sandbox's whole mount view took
    0.64 ms of CPU with it, 0.57 ms this way (medians of 124 ``high`` sandboxes,
    alternated)."""
    if not path.startswith("/"):
        os.makedirs(path, mode=mode, exist_ok=True)
        return
    parts = path.rstrip("/").split("/")
    last = len(parts)
    for i in range(2, last + 1):  # "/" itself (parts [""]) always exists
        try:
            os.mkdir("/".join(parts[:i]), mode if i == last else 0o777)
        except FileExistsError:
            if i == last and not os.path.isdir(path):
                raise  # as makedirs: something else is in the way


def _bind(libc: Any, check: Any, fd: int, target: str, writable: bool) -> None:
    _mkdirs(target)  # inside a fresh tmpfs, if hidden
    src = f"/proc/self/fd/{fd}".encode()
    check(libc.mount(src, target.encode(), None, _MS_BIND | _MS_REC, None), f"bind {target}")
    flags = _MS_BIND | _MS_REMOUNT | _MS_NOSUID | _MS_NODEV | (0 if writable else _MS_RDONLY)
    check(libc.mount(None, target.encode(), None, flags, None), f"remount {target}")


def _read_only_tree(libc: Any, check: Any) -> None:
    """Every mount of the (private) tree read-only, at once (mount_setattr, Linux
    5.12+), else one mount point at a time from /proc/self/mountinfo."""
    attr = _RDONLY_ATTR
    rc = libc.syscall(
        _SYS_MOUNT_SETATTR, ctypes.c_int(-100), b"/", ctypes.c_uint(_AT_RECURSIVE),
        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if rc == 0:
        return
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        points = [line.split()[4] for line in fh]
    for mp in points:
        path = mp.encode().decode("unicode_escape").encode()  # \040 for spaces
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY
        if libc.mount(None, path, None, flags, None) != 0:
            # Locked flags (nosuid, nodev) must be kept; retry with them.
            check(libc.mount(None, path, None, flags | _MS_NOSUID | _MS_NODEV, None),
                  f"read-only {mp}")


def _expose(libc: Any, check: Any, expose: list[Any], fds: dict[str, int]) -> None:
    """In the sandbox's mount namespace, each hidden directory becomes an empty
    read-only tmpfs with only the given trees bound back in (read-only); ``fds``
    holds an O_PATH descriptor of each tree, opened before anything was hidden."""
    flags = _MS_NOSUID | _MS_NODEV
    for hidden, paths in expose:
        _mkdirs(hidden)  # under a private tmpfs, maybe
        check(
            libc.mount(b"tmpfs", hidden.encode(), b"tmpfs", flags, b"mode=0755,size=64k"),
            f"tmpfs on {hidden}",
        )
        for q in paths:
            _bind(libc, check, fds[q], q, writable=False)


def _seal_exposed(libc: Any, check: Any, expose: list[Any]) -> None:
    """The hidden directories' tmpfs read-only (after everything is bound into them)."""
    flags = _MS_NOSUID | _MS_NODEV
    for hidden, _paths in expose:
        check(
            libc.mount(None, hidden.encode(), None, _MS_REMOUNT | _MS_RDONLY | flags, None),
            f"read-only {hidden}",
        )
