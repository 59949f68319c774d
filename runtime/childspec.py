"""Child specifications: what a supervisor needs to know to start and stop a child.

>>> spec = ChildSpec("worker", start=lambda: None, restart="transient", shutdown=2.0)
>>> spec.restart, spec.shutdown
('transient', 2.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from runtime.errors import ChildSpecError

if TYPE_CHECKING:
    from runtime.actor import ActorRef

__all__ = ["ChildSpec", "RESTART_TYPES", "Restart"]

Restart = Literal["permanent", "transient", "temporary"]
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child of a supervisor.

    - ``id``: unique among the supervisor's children.
    - ``start``: a callable returning the started child's :class:`~runtime.actor.ActorRef`.
    - ``restart``: ``permanent`` (always restarted), ``transient`` (restarted only
      after an abnormal exit) or ``temporary`` (never restarted).
    - ``shutdown``: seconds to wait for a graceful stop before the child is killed.
    - ``type``: ``worker`` or ``supervisor`` (informational, as in OTP).
    - ``meta``: free-form data carried along (e.g. the spec's source for upgrades).
    """

    id: str
    start: Callable[[], ActorRef]
    restart: Restart = "permanent"
    shutdown: float = 5.0
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
        if not isinstance(self.shutdown, (int, float)) or self.shutdown < 0:
            raise ChildSpecError(
                f"child {self.id!r}: shutdown={self.shutdown!r} must be a number of seconds >= 0"
            )
        if self.type not in ("worker", "supervisor"):
            raise ChildSpecError(f"child {self.id!r}: type={self.type!r} is not worker or supervisor")
