"""The head of a cluster runtime: sandboxes placed on Ray nodes, one API.

:class:`ClusterRuntime` has the methods of :class:`sandbox.api.Runtime`. It
starts (or joins) a Ray cluster and puts one :class:`~sandbox.cluster.agent.NodeAgent`
on each node: a Ray actor pinned to that node with ``num_cpus=0``, running the
single-host runtime with all its isolation layers. Sandboxes go where there is
free capacity: each node offers its ``sandbox_slots`` Ray resource, or
``default_slots`` when it sets none. A ``node=`` hint places a sandbox on the
node it names.

What goes through Ray, and what does not:

- **Calls do not.** The head keeps a control connection
  (:func:`sandbox.connect`, TCP with the cluster's token) to each agent's
  endpoint. A call to a sandbox on another node therefore costs one network
  round trip, not a Ray task.
- **Ray carries** membership (``ray.nodes()``), the agents' lifecycle, failure
  detection (a dead agent or node), and the app artifacts, the source files
  (:mod:`sandbox.cluster.artifacts`), through the object store.

Supervision across nodes: a monitor thread watches the nodes. When a node or
its agent dies, every sandbox that ran there is created again on the remaining
nodes, from the head's record of it: its app artifact at the last committed
reload, and its options. Its in-memory actor state is lost, as with any
process restart. While that happens, a call to such a sandbox raises
:class:`~runtime.errors.SandboxUnavailable`, which is retriable; afterwards the
same call succeeds. A node that joins later gets an agent and takes new
placements.

Hot reload across the cluster: the head compiles and scans the new sources once
with its own compiler, so a compile error never reaches a node. It then ships
the artifact to the node holding the sandbox and asks that node's runtime to
swap. The head records the new artifact only when the node reports a committed
swap. If the swap fails, the node gets the old files back and keeps serving the
old code.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack, cast

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.compiler import CompilerActor
from actors.config import SandboxConfig
from actors.scan import ProfileScanner
from runtime import telemetry
from runtime.component import ComponentRef
from runtime.errors import (
    ConfigError,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
    SandboxUnavailable,
)
from sandbox.cluster.agent import NodeAgent
from sandbox.cluster.artifacts import AppArtifact, pack_app, write_app
from sandbox.cluster.placement import Node, choose
from sandbox.control.client import RemoteRuntime, RemoteSandbox, connect
from sandbox.control.protocol import ControlError
from sandbox.hotreload import ReloadReport
from sandbox.options import ClusterCreateOptions, create_options

__all__ = ["ClusterRuntime", "ClusterSandbox", "SLOTS_RESOURCE"]

log = logging.getLogger("sandbox.cluster")

#: The custom Ray resource a node sets to say how many sandboxes it hosts.
SLOTS_RESOURCE = "sandbox_slots"
DEFAULT_TIMEOUT = 5.0
_ids = itertools.count(1)
#: Errors meaning "the node's runtime did not answer" (not "the sandbox refused").
_UNREACHABLE = (ControlError, ConnectionError, OSError, RayActorError)


@dataclass
class _Placed:
    """The head's record of one sandbox: enough to create it again elsewhere."""

    sandbox_id: str
    app_path: str
    options: dict[str, Any]
    artifact: AppArtifact
    node_id: str
    status: str = "running"  # or "creating", "relocating"
    relocations: int = 0
    last_error: str | None = None
    #: the node runtime's handle (bound to this incarnation of the sandbox there)
    handle: RemoteSandbox | None = None


