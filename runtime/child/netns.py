"""Fresh network namespaces made ahead of time by the fork server, one per sandbox.

A new network namespace and bringing its loopback up cost a sandbox's start
0.6-1.5 ms of kernel work (``unshare(CLONE_NEWNET)`` plus the ``SIOCSIFFLAGS``
ioctl, measured in a fork server child on a 2-vCPU VM), the largest part of the
namespaces step. The fork server makes a few of them while it has nothing else
to do (:class:`Pool`, topped up between requests, never ahead of one) and hands
one to each sandbox that asks: the forked child enters it (``setns``, ~0.05 ms)
before anything else runs, and the server closes its own descriptor, so the
child holds the only reference. A namespace is never handed out twice, nor to
anything but one sandbox: isolation between neighbours stays what it was.

When the pool is empty (a burst of starts) the sandbox makes its own
namespace, as before (:func:`runtime.child.isolation.apply`, told by
:data:`entered`). Not for a sandbox with an egress allowlist (slirp4netns joins
the namespace the sandbox makes) nor in a user namespace (which must own it). The host's own network namespace is never entered or
changed by the sandbox; the server steps into each new namespace only to bring
its loopback up, and back.

>>> Pool(size=0).wanted()
False
"""

from __future__ import annotations

import os

from runtime.child.libc import check as _check
from runtime.child.libc import libc as _libc

__all__ = ["CLONE_NEWNET", "POOL_SIZE", "Pool", "enter", "entered", "loopback_up"]

CLONE_NEWNET = 0x40000000
#: Namespaces the fork server keeps ready: the first wave of a burst (``batch_create``
#: starts 8 at once); the rest of a burst make their own, in parallel. Each costs the
#: kernel ~140 KiB while it waits (slab, measured over 50).
POOL_SIZE = 8
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1

def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (a new one has it down)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


#: True in a sandbox process that entered a namespace of the pool (:func:`enter`):
#: :func:`runtime.child.isolation.apply` then makes none of its own.
entered = False


def enter(fd: int) -> None:
    """Move this (single-threaded, just forked) process into the pool's network
    namespace ``fd`` names."""
    global entered
    _check(_libc().setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")
    entered = True


class Pool:
    """The fork server's ready namespaces (descriptors), made by :meth:`top_up`."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._fds: list[int] = []
        #: Why namespaces cannot be made here (not root, say): the pool stays empty.
        self.broken: str | None = None

    def wanted(self) -> bool:
        """Whether :meth:`top_up` would make one."""
        return self.broken is None and len(self._fds) < self.size

    def top_up(self) -> None:
        """Make one namespace, loopback up, and keep it; the caller stays in its own."""
        if not self.wanted():
            return
        try:
            own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # no /proc here: every sandbox makes its own
            self.broken = str(exc)
            return
        try:
            if _libc().unshare(CLONE_NEWNET) != 0:
                import ctypes

                self.broken = f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}"
                return
            try:
                loopback_up()
                self._fds.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                self.broken = str(exc)
            finally:
                if _libc().setns(own, CLONE_NEWNET) != 0:
                    # Never fork a sandbox from a namespace that is not the host's: the
                    # server ends, the host starts a new one (runtime.host.forkserver).
                    os._exit(70)
        finally:
            os.close(own)

    def take(self) -> int | None:
        """One namespace's descriptor (the caller closes it once the child has it),
        or None if none is ready."""
        return self._fds.pop() if self._fds else None

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
