"""An actor's inbox that starts the actor's thread with its first message.

A thread costs a start (on this 2-vCPU VM ~0.1 ms for the starter and ~0.1 ms for
the new thread, ~0.3 and 0.12 ms for a process's first thread after a fork, page
faults included) and a hand-off to wait for it. A supervisor's whole start is its
``on_init``, which :meth:`runtime.actor.Actor.start` can run on the starter's thread;
after it, many supervisors get no message for their whole life (a sandbox's own
supervisor in the host, the app's root supervisor in the sandbox: their children
run, nobody calls them). Their thread starts with the first message instead:
nothing is handled before ``on_init`` has finished, then one thread handles every
message in order, as before (see :class:`OnDemandInbox`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["OnDemandInbox"]


class OnDemandInbox(queue.SimpleQueue[Any]):
    """A :class:`queue.SimpleQueue` whose first ``put`` after :meth:`arm` calls the
    start function it was armed with (once, outside any lock of its own).

    Messages put before :meth:`arm` (while ``on_init`` runs) wait in it; ``arm``
    starts the thread at once if there are any. Once started, ``put`` is the
    queue's own plus one attribute check.

    >>> started = []
    >>> inbox = OnDemandInbox()
    >>> inbox.put("early"); started
    []
    >>> inbox.arm(lambda: started.append(inbox.get())); started
    ['early']
    >>> inbox.put("later"); started  # started once: the thread gets the rest
    ['early']
    """

    def __init__(self) -> None:
        super().__init__()
        self._start: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item)
        if self._start is not None:  # armed and not started (read without the lock:
            self._kick()             # _kick decides under it)

    def arm(self, start: Callable[[], None]) -> None:
        """From now on the first message calls ``start`` (now, if one is waiting)."""
        with self._lock:
            self._start = start
        if not self.empty():
            self._kick()

    def _kick(self) -> None:
        with self._lock:
            start, self._start = self._start, None
        if start is not None:
            start()
