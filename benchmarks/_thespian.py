"""A peer actor library as a baseline: Thespian's multiprocess actor system.

Installed with the ``bench`` extra (``pip install -e ".[bench]"``); when it is not
installed the figures that use it are left out, with a note.
"""

from __future__ import annotations

from typing import Any

try:
    from thespian.actors import Actor, ActorSystem
except ImportError:  # the bench extra is not installed
    Actor = object  # type: ignore[assignment,misc]
    ActorSystem = None  # type: ignore[assignment]


class Echo(Actor):  # type: ignore[misc,valid-type]
    """Answers every list or string with itself; counts casts (tuples)."""

    count = 0

    def receiveMessage(self, msg: Any, sender: Any) -> None:  # noqa: N802 (Thespian's API)
        if isinstance(msg, tuple):
            self.count += 1
        elif msg == "count":
            self.send(sender, self.count)
        elif isinstance(msg, (list, str)):
            self.send(sender, msg)


class ThespianEcho:
    """An Echo actor in its own process, behind Thespian's ``ask``."""

    base = "multiprocQueueBase"

    def __init__(self) -> None:
        if ActorSystem is None:
            raise RuntimeError("thespian is not installed (pip install -e '.[bench]')")
        self.system = ActorSystem(self.base)
        try:
            self.actor = self.system.createActor(Echo)
        except BaseException:
            self.system.shutdown()
            raise

    def call(self, payload: Any) -> Any:
        return self.system.ask(self.actor, payload, 10)

    def close(self) -> None:
        self.system.shutdown()


def available() -> bool:
    return ActorSystem is not None