@dataclass
class _Agent:
    node_id: str
    handle: Any  # the Ray actor handle
    address: str
    pid: int
    client: RemoteRuntime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ClusterSandbox:
    """A handle on one sandbox of a cluster runtime (the methods of :class:`sandbox.Sandbox`)."""

    def __init__(self, runtime: ClusterRuntime, sandbox_id: str) -> None:
        self.runtime = runtime
        self.id = sandbox_id

    def __repr__(self) -> str:
        return f"<ClusterSandbox {self.id!r}>"

    def call(self, actor: str, request: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Call an actor of the sandbox, on whatever node it runs.

        Raises :class:`~runtime.errors.SandboxUnavailable` (retriable) while the
        sandbox is being restarted after the loss of its node.
        """
        return self.runtime._on_node(self.id, lambda h: h.call(actor, request, timeout=timeout))

    def cast(self, actor: str, request: Any) -> None:
        """Send without waiting."""
        self.runtime._on_node(self.id, lambda h: h.cast(actor, request))

    def info(self) -> dict[str, Any]:
        """The node runtime's info of the sandbox, with ``node`` and ``relocations``."""
        return self.runtime.get_sandbox_info(self.id)

    def restart(self, *, preserve_state: bool = False) -> dict[str, Any]:
        return self.runtime.restart_sandbox(self.id, preserve_state=preserve_state)

    def destroy(self) -> None:
        self.runtime.destroy_sandbox(self.id)

    def hot_reload(self, *, modules: Iterable[str] | None = None,
                   source: Mapping[str, str] | None = None, extra: Any = None,
                   timeout: float = 30.0) -> ReloadReport:
        """See :meth:`ClusterRuntime.hot_reload`."""
        return self.runtime.hot_reload(self.id, modules=modules, source=source, extra=extra,
                                       timeout=timeout)

    def rollback_module(self, module: str, version: int, *, extra: Any = None,
                        timeout: float = 30.0) -> ReloadReport:
        return self.runtime.rollback_module(self.id, module, version, extra=extra,
                                            timeout=timeout)

    def module_versions(self, module: str | None = None) -> Any:
        return self.runtime.module_versions(self.id, module)

    @property
    def node(self) -> str:
        """The id of the Ray node the sandbox runs on now."""
        return self.runtime._record(self.id).node_id


class ClusterRuntime:
    """Sandboxes on the nodes of a Ray cluster, behind the API of a single-host runtime.

    Made by ``sandbox.start(cluster="ray", ray_address=...)``. ``ray_address``:
    ``"auto"`` joins the cluster this machine belongs to, an address joins that
    one, and None starts a local Ray instance that is stopped with the runtime.
    ``runtime_options`` go to each node's :func:`sandbox.start` (``history``,
    ``monitor_interval``, ...).
    """

    def __init__(
        self,
        *,
        ray_address: str | None = None,
        name: str | None = None,
        token: str | None = None,
        default_slots: int = 64,
        poll_interval: float = 0.5,
        runtime_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(default_slots, bool) or not isinstance(default_slots, int) \
                or default_slots < 0:
            raise ConfigError("default_slots", default_slots, "an integer >= 0")
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)) \
                or poll_interval <= 0:
            raise ConfigError("poll_interval", poll_interval, "a number of seconds > 0")
        self.name = name or f"cluster{os.getpid()}-{next(_ids)}"
        self.token = token or secrets.token_urlsafe(32)
        self._ray_address = ray_address
        self._default_slots = default_slots
        self._poll = float(poll_interval)
        self._runtime_options = dict(runtime_options or {})
        self._own_ray = False
        self._lock = threading.RLock()
        self._nodes: dict[str, Node] = {}
        self._agents: dict[str, _Agent] = {}
        self._records: dict[str, _Placed] = {}
        self._halt = threading.Event()
        self._monitor: threading.Thread | None = None
        self._compiler: ComponentRef | None = None
        self._home = Path(tempfile.mkdtemp(prefix=f"sandbox-{self.name}-head-"))

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ClusterRuntime:
        """Join (or start) Ray, put an agent on every node, start watching the nodes."""
        try:
            if not ray.is_initialized():
                if self._ray_address is None:
                    ray.init(include_dashboard=False, resources={SLOTS_RESOURCE: self._default_slots},
                             log_to_driver=False)
                    self._own_ray = True
                else:
                    ray.init(address=self._ray_address, include_dashboard=False,
                             log_to_driver=False)
            self._compiler = cast(ComponentRef, CompilerActor.start(scanner=ProfileScanner()))
            self._refresh_nodes()
            if not self._agents:
                raise SandboxError("the Ray cluster has no live node to host sandboxes")
        except BaseException:
            self.stop()
            raise
        self._monitor = threading.Thread(target=self._watch, name=f"{self.name}-nodes",
                                         daemon=True)
        self._monitor.start()
        telemetry.execute("cluster.start", {"nodes": len(self._agents)}, {"runtime": self.name})
        return self

    def stop(self) -> None:
        """Stop every node's runtime and agent (and Ray itself if this runtime started it)."""
        self._halt.set()
        if self._monitor is not None:
            self._monitor.join(30)
        with self._lock:
            agents = list(self._agents.values())
            self._agents.clear()
            self._records.clear()
        for agent in agents:
            self._drop_agent(agent, graceful=True)
        if self._compiler is not None:
            self._compiler.stop()
            self._compiler = None
        if self._own_ray and ray.is_initialized():
            ray.shutdown()
            self._own_ray = False
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> ClusterRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- nodes -----------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Each node the head knows: id, live or not, slots, sandboxes placed, endpoint."""
        with self._lock:
            return [{"node_id": n.node_id, "alive": n.alive, "slots": n.slots, "used": n.used,
                     "address": n.address} for n in self._nodes.values()]

    def _refresh_nodes(self) -> None:
        """Start an agent on each new live node; hand the sandboxes of lost nodes on."""
        live: dict[str, dict[str, Any]] = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        for node_id, info in live.items():
            if node_id in self._agents or self._halt.is_set():
                continue
            slots = int(info.get("Resources", {}).get(SLOTS_RESOURCE, self._default_slots))
            if slots <= 0:
                continue
            agent = self._start_agent(node_id)
            with self._lock:
                self._agents[node_id] = agent
                self._nodes[node_id] = Node(node_id, slots, address=agent.address,
                                            used=self._nodes.get(node_id, Node(node_id, 0)).used)
            telemetry.execute("cluster.node.up", {"slots": slots},
                              {"runtime": self.name, "node": node_id})
        for node_id, agent in list(self._agents.items()):
            if node_id not in live or not self._agent_alive(agent):
                self._node_lost(node_id, "left the Ray cluster" if node_id not in live
                                else "its agent died")

    def _start_agent(self, node_id: str) -> _Agent:
        # Ray's actor handles are dynamic proxies; typed as Any here
        remote_cls: Any = ray.remote(NodeAgent).options(
            num_cpus=0, max_restarts=0, max_concurrency=4,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        handle = remote_cls.remote(self.token, self._runtime_options)
        end: dict[str, Any] = ray.get(handle.endpoint.remote(), timeout=120)
        agent = _Agent(node_id, handle, end["address"], end["pid"])
        agent.client = connect(agent.address, token=self.token, timeout=30)
        return agent

    def _agent_alive(self, agent: _Agent) -> bool:
        try:
            ray.get(agent.handle.ping.remote(), timeout=10)
            return True
        except RayActorError:
            return False
        except GetTimeoutError:
            return True  # slow, not dead: the next round asks again

    def _drop_agent(self, agent: _Agent, *, graceful: bool) -> None:
        if agent.client is not None:
            try:
                agent.client.close()
            except Exception:  # the connection may already be gone with its node
                pass
        if graceful:
            try:
                ray.get(agent.handle.shutdown.remote(), timeout=60)
            except Exception as exc:
                log.warning("agent of node %s did not shut down cleanly: %s",
                            agent.node_id[:12], exc)
        try:
            ray.kill(agent.handle)
        except Exception:  # already dead with its node
            pass

    def _watch(self) -> None:
        while not self._halt.wait(self._poll):
            try:
                self._refresh_nodes()
                self._retry_relocations()
            except Exception:
                log.exception("cluster %s: watching the nodes failed; trying again", self.name)

    def _node_lost(self, node_id: str, why: str) -> None:
        with self._lock:
            agent = self._agents.pop(node_id, None)
            node = self._nodes.get(node_id)
            if node is not None:
                node.alive = False
                node.used = 0
            moving = [p for p in self._records.values() if p.node_id == node_id]
            for p in moving:
                p.status = "relocating"
                p.last_error = f"node {node_id[:12]} {why}"
        if agent is not None:
            self._drop_agent(agent, graceful=False)
        telemetry.execute("cluster.node.lost", {"sandboxes": len(moving)},
                          {"runtime": self.name, "node": node_id, "reason": why})
        log.warning("cluster %s: node %s %s; restarting its %d sandboxes elsewhere",
                    self.name, node_id[:12], why, len(moving))
        for p in moving:
            self._relocate(p)

    def _retry_relocations(self) -> None:
        with self._lock:
            waiting = [p for p in self._records.values() if p.status == "relocating"]
        for p in waiting:
            self._relocate(p)

    def _relocate(self, p: _Placed) -> None:
        old = p.node_id
        try:
            with self._lock:
                node = choose(list(self._nodes.values()))
                node.used += 1
        except SandboxError as exc:
            p.last_error = f"no node to restart on after the loss of node {old[:12]}: {exc}"
            return
        try:
            self._create_on(node.node_id, p)
        except Exception as exc:
            with self._lock:
                node.used -= 1
            p.last_error = f"restarting after the loss of node {old[:12]} failed: {exc}"
            log.warning("cluster %s: %s", self.name, p.last_error)
            return
        with self._lock:
            p.node_id, p.status, p.relocations = node.node_id, "running", p.relocations + 1
        telemetry.execute("cluster.sandbox.relocated", {"count": 1},
                          {"runtime": self.name, "sandbox": p.sandbox_id, "from": old,
                           "to": node.node_id})

    # -- helpers ---------------------------------------------------------------------
    def _record(self, sandbox_id: str) -> _Placed:
        with self._lock:
            p = self._records.get(sandbox_id)
        if p is None:
            raise SandboxNotFound(sandbox_id)
        return p

    def _client(self, node_id: str) -> RemoteRuntime:
        with self._lock:
            agent = self._agents.get(node_id)
        if agent is None or agent.client is None:
            raise SandboxError(f"node {node_id[:12]} has no agent")
        return agent.client

    def _on_node(self, sandbox_id: str, op: Any) -> Any:
        """Run ``op(handle)`` on the sandbox's handle in its node's runtime; a node that
        does not answer (or a sandbox being moved) is :class:`SandboxUnavailable`."""
        p = self._record(sandbox_id)
        handle = p.handle
        if p.status != "running" or handle is None:
            raise SandboxUnavailable(sandbox_id, p.last_error or p.status)
        node_id = p.node_id
        try:
            return op(handle)
        except _UNREACHABLE as exc:
            raise SandboxUnavailable(
                sandbox_id, f"node {node_id[:12]} did not answer ({type(exc).__name__}: {exc})"
            ) from exc
        except SandboxError as exc:
            if "has no agent" in str(exc):
                raise SandboxUnavailable(sandbox_id, str(exc)) from exc
            raise

    def _create_on(self, node_id: str, p: _Placed) -> None:
        with self._lock:
            agent = self._agents.get(node_id)
        if agent is None:
            raise SandboxError(f"node {node_id[:12]} has no agent")
        path = ray.get(agent.handle.write_app.remote(p.sandbox_id, ray.put(p.artifact)), timeout=60)
        p.handle = self._client(node_id).create_sandbox(p.sandbox_id, path, **p.options)

    def _check_compile(self, sandbox_id: str, artifact: AppArtifact, profile: str) -> None:
        """Compile and scan the artifact once, on the head (CompileError stops here)."""
        staging = self._home / "check" / sandbox_id
        write_app(artifact, staging)
        assert self._compiler is not None
        result = self._compiler.invoke("compile_sandbox", str(staging), profile=profile,
                                       timeout=None)
        result.raise_for_errors()

    # -- sandboxes -------------------------------------------------------------------
    def create_sandbox(self, sandbox_id: str, path: str | os.PathLike[str], *,
                       node: str | None = None, **options: Unpack[ClusterCreateOptions]
                       ) -> ClusterSandbox:
        """Create a sandbox on the node with the most free slots (or on ``node``).

        The options are those of :meth:`sandbox.Runtime.create_sandbox` that a node
        takes (:class:`~sandbox.options.ClusterCreateOptions`; checked on the head
        first); the app directory is read on the head and shipped.
        """
        app = os.fspath(path)
        given = create_options(options, allowed=ClusterCreateOptions)
        if "net_allow" in given:
            given["net_allow"] = list(given["net_allow"])
        config = SandboxConfig.build(sandbox_id, app, **given)
        stored = {k: v for k, v in config.as_dict().items()
                  if k not in ("id", "path") and v is not None}
        artifact = pack_app(app)
        self._check_compile(sandbox_id, artifact, config.profile)
        with self._lock:
            if sandbox_id in self._records:
                raise SandboxExists(sandbox_id)
            target = choose(list(self._nodes.values()), hint=node)
            target.used += 1
            p = _Placed(sandbox_id, str(Path(app).resolve()), stored, artifact, target.node_id,
                        status="creating")
            self._records[sandbox_id] = p
        try:
            self._create_on(target.node_id, p)
        except BaseException:
            with self._lock:
                self._records.pop(sandbox_id, None)
                target.used -= 1
            raise
        p.status = "running"
        return ClusterSandbox(self, sandbox_id)

    def sandbox(self, sandbox_id: str) -> ClusterSandbox:
        """A handle on an existing sandbox (SandboxNotFound if there is none)."""
        self._record(sandbox_id)
        return ClusterSandbox(self, sandbox_id)

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """Stop the sandbox on its node and forget it."""
        p = self._record(sandbox_id)
        try:
            if p.status == "running":
                self._on_node(sandbox_id, lambda h: h.destroy())
                with self._lock:
                    agent = self._agents.get(p.node_id)
                if agent is not None:
                    ray.get(agent.handle.remove_app.remote(sandbox_id), timeout=60)
        finally:
            with self._lock:
                self._records.pop(sandbox_id, None)
                node = self._nodes.get(p.node_id)
                if node is not None and node.alive:
                    node.used -= 1

    def restart_sandbox(self, sandbox_id: str, *, preserve_state: bool = False) -> dict[str, Any]:
        return cast(dict[str, Any], self._on_node(
            sandbox_id, lambda h: h.restart(preserve_state=preserve_state)))

    def get_sandbox_info(self, sandbox_id: str) -> dict[str, Any]:
        """The node runtime's info, plus ``node`` and ``relocations``; while the sandbox
        is being moved, the head's own record (status ``relocating``)."""
        p = self._record(sandbox_id)
        head = {"node": p.node_id, "relocations": p.relocations}
        if p.status != "running":
            return {"id": sandbox_id, "status": p.status, "last_error": p.last_error, **head}
        info = cast(dict[str, Any], self._on_node(sandbox_id, lambda h: h.info()))
        return {**info, **head}

    def list_sandboxes(self) -> list[dict[str, Any]]:
        """Info of every sandbox of the cluster, each with its ``node``."""
        with self._lock:
            ids = sorted(self._records)
        out = []
        for sid in ids:
            try:
                out.append(self.get_sandbox_info(sid))
            except SandboxNotFound:
                continue  # destroyed meanwhile
            except SandboxUnavailable as exc:
                out.append({"id": sid, "status": "relocating", "last_error": exc.why})
        return out

    def hot_reload(self, sandbox_id: str, *, modules: Iterable[str] | None = None,
                   source: Mapping[str, str] | None = None, extra: Any = None,
                   timeout: float = 30.0) -> ReloadReport:
        """Reload a sandbox wherever it runs: compile once here, ship, swap on its node.

        The app directory is read again on the head (``source`` overrides modules).
        A CompileError stops the reload before any node is touched; a failed swap
        leaves the node's old files and code serving.
        """
        p = self._record(sandbox_id)
        old = p.artifact
        new = pack_app(p.app_path)
        if source:
            new = new.with_sources(source)
        self._check_compile(sandbox_id, new, str(p.options.get("profile", "medium")))

        def swap(handle: RemoteSandbox) -> ReloadReport:
            with self._lock:
                agent = self._agents.get(p.node_id)
            if agent is None:
                raise SandboxError(f"node {p.node_id[:12]} has no agent")
            ray.get(agent.handle.write_app.remote(sandbox_id, ray.put(new)), timeout=60)
            try:
                report = handle.hot_reload(modules=modules, extra=extra, timeout=timeout)
            except BaseException:
                ray.get(agent.handle.write_app.remote(sandbox_id, ray.put(old)), timeout=60)
                raise
            p.artifact = new
            return report

        return cast(ReloadReport, self._on_node(sandbox_id, swap))

    def batch_hot_reload(self, sandbox_ids: Iterable[str], *,
                         timeout: float = 30.0) -> dict[str, ReloadReport | BaseException]:
        """Reload many sandboxes (across nodes), one outcome each."""
        out: dict[str, ReloadReport | BaseException] = {}
        for sid in sandbox_ids:
            try:
                out[sid] = self.hot_reload(sid, timeout=timeout)
            except Exception as exc:
                out[sid] = exc
        return out

    def rollback_module(self, sandbox_id: str, module: str, version: int, *,
                        extra: Any = None, timeout: float = 30.0) -> ReloadReport:
        """Swap a kept version back in on the sandbox's node.

        The version history lives on the node: after the sandbox moves to another
        node, its history there starts from the code it was moved with.
        """
        return cast(ReloadReport, self._on_node(sandbox_id, lambda h: h.rollback_module(
            module, version, extra=extra, timeout=timeout)))

    def module_versions(self, sandbox_id: str, module: str | None = None) -> Any:
        return self._on_node(sandbox_id, lambda h: h.module_versions(module))

    def reload_status(self, sandbox_id: str) -> dict[str, Any] | None:
        return cast(dict[str, Any] | None, self._on_node(
            sandbox_id, lambda h: h.runtime.reload_status(h.id)))

    def health(self) -> dict[str, Any]:
        """``ok`` when every known node is live and every sandbox runs, else ``degraded``."""
        with self._lock:
            nodes = self.nodes()
            moving = [p.sandbox_id for p in self._records.values() if p.status != "running"]
            count = len(self._records)
        ok = all(n["alive"] for n in nodes) and not moving
        return {"status": "ok" if ok else "degraded", "runtime": self.name, "nodes": nodes,
                "sandboxes": count, "unavailable": moving}
