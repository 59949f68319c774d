"""Where a new sandbox goes: the node with the most free sandbox slots.

Each node offers ``slots`` sandboxes (its ``sandbox_slots`` Ray resource); the
head counts what it placed there. Plain data and one function, so the rule is
tested without a cluster.

>>> nodes = [Node("a", slots=4, used=3), Node("b", slots=4, used=1)]
>>> choose(nodes).node_id
'b'
>>> choose(nodes, hint="a").node_id
'a'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runtime.errors import SandboxError

__all__ = ["Node", "NoCapacity", "choose"]


@dataclass
class Node:
    """What the head knows of one node."""

    node_id: str
    slots: int
    used: int = 0
    alive: bool = True
    address: str = ""

    @property
    def free(self) -> int:
        return self.slots - self.used


class NoCapacity(SandboxError):
    """No live node has a free sandbox slot (or the hinted node has none)."""


def choose(nodes: Sequence[Node], hint: str | None = None) -> Node:
    """The node a new sandbox goes to: ``hint`` if given (a node id or a unique
    prefix of one), else the live node with the most free slots (ties: first in
    ``nodes``). Raises :class:`NoCapacity` when none fits.

    >>> choose([Node("a", 1, 1)])
    Traceback (most recent call last):
    ...
    sandbox.cluster.placement.NoCapacity: no live node has a free sandbox slot (1 nodes, 0 free slots); add a node or raise its sandbox_slots resource
    """
    live = [n for n in nodes if n.alive]
    if hint is not None:
        matches = [n for n in live if n.node_id == hint or n.node_id.startswith(hint)]
        if len(matches) != 1:
            known = ", ".join(n.node_id[:12] for n in live) or "none"
            raise NoCapacity(f"node={hint!r} names {len(matches)} live nodes (live: {known})")
        if matches[0].free <= 0:
            raise NoCapacity(f"node {matches[0].node_id[:12]} has no free sandbox slot "
                             f"({matches[0].used} of {matches[0].slots} used)")
        return matches[0]
    best = max(live, key=lambda n: n.free, default=None)
    if best is None or best.free <= 0:
        raise NoCapacity(
            f"no live node has a free sandbox slot ({len(live)} nodes, "
            f"{sum(max(n.free, 0) for n in live)} free slots); add a node or raise its "
            "sandbox_slots resource")
    return best
