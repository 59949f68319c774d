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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from actors.config import AlertThresholds
from runtime.errors import ConfigError
from runtime.recovery import annotate
from sandbox.alerts import AlertManager, WebhookConfig
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
    """A runtime's metrics (its own prometheus-client registry), health, alerts
    (:mod:`sandbox.alerts`) and HTTP endpoint; created with the runtime, started after
    its root supervisor, stopped with it."""

    def __init__(self, rt: Runtime, *, http: Any = None, alerts: Any = None,
                 alert_webhook: Any = None) -> None:
        self.rt = rt
        self.http = check_http(http)
        self.alerts = AlertManager(rt.name, AlertThresholds.build(alerts),
                                   WebhookConfig.build(alert_webhook))
        self.metrics = RuntimeMetrics(rt.name)
        self.calls = self.metrics.calls  # Sandbox.call records into it
        #: This runtime's own registry (never prometheus-client's global one): the
        #: runtime's counters, and gauges of its health, collected at each scrape.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.metrics)
        self.registry.register(_HealthCollector(self))
        self.registry.register(_ResourceCollector(self))
        self.server: MetricsServer | None = None
        self.started_at: float | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Attach the metrics handler; start the HTTP endpoint if asked. If the
        endpoint cannot listen, the runtime is stopped and ConfigError raised."""
        self.metrics.attach()
        self.alerts.start()
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
        self.alerts.stop()

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
            # the most frequent recurring errors (all of them: rt.error_patterns())
            "error_patterns": [p.as_dict() for p in self.metrics.patterns.patterns()[:10]],
            "checked_at": time.time(),
        }

    # -- metrics -------------------------------------------------------------------------
    def metrics_text(self) -> str:
        """Prometheus text of :attr:`registry`: the runtime's counters and histograms, and
        gauges of its health (``sandbox_up``, ``sandbox_component_up``, ``sandbox_runtime_up``)."""
        return generate_latest(self.registry).decode()

    def health_gauges(self) -> list[Gauge]:
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
        return [up, comp, sb]


#: The resources of actors.config.Limits the monitor samples, and the sample field
#: holding each one's use, in the limit's own unit.
_RESOURCES = {"memory_mb": "rss_mb", "cpu_percent": "cpu_percent", "processes": "processes",
              "open_files": "fds_max"}


class _ResourceCollector:
    """Each sandbox's resource use and limits, from the resource monitor's latest
    sample. A scrape asks the monitor (briefly): a monitor being restarted just
    leaves these gauges empty for that scrape."""

    def __init__(self, obs: Observability) -> None:
        self.obs = obs

    def gauges(self) -> list[Gauge]:
        usage = Gauge("sandbox_resource_usage",
                      "A sandbox's latest sampled use of a resource, in the unit of its limit "
                      "(memory_mb: MiB RSS of its tree, cpu_percent, processes, open_files).",
                      ("sandbox", "resource"))
        limit = Gauge("sandbox_resource_limit",
                      "A sandbox's limit of a resource (when it has one).", ("sandbox", "resource"))
        warn = Gauge("sandbox_alert_warn_at",
                     "Fraction of a limit at which a sandbox's resource warning fires.",
                     ("sandbox",))
        try:
            every = self.obs.rt.component("monitor", timeout=1.0).invoke("usage_all", timeout=2.0)
        except Exception:  # not running, restarting, busy: no figures this scrape
            every = {}
        for sid, u in sorted((every or {}).items()):
            if not u:
                continue
            warn.set((sid,), float(u.get("warn_at", 0.8)))
            for resource, key in _RESOURCES.items():
                if u.get("sampled") and u.get(key) is not None:
                    usage.set((sid, resource), float(u[key]))
                if (u.get("limits") or {}).get(resource) is not None:
                    limit.set((sid, resource), float(u["limits"][resource]))
        return [usage, limit, warn]

    def collect(self) -> Iterator[Metric]:
        for gauge in self.gauges():
            yield gauge.family()


class _HealthCollector:
    """The health gauges, computed at each scrape."""

    def __init__(self, obs: Observability) -> None:
        self.obs = obs

    def collect(self) -> Iterator[Metric]:
        for gauge in self.obs.health_gauges():
            yield gauge.family()
        yield self.obs.alerts.fired.family()
