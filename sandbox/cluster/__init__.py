"""Sandboxes on a Ray cluster: ``sandbox.start(cluster="ray")`` (needs the ``cluster`` extra).

- :mod:`sandbox.cluster.runtime`: :class:`ClusterRuntime`, the head;
- :mod:`sandbox.cluster.agent`: :class:`NodeAgent`, one per node;
- :mod:`sandbox.cluster.placement`: where a new sandbox goes;
- :mod:`sandbox.cluster.artifacts`: apps shipped to nodes.
"""

from sandbox.cluster.runtime import SLOTS_RESOURCE, ClusterRuntime, ClusterSandbox

__all__ = ["ClusterRuntime", "ClusterSandbox", "SLOTS_RESOURCE"]
