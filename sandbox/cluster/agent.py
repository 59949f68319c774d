"""The node agent: one Ray actor per node, running this project's single-host runtime.

The head starts one :class:`NodeAgent` on each node (pinned to it, ``num_cpus=0``).
The agent starts a full :func:`sandbox.start` runtime on its node, with every
isolation layer, and opens its control endpoint on the node's address over TCP
with the cluster's token. The head and any :func:`sandbox.connect` client call
sandboxes through that endpoint, not through Ray. Ray carries only the agent's
lifecycle and the app artifacts (:mod:`sandbox.cluster.artifacts`).

When the agent's process dies (its node is lost, or Ray kills it), its runtime's
sandbox processes die with it: they end on EOF of their channel, as on one host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray

from sandbox.api import Runtime
from sandbox.api import start as start_runtime
from sandbox.cluster.artifacts import AppArtifact, write_app

__all__ = ["NodeAgent"]


class NodeAgent:
    """Hosts one node's sandboxes (made a Ray actor by the head, see ``ClusterRuntime``)."""

    def __init__(self, token: str, runtime_options: dict[str, Any]) -> None:
        self.node_id: str = ray.get_runtime_context().get_node_id()
        self._home = Path(tempfile.mkdtemp(prefix=f"sandbox-agent-{self.node_id[:8]}-"))
        token_file = self._home / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        host = ray.util.get_node_ip_address()
        self._rt: Runtime = start_runtime(
            listen=f"tcp:{host}:0", token_file=token_file,
            # the node's store lives and dies with the agent: after a node loss the
            # head's record, not the node's, says what to start again elsewhere
            state_dir=self._home / "state",
            **runtime_options)
        bound = self._rt.control_address
        self.address = f"tcp:{bound.host}:{bound.port}"

    def endpoint(self) -> dict[str, Any]:
        """Where the head reaches this node's runtime."""
        return {"node_id": self.node_id, "address": self.address, "pid": os.getpid(),
                "runtime": self._rt.name}

    def ping(self) -> str:
        return self.node_id

    def write_app(self, sandbox_id: str, artifact: AppArtifact) -> str:
        """Make the sandbox's app directory on this node hold ``artifact``; its path."""
        dest = self._home / "apps" / sandbox_id
        write_app(artifact, dest)
        return str(dest)

    def remove_app(self, sandbox_id: str) -> None:
        shutil.rmtree(self._home / "apps" / sandbox_id, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop the node's runtime (every sandbox on it) and remove the agent's files."""
        try:
            self._rt.stop()
        finally:
            shutil.rmtree(self._home, ignore_errors=True)
