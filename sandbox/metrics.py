"""Metrics: counters and histograms aggregated from telemetry, exposed through prometheus-client.

Each runtime keeps a :class:`RuntimeMetrics`: a telemetry handler that folds the
runtime's events (those whose metadata names it, or that run under one of its
operations) into counters and histograms, and the per-sandbox state
:mod:`sandbox.health` reports. Calls are not telemetry events (one per call
would cost more than the call's own bookkeeping): :class:`CallMetrics` counts
them in place, under one uncontended lock.

The exposition is prometheus-client's: each runtime has its own
:class:`~prometheus_client.CollectorRegistry` (never the process-global one, so
two runtimes in one process do not mix), and :class:`RuntimeMetrics` is a custom
collector on it that turns these counters into metric families at scrape time.
The counters are kept here rather than as prometheus-client's own metric types
because a call is recorded on the hot path (one bisect, one lock) and a
destroyed sandbox's series must go away with it.

>>> reg = Registry()
>>> c = reg.counter("demo_events_total", "Events seen.", ("kind",))
>>> c.inc(("a",)); c.inc(("a",), 2)
>>> h = reg.histogram("demo_seconds", "Durations.", (), buckets=(0.1, 1.0))
>>> h.observe((), 0.5)
>>> print(reg.text(), end="")
# HELP demo_events_total Events seen.
# TYPE demo_events_total counter
demo_events_total{kind="a"} 3.0
# HELP demo_seconds Durations.
# TYPE demo_seconds histogram
demo_seconds_bucket{le="0.1"} 0.0
demo_seconds_bucket{le="1"} 1.0
demo_seconds_bucket{le="+Inf"} 1.0
demo_seconds_count 1.0
demo_seconds_sum 0.5
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runtime import telemetry
from runtime.logs import _context as _log_context
from runtime.recovery import annotate
from sandbox.patterns import ErrorPatterns

__all__ = [
    "CONTENT_TYPE",
    "CALL_BUCKETS",
    "RELOAD_BUCKETS",
    "CallMetrics",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "RuntimeMetrics",
    "exposition",
]

#: The text format 0.0.4, which every Prometheus scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds; a call round trip is tens of microseconds.
CALL_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds; a reload compiles, plans and swaps.
RELOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[str, ...]


def _num(value: float) -> str:
    """A bucket bound as the ``le`` label writes it.

    >>> _num(3.0), _num(0.25), _num(math.inf), _num(1e-05)
    ('3', '0.25', '+Inf', '1e-05')
    """
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    type = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def family(self) -> Metric:
        """This metric's samples now, as a prometheus-client metric family."""
        raise NotImplementedError

    def drop(self, label: str, value: str) -> None:
        """Forget every series whose label ``label`` is ``value`` (a destroyed sandbox)."""
        if label not in self.labelnames:
            return
        i = self.labelnames.index(label)
        with self._lock:
            for key in [k for k in self._series() if k[i] == value]:
                del self._series()[key]

    def _series(self) -> dict[Labels, Any]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    type = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.values: dict[Labels, float] = {}

    def _series(self) -> dict[Labels, Any]:
        return self.values

    def inc(self, labels: Labels = (), amount: float = 1) -> None:
        with self._lock:
            self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, labels: Labels = ()) -> float:
        return self.values.get(labels, 0)

    def family(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.help, labels=self.labelnames)
        with self._lock:
            items = sorted(self.values.items())
        for key, v in items:
            fam.add_metric(list(key), v)
        return fam


class Gauge(Counter):
    """A value that goes up and down; ``set`` replaces it."""

    type = "gauge"

    def set(self, labels: Labels, value: float) -> None:
        with self._lock:
            self.values[labels] = value

    def family(self) -> Metric:
        fam = GaugeMetricFamily(self.name, self.help, labels=self.labelnames)
        with self._lock:
            items = sorted(self.values.items())
        for key, v in items:
            fam.add_metric(list(key), v)
        return fam


