"""Finding the processes of sandbox UIDs (host side, at destroy): shared ``/proc`` passes.

A destroy kills whatever runs under the sandbox's UID outside its cgroups: what
an earlier process of the sandbox that never joined them left (its own processes
are born in its cgroups and cannot leave them). The only way to find such a
process is a pass over ``/proc``: one ``stat`` per process on the machine, ~2.5 us
each, all releasing and taking the GIL. Destroys side by side would each make
their own pass, and every pass sees every live sandbox: a batch of N costs N
passes over ~N processes. Here one pass serves many:

- a request joins the pass not started yet (and waits while the pass before it
  runs), so it gets a pass that started after it asked;
- a pass notes every UID's processes and when it started, so a later request
  that only needs a pass started after some moment (:meth:`UidScans.since`:
  after the sandbox's process started, when every process its UID may have
  outside the cgroups existed already) takes the last one.

>>> os.getpid() in pids_by_uid()[os.geteuid()]
True
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

__all__ = ["UidScans", "now_ticks", "pids_by_uid", "start_ticks"]

_TICKS = os.sysconf("SC_CLK_TCK")


def now_ticks() -> int:
    """Clock ticks since boot, the clock of ``/proc/<pid>/stat``'s start time."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS)


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)  # the whole line: a comm is at most 64 bytes
        finally:
            os.close(fd)
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pids_by_uid() -> dict[int, list[int]]:
    """One pass over ``/proc``: every process's pid by the owner of
    ``/proc/<pid>`` (its effective UID)."""
    found: dict[int, list[int]] = {}
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(fd):
            if not name.isdigit():
                continue
            try:
                uid = os.stat(name, dir_fd=fd).st_uid
            except OSError:  # exited meanwhile
                continue
            found.setdefault(uid, []).append(int(name))
    finally:
        os.close(fd)
    return found


class _Pass:
    __slots__ = ("started", "found", "done", "error")

    def __init__(self) -> None:
        self.started = 0
        self.found: dict[int, list[int]] = {}
        self.done = False
        self.error: BaseException | None = None


class UidScans:
    """Passes over ``/proc``, one at a time, on the thread of one of the requests
    that joined each (no thread of its own)."""

    def __init__(self, scan: Callable[[], dict[int, list[int]]] = pids_by_uid) -> None:
        self._scan = scan
        self._lock = threading.Lock()  # guards _open and _last
        self._running = threading.Lock()  # held by the thread running a pass
        self._open = _Pass()  # the pass not started yet: new requests join it
        self._last: _Pass | None = None  # the last pass that finished

    def pids(self, uid: int) -> list[int]:
        """The pids under ``uid`` seen by a pass that started after this call."""
        with self._lock:
            mine = self._open
        with self._running:
            if not mine.done:
                with self._lock:  # from here, requests join the next pass
                    self._open = _Pass()
                mine.started = now_ticks()
                try:
                    mine.found = self._scan()
                except BaseException as exc:  # every request of this pass raises it
                    mine.error = exc
                mine.done = True
                if mine.error is None:
                    with self._lock:
                        self._last = mine
        if mine.error is not None:
            raise mine.error
        return list(mine.found.get(uid, ()))

    def since(self, uid: int, ticks: int) -> list[int]:
        """The pids under ``uid`` seen by a pass that started after boot tick
        ``ticks`` (strictly: the ticks are coarse): the last one if it did."""
        with self._lock:
            last = self._last
        if last is not None and last.started > ticks:
            return list(last.found.get(uid, ()))
        return self.pids(uid)
