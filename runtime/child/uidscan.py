"""Finding the processes of sandbox UIDs (host side, at destroy): shared ``/proc`` passes.

A destroy kills whatever still runs under the sandbox's UID, including processes
that left its process group and its cgroups. The only way to find them is a pass
over ``/proc`` (one ``stat`` per process on the machine, ~2.5 us each). Destroys
side by side would each make their own pass, and every pass sees every live
sandbox: a batch of N costs N passes over ~N processes. Here one pass serves every
destroy that asked before it started: a request joins the pass not started yet,
and waits while the pass before it runs. Each request's pass starts after the
request was made, so it sees all that a pass of its own would have seen: the
guarantee is the same, the passes fewer.

>>> pids_of([os.getuid()])[os.getuid()] != []
True
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

__all__ = ["pids_of", "UidScans"]


def pids_of(uids: Iterable[int]) -> dict[int, list[int]]:
    """One pass over ``/proc``: the pids owned by each of ``uids`` (the owner of
    ``/proc/<pid>``, the process's effective UID)."""
    wanted = set(uids)
    found: dict[int, list[int]] = {uid: [] for uid in wanted}
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(fd):
            if not name.isdigit():
                continue
            try:
                uid = os.stat(name, dir_fd=fd).st_uid
            except OSError:  # exited meanwhile
                continue
            if uid in wanted:
                found[uid].append(int(name))
    finally:
        os.close(fd)
    return found


class _Pass:
    __slots__ = ("uids", "found", "done", "error")

    def __init__(self) -> None:
        self.uids: set[int] = set()
        self.found: dict[int, list[int]] = {}
        self.done = False
        self.error: BaseException | None = None


class UidScans:
    """Passes over ``/proc`` shared by the requests made before each started.

    ``pids(uid)`` returns the pids under ``uid`` seen by a pass that started after
    the call was made. Passes run one at a time, on the thread of one of the
    requests that joined them (no thread of its own).
    """

    def __init__(self, scan: Callable[[set[int]], dict[int, list[int]]] = pids_of) -> None:
        self._scan = scan
        self._lock = threading.Lock()  # guards _open
        self._running = threading.Lock()  # held by the thread running a pass
        self._open = _Pass()  # the pass not started yet: new requests join it

    def pids(self, uid: int) -> list[int]:
        with self._lock:
            mine = self._open
            mine.uids.add(uid)
        with self._running:
            if not mine.done:
                with self._lock:  # from here, requests join the next pass
                    self._open = _Pass()
                try:
                    mine.found = self._scan(mine.uids)
                except BaseException as exc:  # every request of this pass raises it
                    mine.error = exc
                mine.done = True
        if mine.error is not None:
            raise mine.error
        return list(mine.found.get(uid, ()))