class _Series:
    __slots__ = ("buckets", "sum", "count")

    def __init__(self, n: int) -> None:
        self.buckets = [0] * (n + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0


class Histogram(_Metric):
    """Observations in cumulative ``le`` buckets, with their sum and count."""

    type = "histogram"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (),
        buckets: Sequence[float] = RELOAD_BUCKETS,
    ) -> None:
        super().__init__(name, help, labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.series: dict[Labels, _Series] = {}

    def _series(self) -> dict[Labels, Any]:
        return self.series

    def observe(self, labels: Labels, value: float) -> None:
        i = bisect_left(self.bounds, value)  # first bound >= value: le is inclusive
        with self._lock:
            s = self.series.get(labels)
            if s is None:
                s = self.series[labels] = _Series(len(self.bounds))
            s.buckets[i] += 1
            s.sum += value
            s.count += 1

    def count(self, labels: Labels = ()) -> int:
        s = self.series.get(labels)
        return s.count if s is not None else 0

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.help, labels=self.labelnames)
        with self._lock:
            items = sorted((k, list(s.buckets), s.sum) for k, s in self.series.items())
        les = [_num(b) for b in (*self.bounds, math.inf)]
        for key, buckets, total in items:
            running, cumulative = 0, []
            for le, n in zip(les, buckets):
                running += n
                cumulative.append((le, running))
            fam.add_metric(list(key), cumulative, total)
        return fam


class _Families:
    """A collector over a fixed list of metrics (prometheus-client calls ``collect``)."""

    def __init__(self, metrics: Iterable[_Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        for m in self.metrics:
            yield m.family()


class Registry(_Families):
    """An ordered set of metrics, collected together."""

    def __init__(self) -> None:
        super().__init__(())

    def _add(self, metric: Any) -> Any:
        self.metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = RELOAD_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labelnames, buckets))

    def drop(self, label: str, value: str) -> None:
        for m in self.metrics:
            m.drop(label, value)

    def text(self) -> str:
        return exposition(self.metrics)


def exposition(metrics: Iterable[_Metric]) -> str:
    """The Prometheus text format (0.0.4) of ``metrics``, written by prometheus-client."""
    return generate_latest(_Families(metrics)).decode()


# -- calls ---------------------------------------------------------------------------------


class CallMetrics(Histogram):
    """Call count, errors and latency per sandbox, recorded by ``Sandbox.call`` itself.

    ``observe_call`` costs one bisect and one uncontended lock: well under a
    microsecond against a round trip of tens of microseconds.
    """

    def __init__(self) -> None:
        super().__init__(
            "sandbox_call_duration_seconds",
            "Round trip of Sandbox.call, from the host, per sandbox (seconds).",
            ("sandbox",),
            CALL_BUCKETS,
        )
        self.errors: dict[str, int] = {}

    def observe_call(self, sandbox: str, seconds: float, ok: bool) -> None:
        i = bisect_left(self.bounds, seconds)
        lock = self._lock  # acquire/release, not ``with``: every call passes here
        lock.acquire()
        try:
            s = self.series.get((sandbox,))
            if s is None:
                s = self.series[(sandbox,)] = _Series(len(self.bounds))
            s.buckets[i] += 1
            s.sum += seconds
            s.count += 1
            if not ok:
                self.errors[sandbox] = self.errors.get(sandbox, 0) + 1
        finally:
            lock.release()

    def drop(self, label: str, value: str) -> None:
        super().drop(label, value)
        if label == "sandbox":
            with self._lock:
                self.errors.pop(value, None)

    def totals(self) -> tuple[Counter, Counter]:
        """``sandbox_calls_total`` and ``sandbox_call_errors_total``, as counters."""
        calls = Counter("sandbox_calls_total", "Calls made through Sandbox.call.", ("sandbox",))
        errors = Counter("sandbox_call_errors_total",
                         "Calls through Sandbox.call that raised.", ("sandbox",))
        with self._lock:
            for key, s in self.series.items():
                calls.values[key] = s.count
            for sandbox, n in self.errors.items():
                errors.values[(sandbox,)] = n
        return calls, errors


