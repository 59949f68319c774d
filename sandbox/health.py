"""Health and metrics of one runtime, and the optional HTTP endpoint serving them.

:meth:`Runtime.health() <sandbox.api.Runtime.health>` answers without asking any
actor (so it answers while the manager is busy compiling, or being restarted):
component liveness comes from their references, sandbox status from the
``sandbox.status`` telemetry the manager emits, restarts and failures from the
process and supervisor events (:class:`sandbox.metrics.RuntimeMetrics`).

The overall ``status``:

- ``"ok"``: the root supervisor and every component (the root supervisor's
  children: ``sandboxes``, ``compiler``, ``versions``, ``manager``, ...) run, and no sandbox is
  failing (each is running, reloading, being created, stopping or stopped);
- ``"degraded"``: a component is down (its supervisor is restarting it), or a
  sandbox is in ``error`` or ``starting`` (restarting after a crash);
- ``"down"``: the runtime is not running (not started, stopped, or its root
  supervisor gave up).

>>> import sandbox
>>> with sandbox.start() as rt:
...     _ = rt.create_sandbox("doc-health", "examples/counter")
...     h = rt.health()
>>> h["status"], h["sandboxes"]["doc-health"]["status"], h["components"]["manager"]["alive"]
('ok', 'running', True)
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from runtime.errors import ConfigError
from sandbox.metrics import Gauge, RuntimeMetrics

if TYPE_CHECKING:
    from sandbox.api import Runtime
    from sandbox.http import MetricsServer

__all__ = ["Observability", "HEALTHY_STATUSES", "check_http"]

log = logging.getLogger("sandbox.health")

#: Sandbox statuses that do not make the runtime degraded.
HEALTHY_STATUSES = frozenset(
    {"initializing", "compiling", "running", "reloading", "stopping", "stopped"}
)

_HTTP_ACCEPTED = "None, or a (host, port) pair to serve /health and /metrics on (port 0: any free port)"


def check_http(value: Any) -> tuple[str, int] | None:
    """Validate the ``http`` runtime option; returns ``(host, port)`` or None.

    >>> check_http(("127.0.0.1", 0))
    ('127.0.0.1', 0)
    >>> check_http(8080)
    Traceback (most recent call last):
    ...
    runtime.errors.ConfigError: invalid http=8080: expected None, or a (host, port) pair to serve /health and /metrics on (port 0: any free port)
    """
    if value is None:
        return None
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] <= 65535
    ):
        return (value[0], value[1])
    raise ConfigError("http", value, _HTTP_ACCEPTED)


class Observability:
    """A runtime's metrics, health and HTTP endpoint; created with the runtime,
    started after its root supervisor, stopped with it."""

    def __init__(self, rt: Runtime, *, http: Any = None) -> None:
        self.rt = rt
        self.http = check_http(http)
        self.metrics = RuntimeMetrics(rt.name)
        self.calls = self.metrics.calls  # Sandbox.call records into it
        self.server: MetricsServer | None = None
        self.started_at: float | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Attach the metrics handler; start the HTTP endpoint if asked. If the
        endpoint cannot listen, the runtime is stopped and ConfigError raised."""
        self.metrics.attach()
        self.started_at = time.time()
        if self.http is not None:
            from sandbox.http import MetricsServer

            try:
                self.server = MetricsServer(self, self.http)
            except OSError as exc:
                self.rt.stop()
                raise ConfigError(
                    "http", self.http, f"an address this host can listen on ({exc})"
                ) from None
            log.info("runtime %s serves /health and /metrics on http://%s:%d",
                     self.rt.name, *self.server.address)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        self.metrics.detach()

    @property
    def address(self) -> tuple[str, int] | None:
        return self.server.address if self.server is not None else None

    # -- health --------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        rt = self.rt
        root = rt._root
        running = root is not None and root.is_alive() and self.started_at is not None
        snap = self.metrics.snapshot()
        restarts = snap["component_restarts"]
        components: dict[str, dict[str, Any]] = {
            "root": {"alive": bool(root is not None and root.is_alive()), "restarts": 0}
        }
        for name, ref in list(rt._components.items()):
            components[name] = {
                "alive": bool(running and ref is not None and ref.is_alive()),
                "restarts": restarts.get(name, 0),
            }
        from runtime.recovery import annotate

        sandboxes: dict[str, dict[str, Any]] = {}
        for sid, entry in sorted(snap["sandboxes"].items()):
            status = entry["status"]
            sandboxes[sid] = {
                "status": status,
                "ok": status in HEALTHY_STATUSES,
                "pid": entry["pid"],
                "restarts": max(int(entry["starts"]) - 1, 0),
                "since": entry["since"],
                "last_error": annotate(entry["last_error"]),
            }
        if not running:
            overall = "down"
        elif all(c["alive"] for c in components.values()) and all(
            s["ok"] for s in sandboxes.values()
        ):
            overall = "ok"
        else:
            overall = "degraded"
        return {
            "status": overall,
            "runtime": rt.name,
            "uptime": (time.time() - self.started_at) if running and self.started_at else 0.0,
            "components": components,
            "sandboxes": sandboxes,
            "checked_at": time.time(),
        }

    # -- metrics -------------------------------------------------------------------------
    def metrics_text(self) -> str:
        """Prometheus text: the runtime's counters and histograms, and gauges of its
        health (``sandbox_up``, ``sandbox_component_up``, ``sandbox_runtime_up``)."""
        h = self.health()
        up = Gauge("sandbox_runtime_up",
                   "1 if the runtime is healthy, 0.5 if degraded, 0 if down.")
        up.set((), {"ok": 1.0, "degraded": 0.5, "down": 0.0}[h["status"]])
        comp = Gauge("sandbox_component_up", "1 while a component of the runtime runs.",
                     ("component",))
        for name, c in h["components"].items():
            comp.set((name,), 1.0 if c["alive"] else 0.0)
        sb = Gauge("sandbox_up", "1 while a sandbox is in a healthy status, else 0.",
                   ("sandbox", "status"))
        for sid, s in h["sandboxes"].items():
            sb.set((sid, s["status"]), 1.0 if s["ok"] else 0.0)
        return self.metrics.text([up, comp, sb])
