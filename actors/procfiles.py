"""``/proc/<pid>/...`` files kept open and re-read in place, for a sampler that reads
the same few files of the same processes every second.

Opening a ``/proc`` path costs a lookup of the process directory and a file
object in the kernel; ``pread`` at offset 0 on a descriptor kept open generates the
same content again, in one system call instead of three (open, read, close).
The resource monitor reads two files per sandbox a tick, so at 1,000 sandboxes
this is 4,000 system calls a second fewer.

A descriptor stays bound to the process it was opened for: once that process is
gone, reading it fails (``ESRCH``) even if its pid was reused, and the descriptor
is closed. :meth:`ProcFiles.keep_only` closes those of processes no longer
sampled; :meth:`ProcFiles.close` all of them.

>>> files = ProcFiles()
>>> files.read(os.getpid(), "stat").startswith(str(os.getpid()).encode())
True
>>> files.open_count()
1
>>> files.keep_only(set())
>>> files.open_count()
0
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Collection

__all__ = ["ProcFiles"]

_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _close_all(fds: dict[tuple[int, str], int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class ProcFiles:
    """Open ``/proc/<pid>/<name>`` files, read with ``pread``.

    Not thread-safe: one thread at a time uses it (the monitor's ticks hold a lock;
    a lock per read would cost a tenth of the read). The descriptors are closed by :meth:`close`, by :meth:`keep_only` for processes
    left out, and, should the owner never call either (a killed actor), when this
    object is garbage collected.
    """

    def __init__(self) -> None:
        self._fds: dict[tuple[int, str], int] = {}
        weakref.finalize(self, _close_all, self._fds)

    def read(self, pid: int, name: str) -> bytes:
        """The whole content of ``/proc/<pid>/<name>``; OSError if the process is gone.

        >>> ProcFiles().read(os.getpid(), "status").startswith(b"Name:")
        True
        """
        key = (pid, name)
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(f"/proc/{pid}/{name}", _FLAGS)
        try:
            data = os.pread(fd, 65536, 0)
            if len(data) >= 4000:  # procfs hands out about a page per read
                chunks = [data]
                while chunk := os.pread(fd, 65536, sum(map(len, chunks))):
                    chunks.append(chunk)
                data = b"".join(chunks)
        except OSError:
            del self._fds[key]
            os.close(fd)
            raise
        return data

    def keep_only(self, pids: Collection[int]) -> None:
        """Close the files of every process not in ``pids``."""
        for key in [k for k in self._fds if k[0] not in pids]:
            os.close(self._fds.pop(key))

    def open_count(self) -> int:
        """How many descriptors are open."""
        return len(self._fds)

    def close(self) -> None:
        """Close every descriptor (it can be used again: files reopen on demand)."""
        _close_all(self._fds)
