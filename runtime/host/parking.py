"""One thread that looks after the host's parked sandbox readers.

A sandbox's reader thread (:mod:`runtime.host.process`) parks while calling
threads read their own answers, and must take the reading back once they go
quiet (to see an EOF, a notice, an answer nobody leads for). Had each parked
reader woken every :data:`PERIOD` to look, 100 sandboxes called steadily would
cost 2,000 thread wake-ups a second, each taking the GIL from the callers. Here
one thread looks at every parked reader once per period and wakes only those
whose callers did nothing since its last look (and hold no read token): the same
bound as before, one to two periods after the last call, for one wake-up per
period in all. The thread runs only while some reader is parked.

>>> class Conn:
...     activity, kicked = 0, threading.Event()
...     def quiet_since(self, seen): return self.activity == seen
...     def kick(self): self.kicked.set()
>>> c = Conn(); park(c); c.kicked.wait(5)
True
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

__all__ = ["PERIOD", "looks", "park", "unpark"]

#: How often parked readers are looked at: a reader is woken one to two of these
#: after its callers' last call.
PERIOD = 0.05


class Parked(Protocol):
    @property
    def activity(self) -> int:
        """Bumped by each caller that reads its own answer."""

    def quiet_since(self, seen: int) -> bool:
        """Whether nothing happened since ``activity`` was ``seen`` (and no caller reads now)."""

    def kick(self) -> None:
        """Wake the parked reader (it takes the reading back)."""


_cond = threading.Condition()
#: Parked readers' connections, with their ``activity`` at the last look.
_parked: dict[Parked, int] = {}
_thread: threading.Thread | None = None
#: How many times the parked readers were looked at so far (for tests and tools).
looks = 0


def park(conn: Parked) -> None:
    """Look after ``conn``'s reader from now on, until it is kicked or :func:`unpark`."""
    global _thread
    with _cond:
        _parked[conn] = conn.activity
        if _thread is None:
            _thread = threading.Thread(target=_watch, name="sandbox-readers-park", daemon=True)
            _thread.start()


def unpark(conn: Parked) -> None:
    """``conn``'s reader left its park (someone kicked it): stop looking after it."""
    with _cond:
        _parked.pop(conn, None)
        if not _parked:
            _cond.notify()  # nothing left to look after: the thread ends now


def _forget() -> None:
    """In a forked child: the parent's thread did not come along, nor do its readers."""
    global _cond, _thread
    _cond, _thread = threading.Condition(), None
    _parked.clear()


os.register_at_fork(after_in_child=_forget)


def _watch() -> None:
    global _thread, looks
    while True:
        with _cond:
            if _parked:
                _cond.wait(PERIOD)
            if not _parked:
                _thread = None  # park() starts a new one
                return
            looks += 1
            quiet = []
            for conn, seen in _parked.items():
                if conn.quiet_since(seen):
                    quiet.append(conn)
                else:
                    _parked[conn] = conn.activity  # a value, not a key: safe while iterating
            for conn in quiet:
                del _parked[conn]
        for conn in quiet:  # outside the lock: kick takes the connection's own lock
            conn.kick()
