"""Child specifications: what a supervisor needs to know to start and stop a child.

>>> spec = ChildSpec("worker", start=lambda: None, restart="transient", shutdown=2.0)
>>> spec.restart, spec.shutdown
('transient', 2.0)
>>> shutdown_timeout("infinity") is None, shutdown_timeout(2.0)
(True, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Union

from runtime.errors import ChildSpecError

if TYPE_CHECKING:
    from runtime.actor import ActorRef

__all__ = [
    "BRUTAL_KILL",
    "ChildSpec",
    "IGNORE",
    "INFINITY",
    "IgnoreType",
    "RESTART_TYPES",
    "Restart",
    "Shutdown",
    "shutdown_timeout",
]

Restart = Literal["permanent", "transient", "temporary"]
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")

#: ``shutdown`` value: end the child at once, without its ``terminate`` (OTP's brutal_kill).
BRUTAL_KILL: Final = "brutal_kill"
#: ``shutdown`` value: wait as long as the child takes to stop (``math.inf`` means the same).
INFINITY: Final = "infinity"
#: Seconds, ``"infinity"`` (or ``math.inf``) or ``"brutal_kill"``.
Shutdown = Union[float, Literal["infinity", "brutal_kill"]]


class IgnoreType:
    """The type of :data:`IGNORE` (one instance, so ``is`` compares); for annotations
    such as ``ActorRef | IgnoreType``."""

    _instance: IgnoreType | None = None

    def __new__(cls) -> IgnoreType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "runtime.IGNORE"

    def __reduce__(self) -> str:
        return "IGNORE"  # pickles (and cloudpickles) as the same singleton


#: A start function returns this to say "nothing to start" (OTP's ``ignore``): the
#: supervisor keeps a permanent or transient child's spec with no actor, and drops a
#: temporary one's.
IGNORE: Final = IgnoreType()


def shutdown_timeout(shutdown: Shutdown) -> float | None:
    """Seconds to wait for a graceful stop: None for ``"infinity"``/``math.inf``
    (wait as long as it takes), 0 for ``"brutal_kill"``.

    >>> shutdown_timeout(math.inf) is None, shutdown_timeout("brutal_kill")
    (True, 0.0)
    """
    if shutdown == BRUTAL_KILL:
        return 0.0
    if shutdown == INFINITY or shutdown == math.inf:
        return None
    return float(shutdown)


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child of a supervisor.

    - ``id``: unique among the supervisor's children.
    - ``start``: a callable returning the started child's :class:`~runtime.actor.ActorRef`,
      or :data:`IGNORE` when there is nothing to start.
    - ``restart``: ``permanent`` (always restarted), ``transient`` (restarted only
      after an abnormal exit) or ``temporary`` (never restarted).
    - ``shutdown``: seconds to wait for a graceful stop before the child is killed;
      ``"infinity"`` (or ``math.inf``) waits as long as it takes (the default of
      supervisor children, as in OTP); ``"brutal_kill"`` ends it at once without
      running its ``terminate``.
    - ``type``: ``worker`` or ``supervisor`` (informational, as in OTP).
    - ``meta``: free-form data carried along (e.g. the spec's source for upgrades).
    """

    id: str
    start: Callable[[], ActorRef | IgnoreType]
    restart: Restart = "permanent"
    shutdown: Shutdown = 5.0
    type: Literal["worker", "supervisor"] = "worker"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ChildSpecError(f"child spec id must be a non-empty string, got {self.id!r}")
        if not callable(self.start):
            raise ChildSpecError(f"child {self.id!r}: start must be callable, got {self.start!r}")
        if self.restart not in RESTART_TYPES:
            raise ChildSpecError(
                f"child {self.id!r}: restart={self.restart!r} is not one of {', '.join(RESTART_TYPES)}"
            )
        if self.shutdown not in (BRUTAL_KILL, INFINITY) and (
            isinstance(self.shutdown, bool)
            or not isinstance(self.shutdown, (int, float))
            or not self.shutdown >= 0  # also refuses NaN
        ):
            raise ChildSpecError(
                f"child {self.id!r}: shutdown={self.shutdown!r} must be a number of seconds "
                '>= 0, "infinity" (or math.inf) or "brutal_kill"'
            )
        if self.type not in ("worker", "supervisor"):
            raise ChildSpecError(f"child {self.id!r}: type={self.type!r} is not worker or supervisor")