# -- the runtime's metrics -----------------------------------------------------------------

_OPERATIONS = ("create", "destroy", "restart")


class RuntimeMetrics:
    """The counters and histograms of one runtime, fed by telemetry.

    Also tracks what :mod:`sandbox.health` reports without asking any actor:
    each sandbox's status, pid, process restarts and last failure, and the
    restarts of the runtime's components.
    """

    def __init__(self, runtime_name: str) -> None:
        self.runtime = runtime_name
        self.handler_id = f"sandbox.metrics:{runtime_name}:{id(self)}"
        r = self.registry = Registry()
        self.operations = r.counter(
            "sandbox_operations_total",
            "Sandbox operations (create, destroy, restart) by outcome.", ("operation", "outcome"))
        self.operation_seconds = r.histogram(
            "sandbox_operation_duration_seconds",
            "Duration of sandbox operations (seconds).", ("operation",))
        self.reloads = r.counter(
            "sandbox_reloads_total",
            "Hot reloads and rollbacks by sandbox, kind (reload, rollback) and outcome.",
            ("sandbox", "kind", "outcome"))
        self.reload_seconds = r.histogram(
            "sandbox_reload_duration_seconds",
            "Latency of hot reloads and rollbacks, compile to committed swap (seconds).",
            ("kind",))
        self.restarts = r.counter(
            "sandbox_restarts_total",
            "Sandbox processes started again (after a crash or a requested restart).",
            ("sandbox",))
        self.crashes = r.counter(
            "sandbox_crashes_total",
            "Sandbox processes that ended abnormally, by error category.",
            ("sandbox", "category"))
        self.status_changes = r.counter(
            "sandbox_status_changes_total", "Sandbox status transitions, by new status.",
            ("status",))
        self.compiles = r.counter(
            "sandbox_compiles_total", "Compilations by outcome.", ("outcome",))
        self.compile_seconds = r.histogram(
            "sandbox_compile_duration_seconds", "Duration of compilations (seconds).")
        self.compiled_modules = r.counter(
            "sandbox_compiled_modules_total",
            "Modules compiled, by where the code came from (cache, compiler).", ("source",))
        self.violations = r.counter(
            "sandbox_security_violations_total",
            "Operations refused by a sandbox's security profile.", ("sandbox",))
        self.security_events = r.counter(
            "sandbox_security_events_total",
            "Other security events (scan.blocked, quarantine), by event.", ("sandbox", "event"))
        self.limit_events = r.counter(
            "sandbox_limit_events_total",
            "Resource limit events (warning, exceeded), by event and resource.",
            ("sandbox", "event", "resource"))
        self.protocol_errors = r.counter(
            "sandbox_protocol_errors_total",
            "Sandbox processes killed for breaking the mailbox protocol.", ("sandbox",))
        self.output_dropped = r.counter(
            "sandbox_output_dropped_bytes_total",
            "Bytes of a sandbox's stdout/stderr dropped by its rate or size cap.", ("sandbox",))
        self.supervisor_restarts = r.counter(
            "sandbox_supervisor_restarts_total",
            "Child restarts by the runtime's supervisors.", ("supervisor", "child"))
        self.escalations = r.counter(
            "sandbox_supervisor_escalations_total",
            "Supervisors of the runtime that reached their restart intensity.", ("supervisor",))
        self.watcher_events = r.counter(
            "sandbox_watcher_events_total", "File watcher events, by event.", ("event",))
        self.actor_restarts = r.counter(
            "sandbox_actor_restarts_total",
            "Actors inside sandboxes restarted by the app's supervisors.", ("sandbox", "actor"))
        self.actor_escalations = r.counter(
            "sandbox_actor_escalations_total",
            "Supervisors inside sandboxes that reached their restart intensity.", ("sandbox",))
        #: recurring errors by fingerprint (sandbox/patterns.py)
        self.patterns = ErrorPatterns()
        self.calls = CallMetrics()
        self._lock = threading.Lock()
        #: sandbox id -> {"status", "pid", "starts", "last_error", "since"}
        self.sandboxes: dict[str, dict[str, Any]] = {}
        #: component (root child id) -> restarts
        self.component_restarts: dict[str, int] = {}
        self._prefix = f"{runtime_name}/"
        self._root = f"{runtime_name}/root#"
        self._dispatch = {
            "sandbox.status": self._on_status,
            "sandbox.process.up": self._on_up,
            "sandbox.process.down": self._on_down,
            "sandbox.reload.stop": self._on_reload,
            "sandbox.reload.exception": self._on_reload,
            "sandbox.rollback.stop": self._on_reload,
            "sandbox.rollback.exception": self._on_reload,
            "compile.stop": self._on_compile,
            "compile.exception": self._on_compile,
            "security.violation": self._on_violation,
            "security.scan.blocked": self._on_security,
            "security.quarantine": self._on_security,
            "process.protocol_error": self._on_protocol,
            "process.output_dropped": self._on_output_dropped,
            "supervisor.restart": self._on_supervisor,
            "supervisor.escalation": self._on_supervisor,
            "process.system": self._on_notice,
        }
        for op in _OPERATIONS:
            self._dispatch[f"sandbox.{op}.stop"] = self._on_operation
            self._dispatch[f"sandbox.{op}.exception"] = self._on_operation

    # -- attaching -----------------------------------------------------------------------
    def attach(self) -> None:
        telemetry.detach(self.handler_id)
        telemetry.attach(self.handler_id, "", self.handle)

    def detach(self) -> None:
        telemetry.detach(self.handler_id)

    def _mine(self, md: Mapping[str, Any]) -> bool:
        rt = md.get("runtime")
        if rt is None:
            ctx = _log_context.get()
            rt = ctx.get("runtime") if ctx is not None else None
        return rt == self.runtime

    def handle(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        fn = self._dispatch.get(event)
        if fn is not None:
            fn(event, m, md)
        elif event.startswith("limit."):
            if self._mine(md):
                self.limit_events.inc((str(md.get("sandbox")), event[len("limit."):],
                                       str(md.get("resource", md.get("limit", "")))))
        elif event.startswith("watcher."):
            if self._mine(md):
                self.watcher_events.inc((event[len("watcher."):],))

    # -- handlers ------------------------------------------------------------------------
    def _on_operation(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        _, op, end = event.split(".")
        self.operations.inc((op, "ok" if end == "stop" else "error"))
        self.operation_seconds.observe((op,), float(m.get("duration", 0.0)))
        sid = str(md.get("sandbox"))
        if (op == "destroy" and end == "stop") or (op == "create" and end == "exception"):
            with self._lock:
                self.sandboxes.pop(sid, None)
            self.registry.drop("sandbox", sid)
            self.calls.drop("sandbox", sid)

    def _entry(self, sid: str) -> dict[str, Any]:
        entry = self.sandboxes.get(sid)
        if entry is None:
            entry = self.sandboxes[sid] = {
                "status": "initializing", "pid": None, "starts": 0, "last_error": None,
                "since": time.time(),
            }
        return entry

    def _on_status(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        to = str(md.get("to"))
        self.status_changes.inc((to,))
        with self._lock:
            entry = self._entry(str(md.get("sandbox")))
            entry["status"] = to
            entry["since"] = m.get("system_time", time.time())

    def _on_up(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        sid = str(md.get("sandbox"))
        starts = int(m.get("starts", 1))
        with self._lock:
            entry = self._entry(sid)
            entry["pid"], entry["starts"] = m.get("pid"), starts
        if starts > 1:
            self.restarts.inc((sid,))

    def _on_down(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        sid = str(md.get("sandbox"))
        kind = md.get("kind")
        with self._lock:
            entry = self._entry(sid)
            entry["pid"] = None
        if kind in ("normal", "shutdown"):
            return
        error = annotate({"kind": kind, "message": md.get("reason"), "at": time.time()})
        assert error is not None
        with self._lock:
            self._entry(sid)["last_error"] = error
        self.crashes.inc((sid, error["category"]))
        self._pattern(sid, str(md.get("reason") or kind), None, str(kind))

    def _on_reload(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") != self.runtime:
            return
        _, kind, end = event.split(".")
        self.reloads.inc((str(md.get("sandbox")), kind, "ok" if end == "stop" else "error"))
        self.reload_seconds.observe((kind,), float(m.get("duration", 0.0)))

    def _on_compile(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if not self._mine(md):
            return
        failed = event.endswith(".exception") or bool(md.get("errors"))
        self.compiles.inc(("error" if failed else "ok",))
        self.compile_seconds.observe((), float(m.get("duration", 0.0)))
        if md.get("cached"):
            self.compiled_modules.inc(("cache",), int(md["cached"]))
        if md.get("compiled"):
            self.compiled_modules.inc(("compiler",), int(md["compiled"]))

    def _on_violation(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if self._mine(md):
            self.violations.inc((str(md.get("sandbox")),))

    def _on_security(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if self._mine(md):
            self.security_events.inc((str(md.get("sandbox")), event[len("security."):]))

    def _on_protocol(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        name = str(md.get("name") or "")
        if name.startswith(self._prefix):
            self.protocol_errors.inc((name[len(self._prefix):],))

    def _on_notice(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        """Supervisor events inside a sandbox (runtime/child/notices.py)."""
        name = str(md.get("name") or "")
        op, payload = md.get("op"), md.get("payload")
        if not name.startswith(self._prefix) or not isinstance(payload, Mapping):
            return
        sid = name[len(self._prefix):]
        if op == "actor_restart":
            self.actor_restarts.inc((sid, str(payload.get("child"))))
            self._pattern(sid, str(payload.get("reason") or ""),
                          str(payload.get("traceback") or "") or None,
                          str(payload.get("reason_kind") or ""))
        elif op == "actor_escalation":
            self.actor_escalations.inc((sid,))

    def _pattern(self, sid: str, message: str, tb: str | None, kind: str) -> None:
        p = self.patterns.record(sid, message, traceback=tb, kind=kind)
        telemetry.execute(
            "error.pattern", {"count": p.count},
            {"runtime": self.runtime, "sandbox": sid, "fingerprint": p.fingerprint,
             "type": p.type, "location": p.location, "message": p.message,
             "category": p.category, "remedy": p.remedy},
        )

    def _on_output_dropped(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("runtime") == self.runtime:
            self.output_dropped.inc((str(md.get("sandbox")),), int(m.get("bytes", 0)))

    def _on_supervisor(self, event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        sup = str(md.get("supervisor") or "")
        if not sup.startswith(self._prefix):
            return
        short = sup[len(self._prefix):].rsplit("#", 1)[0]
        if event == "supervisor.escalation":
            self.escalations.inc((short,))
            return
        child = str(md.get("child"))
        self.supervisor_restarts.inc((short, child))
        if sup.startswith(self._root):
            with self._lock:
                self.component_restarts[child] = self.component_restarts.get(child, 0) + 1

    # -- reading -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Per-sandbox state and component restarts (copies)."""
        with self._lock:
            return {
                "sandboxes": {k: dict(v) for k, v in self.sandboxes.items()},
                "component_restarts": dict(self.component_restarts),
            }

    def families(self) -> list[_Metric]:
        """Every metric, the call counters and error patterns included, in exposition order."""
        calls, errors = self.calls.totals()
        occurrences = Counter(
            "sandbox_error_pattern_occurrences_total",
            "Occurrences of each recurring error (sandbox/patterns.py), by fingerprint.",
            ("fingerprint", "type", "category"))
        for p in self.patterns.patterns():
            occurrences.values[(p.fingerprint, p.type, p.category)] = p.count
        return [*self.registry.metrics, calls, errors, self.calls, occurrences]

    def collect(self) -> Iterator[Metric]:
        """The prometheus-client collector protocol: every family, built now."""
        for m in self.families():
            yield m.family()

    def text(self, extra: Iterable[_Metric] = ()) -> str:
        return exposition([*self.families(), *extra])
