"""Alerts: the runtime's own judgement of its telemetry, as events and webhook POSTs.

Each runtime has an :class:`AlertManager`: a telemetry handler that watches the
runtime's events against :class:`~actors.config.AlertThresholds` (the runtime's,
``sandbox.start(alerts=...)``, or a sandbox's own, ``create_sandbox(alerts=...)``)
and raises an :class:`Alert` when one is crossed:

=====================  ========  ==========================================================
alert                  severity  when
=====================  ========  ==========================================================
SandboxDown            critical  a sandbox is in status ``error`` (its restarts gave up)
SandboxFlapping        warning   ``flaps`` process restarts after crashes within ``flap_window``
RestartStorm           critical  ``restarts`` crash restarts (process or actors) within ``window``
IntensityEscalation    critical  a supervisor (the runtime's, or one inside a sandbox) gave up
SandboxQuarantined     critical  the security controller quarantined a sandbox
ResourceNearLimit      warning   the monitor's ``limit.warning`` (``warn_at`` of a limit)
ResourceLimitReached   critical  a limit was reached and its action taken
ReloadFailures         warning   ``reload_failures`` failed reloads/rollbacks within ``window``
ComponentRestarting    warning   a component of the runtime (manager, compiler, ...) restarted
RecurringError         warning   one error pattern seen ``error_repeats`` times
=====================  ========  ==========================================================

An alert is emitted as the telemetry event ``alert.fire`` (measurements
``value``, ``threshold``; metadata the alert's fields), kept in
:meth:`Runtime.alerts() <sandbox.api.Runtime.alerts>`, and, when a webhook is
configured, POSTed to it as JSON by a background thread, with retries and a
timeout (``alert.webhook.sent`` / ``alert.webhook.failed`` telemetry tells how
that went). The same alert of the same sandbox is not raised again within
``repeat_after`` seconds.

>>> WebhookConfig.build("http://127.0.0.1:9/hook").retries
3
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from actors.config import AlertThresholds
from runtime import telemetry
from runtime.errors import ConfigError
from sandbox.metrics import Counter

__all__ = ["Alert", "AlertManager", "WebhookConfig", "WebhookSender", "ALERTS_KEPT"]

log = logging.getLogger("sandbox.alerts")

#: Alerts kept for :meth:`AlertManager.recent`.
ALERTS_KEPT = 200
_NEAR = {"memory_mb": "memory", "cpu_percent": "cpu"}


@dataclass(frozen=True)
class Alert:
    """One alert: what fired, for which sandbox (None: the runtime), and why."""

    name: str
    severity: str
    runtime: str
    sandbox: str | None
    summary: str
    value: float
    threshold: float
    at: float
    labels: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WebhookConfig:
    """Where alerts are POSTed: ``url`` (http or https), ``timeout`` seconds per
    attempt, ``retries`` after the first attempt, ``backoff`` seconds before the
    first retry (doubling), extra ``headers``.

    >>> WebhookConfig.build({"url": "ftp://x"})
    Traceback (most recent call last):
    ...
    runtime.errors.ConfigError: invalid alert_webhook.url='ftp://x': expected an http:// ...
    """

    url: str
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, value: WebhookConfig | str | Mapping[str, Any] | None) -> WebhookConfig | None:
        if value is None or isinstance(value, WebhookConfig):
            return value
        if isinstance(value, str):
            value = {"url": value}
        if not isinstance(value, Mapping):
            raise ConfigError("alert_webhook", value, "None, a URL, or a dict with 'url' and "
                              "optionally 'timeout', 'retries', 'backoff', 'headers'")
        known = {f.name for f in fields(cls)}
        for key in value:
            if key not in known:
                raise ConfigError(f"alert_webhook.{key}", value[key],
                                  f"one of {', '.join(sorted(known))}")
        url = value.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError("alert_webhook.url", url, "an http:// or https:// URL")
        for key in ("timeout", "backoff"):
            v = value.get(key, getattr(cls, key))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"alert_webhook.{key}", v, "a number of seconds > 0")
        retries = value.get("retries", cls.retries)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError("alert_webhook.retries", retries, "an integer >= 0")
        headers = value.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError("alert_webhook.headers", headers, "a dict of str to str")
        return cls(url, float(value.get("timeout", cls.timeout)), retries,
                   float(value.get("backoff", cls.backoff)), dict(headers))


class WebhookSender:
    """POSTs alerts, one JSON document each, from one background thread.

    A failed attempt (connection error, timeout, a non-2xx status) is retried
    ``retries`` times with a doubling backoff; then the alert is dropped, logged
    and reported as ``alert.webhook.failed``. :meth:`stop` waits up to
    ``timeout`` for what is queued.
    """

    def __init__(self, config: WebhookConfig, runtime: str) -> None:
        self.config = config
        self.runtime = runtime
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=1000)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sandbox-webhook:{runtime}",
                                        daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:  # a dead endpoint must not grow memory without bound
            telemetry.execute("alert.webhook.failed", {"attempts": 0},
                              {"runtime": self.runtime, "alert": alert.name, "error": "queue full"})

    def stop(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._halt.set()  # past the deadline: no more retries, and what is queued is dropped
        self._thread.join(self.config.timeout + 1.0)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None or self._halt.is_set():
                return
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps({"version": 1, "runtime": self.runtime, "alert": alert.as_dict()},
                          default=str).encode()
        md = {"runtime": self.runtime, "alert": alert.name, "sandbox": alert.sandbox,
              "url": self.config.url}
        delay, error = self.config.backoff, ""
        for attempt in range(1, self.config.retries + 2):
            request = urllib.request.Request(
                self.config.url, data=body, method="POST",
                headers={"Content-Type": "application/json", **self.config.headers})
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as resp:
                    resp.read()
                telemetry.execute("alert.webhook.sent", {"attempts": attempt}, md)
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
                error = f"{type(exc).__name__}: {exc}"
            if attempt <= self.config.retries and self._halt.wait(delay):
                break
            delay *= 2
        log.warning("alert %s could not be sent to %s: %s", alert.name, self.config.url, error)
        telemetry.execute("alert.webhook.failed", {"attempts": attempt}, {**md, "error": error})


class AlertManager:
    """Watches one runtime's telemetry and raises alerts (see the module doc)."""

    def __init__(self, runtime: str, thresholds: AlertThresholds,
                 webhook: WebhookConfig | None = None) -> None:
        self.runtime = runtime
        self.thresholds = thresholds
        self.webhook = webhook
        self.handler_id = f"sandbox.alerts:{runtime}:{id(self)}"
        self._lock = threading.Lock()
        self._own: dict[str, AlertThresholds] = {}
        self._times: dict[tuple[str, str], deque[float]] = {}
        self._last_fired: dict[tuple[str, str | None, str], float] = {}
        #: sandboxes restarted on request: their next process start is no crash
        self._requested: set[str] = set()
        self._recent: deque[Alert] = deque(maxlen=ALERTS_KEPT)
        self._sender: WebhookSender | None = None
        #: exported with the runtime's metrics (sandbox/health.py)
        self.fired = Counter("sandbox_alerts_total", "Alerts raised by the runtime itself "
                             "(sandbox/alerts.py), by alert and severity.", ("alert", "severity"))
        self._prefix = f"{runtime}/"
        self._dispatch: dict[str, Callable[[str, Mapping[str, Any], Mapping[str, Any]], None]] = {
            "sandbox.status": self._on_status,
            "sandbox.process.up": self._on_up,
            "process.system": self._on_notice,
            "supervisor.escalation": self._on_supervisor,
            "supervisor.restart": self._on_supervisor,
            "security.quarantine": self._on_quarantine,
            "limit.warning": self._on_limit,
            "limit.exceeded": self._on_limit,
            "sandbox.reload.exception": self._on_reload,
            "sandbox.rollback.exception": self._on_reload,
            "error.pattern": self._on_pattern,
            "sandbox.destroy.stop": self._on_destroyed,
            "sandbox.restart.start": self._on_requested,
        }

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.webhook is not None:
            self._sender = WebhookSender(self.webhook, self.runtime)
        telemetry.detach(self.handler_id)
        telemetry.attach(self.handler_id, "", self.handle)

    def stop(self) -> None:
        telemetry.detach(self.handler_id)
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.stop()

    def configure(self, sandbox: str, thresholds: AlertThresholds | None) -> None:
        """Use ``thresholds`` for ``sandbox`` (None: the runtime's)."""
        with self._lock:
            if thresholds is None:
                self._own.pop(sandbox, None)
            else:
                self._own[sandbox] = thresholds

    def forget(self, sandbox: str) -> None:
        """A destroyed sandbox: its thresholds and counts go."""
        with self._lock:
            self._own.pop(sandbox, None)
            self._requested.discard(sandbox)
            for key in [k for k in self._times if k[0] == sandbox]:
                del self._times[key]

    def limits_of(self, sandbox: str | None) -> AlertThresholds:
        return self._own.get(sandbox or "", self.thresholds)

    def recent(self, sandbox: str | None = None) -> list[Alert]:
        """Alerts raised (oldest first, the last :data:`ALERTS_KEPT`)."""
        with self._lock:
            return [a for a in self._recent if sandbox is None or a.sandbox == sandbox]

    # -- raising ---------------------------------------------------------------------------
    def fire(self, name: str, severity: str, sandbox: str | None, summary: str,
             value: float, threshold: float, **labels: str) -> Alert | None:
        """Raise an alert unless the same one was raised within ``repeat_after``."""
        now = time.time()
        key = (name, sandbox, "|".join(f"{k}={v}" for k, v in sorted(labels.items())))
        with self._lock:
            last = self._last_fired.get(key)
            if last is not None and now - last < self.limits_of(sandbox).repeat_after:
                return None
            self._last_fired[key] = now
            alert = Alert(name, severity, self.runtime, sandbox, summary, float(value),
                          float(threshold), now, dict(labels))
            self._recent.append(alert)
        self.fired.inc((name, severity))
        log.warning("alert %s (%s)%s: %s", name, severity,
                    f" sandbox {sandbox}" if sandbox else "", summary)
        telemetry.execute("alert.fire", {"value": alert.value, "threshold": alert.threshold},
                          alert.as_dict())
        sender = self._sender
        if sender is not None:
            sender.send(alert)
        return alert

    def _count(self, sandbox: str, what: str, window: float) -> int:
        """Record one ``what`` of ``sandbox`` now; how many within ``window`` seconds."""
        now = time.monotonic()
        with self._lock:
            times = self._times.setdefault((sandbox, what), deque(maxlen=1000))
            times.append(now)
            while times and times[0] < now - window:
                times.popleft()
            return len(times)

    def _restart(self, sid: str, process: bool) -> None:
        t = self.limits_of(sid)
        n = self._count(sid, "restart", t.window)
        if n >= t.restarts:
            self.fire("RestartStorm", "critical", sid,
                      f"{n} restarts of sandbox {sid!r} within {t.window:g}s", n, t.restarts)
        if process:
            flaps = self._count(sid, "flap", t.flap_window)
            if flaps >= t.flaps:
                self.fire("SandboxFlapping", "warning", sid,
                          f"sandbox {sid!r} went down and came back {flaps} times within "
                          f"{t.flap_window:g}s", flaps, t.flaps)

    # -- telemetry -------------------------------------------------------------------------
    def handle(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        fn = self._dispatch.get(event)
        if fn is not None:
            fn(event, m, md)

    def _on_status(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") == self.runtime and md.get("to") == "error":
            sid = str(md.get("sandbox"))
            self.fire("SandboxDown", "critical", sid,
                      f"sandbox {sid!r} is down: its restarts gave up (status error)", 1, 1)

    def _on_requested(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") == self.runtime:
            with self._lock:
                self._requested.add(str(md.get("sandbox")))

    def _on_up(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime or int(m.get("starts", 1)) <= 1:
            return
        sid = str(md.get("sandbox"))
        with self._lock:
            requested = sid in self._requested
            self._requested.discard(sid)
        if not requested:  # restart_sandbox() is no storm and no flap
            self._restart(sid, process=True)

    def _on_notice(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        name = str(md.get("name") or "")
        if not name.startswith(self._prefix):
            return
        sid = name[len(self._prefix):]
        raw = md.get("payload")
        payload: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if md.get("op") == "actor_restart":
            self._restart(sid, process=False)
        elif md.get("op") == "actor_escalation":
            sup = str(payload.get("supervisor", ""))
            self.fire("IntensityEscalation", "critical", sid,
                      f"supervisor {sup} inside sandbox {sid!r} reached its restart intensity",
                      1, 1, supervisor=sup)

    def _on_supervisor(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        sup = str(md.get("supervisor") or "")
        if not sup.startswith(self._prefix):
            return
        short = sup[len(self._prefix):].rsplit("#", 1)[0]
        sid = short[len("sandbox:"):] if short.startswith("sandbox:") else None
        if event == "supervisor.escalation":
            self.fire("IntensityEscalation", "critical", sid,
                      f"supervisor {short} of runtime {self.runtime} reached its restart "
                      "intensity", 1, 1, supervisor=short)
        elif short == "root":
            child = str(md.get("child"))
            self.fire("ComponentRestarting", "warning", None,
                      f"component {child} of runtime {self.runtime} was restarted "
                      f"({md.get('reason') or md.get('reason_kind')})", 1, 1, component=child)

    def _on_quarantine(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") == self.runtime:
            sid = str(md.get("sandbox"))
            self.fire("SandboxQuarantined", "critical", sid,
                      f"sandbox {sid!r} was quarantined by its security profile", 1, 1)

    def _on_limit(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        sid = str(md.get("sandbox"))
        resource = str(md.get("limit") or md.get("resource") or "")
        value, limit = float(m.get("value") or 0), float(m.get("limit") or 0)
        if event == "limit.warning":
            warn_at = float(m.get("warn_at") or self.limits_of(sid).warn_at)
            self.fire("ResourceNearLimit", "warning", sid,
                      f"sandbox {sid!r} uses {value:.1f} of its {resource} limit {limit:g} "
                      f"(warns at {warn_at:.0%})", value, limit * warn_at,
                      resource=_NEAR.get(resource, resource))
        else:
            self.fire("ResourceLimitReached", "critical", sid,
                      f"sandbox {sid!r} reached its {resource} limit ({value:.1f} > {limit:g}); "
                      f"action: {md.get('action')}", value, limit,
                      resource=_NEAR.get(resource, resource))

    def _on_reload(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        sid = str(md.get("sandbox"))
        t = self.limits_of(sid)
        n = self._count(sid, "reload_failure", t.window)
        if n >= t.reload_failures:
            self.fire("ReloadFailures", "warning", sid,
                      f"{n} failed reloads of sandbox {sid!r} within {t.window:g}s",
                      n, t.reload_failures)

    def _on_destroyed(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") == self.runtime:
            self.forget(str(md.get("sandbox")))

    def _on_pattern(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        sid = str(md.get("sandbox"))
        n = int(m.get("count") or 0)
        t = self.limits_of(sid)
        if n >= t.error_repeats:
            where = f" at {md['location']}" if md.get("location") else ""
            self.fire("RecurringError", "warning", sid,
                      f"{md.get('type')}{where} seen {n} times: {md.get('message')}; "
                      f"remedy: {md.get('remedy')}", n, t.error_repeats,
                      fingerprint=str(md.get("fingerprint")), category=str(md.get("category")))
