"""Alerts (sandbox/alerts.py) and error patterns (sandbox/patterns.py), against real
sandboxes and a real webhook: an http.server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import Recorder, wait_for
from test_metrics import parse, value

import runtime
import sandbox
from actors.config import AlertThresholds
from runtime.errors import ActorFailed, ConfigError, SandboxError
from sandbox.alerts import AlertManager, WebhookConfig

CRASHY = {
    "app.py": """
        from worker import Worker

        def children():
            return [Worker.child_spec(name="worker")]
    """,
    "worker.py": """
        import os
        from runtime.genserver import GenServer

        class Worker(GenServer):
            def init(self):
                return 0

            def handle_call(self, request, state):
                if request == "boom":
                    return 1 // state, state
                if request == "die":
                    os._exit(3)
                return state, state
    """,
}


class Hook:
    """A webhook receiver: records each POSTed JSON body; answers ``fail_first``
    requests with 503; with ``hang`` set, holds every request until the test ends."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self.fail_first = 0
        self.hang = False
        self.release = threading.Event()
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.cond:
                    hook.requests += 1
                    n = hook.requests
                if hook.hang:
                    hook.release.wait(30)
                    return
                if n <= hook.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                with hook.cond:
                    hook.bodies.append(json.loads(body))
                    hook.cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, name: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [b["alert"] for b in self.bodies if name is None or b["alert"]["name"] == name]

    def wait(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(b["alert"]["name"] == name for b in self.bodies),
                                    timeout)
        assert ok, f"no {name} alert reached the webhook; got {[a['name'] for a in self.alerts()]}"
        return self.alerts(name)[0]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    try:
        yield h
    finally:
        h.close()


def fired(rt: Any, name: str, sandbox: str | None) -> dict[str, Any]:
    """Wait for alert ``name`` of ``sandbox`` to be raised; returns it."""
    return wait_for(lambda: next((a for a in rt.alerts() if a["name"] == name
                                  and a["sandbox"] == sandbox), None), 30,
                    message=f"alert {name} of {sandbox}")


def _restarted(rec: Recorder, n: int) -> None:
    rec.wait("process.system", count=n, timeout=30, op="actor_restart")


@pytest.mark.timeout(120)
def test_crash_loop_is_one_pattern_with_a_rising_count_and_alerts_the_webhook(app_dir, hook):
    with sandbox.start(alert_webhook=hook.url,
                       alerts={"error_repeats": 3, "restarts": 3, "window": 300}) as rt:
        calm = [rt.create_sandbox(f"calm{i}", "examples/counter") for i in range(2)]
        sb = rt.create_sandbox("loop", app_dir(CRASHY))
        counts = []
        with Recorder("process.system") as rec:
            for n in (1, 2, 3):
                with pytest.raises(ActorFailed, match="ZeroDivisionError"):
                    sb.call("worker", "boom")
                _restarted(rec, n)
                patterns = rt.error_patterns("loop")
                assert len(patterns) == 1, patterns
                counts.append(patterns[0]["count"])
        assert counts == [1, 2, 3]
        p = rt.error_patterns()[0]
        assert p["type"] == "ZeroDivisionError"
        assert p["location"].endswith("worker.py:11 in handle_call")
        assert p["sandboxes"] == {"loop": 3} and p["category"] == "runtime"
        assert p["first_seen"] <= p["last_seen"] and "hot_reload" in p["remedy"]
        assert all(c.call("counter", "incr") == 1 for c in calm)  # the others are untouched
        assert rt.error_patterns("calm0") == []
        assert rt.health()["error_patterns"][0]["fingerprint"] == p["fingerprint"]

        recurring = hook.wait("RecurringError")
        assert all(b["version"] == 1 and b["runtime"] == rt.name for b in hook.bodies)
        assert recurring["sandbox"] == "loop" and recurring["value"] == 3
        assert recurring["labels"]["fingerprint"] == p["fingerprint"]
        storm = hook.wait("RestartStorm")
        assert storm["severity"] == "critical" and storm["runtime"] == rt.name
        assert {a["name"] for a in rt.alerts("loop")} >= {"RecurringError", "RestartStorm"}

        fams = parse(rt.metrics_text())
        assert value(fams, "sandbox_actor_restarts_total", sandbox="loop", actor="worker") == 3
        assert value(fams, "sandbox_error_pattern_occurrences_total",
                     fingerprint=p["fingerprint"], type="ZeroDivisionError") == 3


def test_a_sandbox_past_its_intensity_is_down_and_escalated(sandbox_runtime, app_dir):
    rt = sandbox_runtime
    sb = rt.create_sandbox("once", app_dir(CRASHY), max_restarts=0)
    with pytest.raises(SandboxError):
        sb.call("worker", "die")
    assert fired(rt, "SandboxDown", "once")["severity"] == "critical"
    assert fired(rt, "IntensityEscalation", "once")["labels"] == {"supervisor": "sandbox:once"}
    [pattern] = rt.error_patterns("once")
    assert pattern["type"] == "exit" and "<n>" in pattern["message"]


@pytest.mark.sandbox_runtime(alerts={"flaps": 2, "restarts": 2})
def test_crashes_flap_but_requested_restarts_do_not(sandbox_runtime, app_dir):
    rt = sandbox_runtime
    sb = rt.create_sandbox("flappy", app_dir(CRASHY))
    for _ in range(2):
        sb.restart()
    assert [a["name"] for a in rt.alerts("flappy")] == []
    for _ in range(2):
        pid = sb.info()["pid"]
        with pytest.raises(SandboxError):
            sb.call("worker", "die")
        wait_for(lambda pid=pid: sb.info()["pid"] not in (None, pid), 30)
    assert fired(rt, "SandboxFlapping", "flappy")["value"] == 2


def test_failed_reloads_and_component_restarts_alert(sandbox_runtime):
    rt = sandbox_runtime
    sb = rt.create_sandbox("reloads", "examples/counter")
    with Recorder("alert.fire") as rec:
        with pytest.raises(runtime.CompileError):
            sb.hot_reload(source={"counter": "def broken(:\n"})
        assert fired(rt, "ReloadFailures", "reloads")["value"] == 1
        # not the compiler: a killed compiler leaves its worker process running
        rt.component("versions").kill(runtime.ExitReason("exception", "killed by the test"))
        assert fired(rt, "ComponentRestarting", None)["labels"] == {"component": "versions"}
        # each alert is also a telemetry event (emitted just after it is listed)
        wait_for(lambda: {e.metadata["name"] for e in rec.events}
                 >= {"ReloadFailures", "ComponentRestarting"}, 30)


@pytest.mark.parametrize(("runtime_alerts", "sandbox_alerts", "warns"), [
    ({"warn_at": 0.001}, None, True),       # the runtime's level reaches the monitor
    (None, {"warn_at": 0.001}, True),       # and a sandbox's own
    ({"warn_at": 0.001}, {"warn_at": 1.0}, False),  # the sandbox's wins
    (None, None, False),                    # 80 % of 1,000 files is far off
])
def test_warning_level_per_runtime_and_per_sandbox(runtime_alerts, sandbox_alerts, warns):
    with sandbox.start(alerts=runtime_alerts, monitor_interval=60) as rt:
        rt.create_sandbox("near", "examples/counter", limits={"open_files": 1000},
                          alerts=sandbox_alerts)
        with Recorder("limit.warning") as rec:
            wait_for(lambda: rt.component("monitor").invoke("sample_now") == 1, 30)
            near = {a["labels"]["resource"]: a for a in rt.alerts("near")
                    if a["name"] == "ResourceNearLimit"}
        assert ("open_files" in near) == warns, near
        files = rec.named("limit.warning", sandbox="near", limit="open_files")
        assert bool(files) == warns
        if warns:
            assert files[0].measurements["warn_at"] == 0.001
            assert near["open_files"]["threshold"] == pytest.approx(1.0)


@pytest.mark.parametrize(("fail_first", "retries", "sent"), [
    (2, 3, True),   # two 503s, then delivered on the third attempt
    (5, 1, False),  # retries exhausted: dropped and reported
])
def test_webhook_retries(hook, fail_first, retries, sent):
    hook.fail_first = fail_first
    manager = AlertManager("wh", AlertThresholds(),
                           WebhookConfig.build({"url": hook.url, "retries": retries,
                                                "backoff": 0.01}))
    manager.start()
    try:
        with Recorder("alert.webhook") as rec:
            manager.fire("SandboxDown", "critical", "s", "test", 1, 1)
            [ev] = rec.wait("alert.webhook.sent" if sent else "alert.webhook.failed",
                            timeout=30, runtime="wh")
    finally:
        manager.stop()
    assert ev.measurements["attempts"] == (fail_first + 1 if sent else retries + 1)
    assert hook.requests == ev.measurements["attempts"]
    assert [a["name"] for a in hook.alerts()] == (["SandboxDown"] if sent else [])


def test_webhook_timeout_gives_up(hook):
    hook.hang = True
    manager = AlertManager("wt", AlertThresholds(), WebhookConfig.build(
        {"url": hook.url, "timeout": 0.3, "retries": 0}))
    manager.start()
    try:
        with Recorder("alert.webhook") as rec:
            manager.fire("SandboxDown", "critical", "s", "test", 1, 1)
            [ev] = rec.wait("alert.webhook.failed", timeout=30, runtime="wt")
    finally:
        manager.stop()
    assert "timed out" in ev.metadata["error"]


def test_documented_defaults():
    # docs/operations.md, "Alerts and the webhook" and "Error patterns"
    from sandbox.alerts import ALERTS_KEPT
    from sandbox.patterns import MAX_PATTERNS

    assert AlertThresholds().as_dict() == {
        "warn_at": 0.8, "restarts": 5, "window": 60.0, "flaps": 3, "flap_window": 300.0,
        "error_repeats": 3, "reload_failures": 1, "repeat_after": 300.0}
    hook = WebhookConfig.build("http://127.0.0.1:9/x")
    assert (hook.timeout, hook.retries, hook.backoff) == (5.0, 3, 0.5)
    assert ALERTS_KEPT == MAX_PATTERNS == 200


def test_the_same_alert_is_not_repeated_within_repeat_after():
    manager = AlertManager("rep", AlertThresholds(repeat_after=3600))
    assert manager.fire("SandboxDown", "critical", "s", "x", 1, 1) is not None
    assert manager.fire("SandboxDown", "critical", "s", "x", 1, 1) is None
    assert manager.fire("SandboxDown", "critical", "t", "x", 1, 1) is not None
    assert [a.sandbox for a in manager.recent()] == ["s", "t"]


@pytest.mark.parametrize(("options", "option"), [
    ({"alerts": {"warn_at": 2}}, "alerts.warn_at"),
    ({"alerts": {"restart": 5}}, "alerts.restart"),
    ({"alerts": {"window": 0}}, "alerts.window"),
    ({"alerts": "high"}, "alerts"),
    ({"alert_webhook": "ftp://example.org"}, "alert_webhook.url"),
    ({"alert_webhook": {"url": "http://x", "retries": -1}}, "alert_webhook.retries"),
])
def test_bad_alert_options_are_refused_before_anything_starts(options, option):
    with pytest.raises(ConfigError, match=f"invalid {option}="):
        sandbox.start(**options)


def test_bad_sandbox_alerts_are_refused(sandbox_runtime):
    with pytest.raises(ConfigError, match="invalid alerts.flaps="):
        sandbox_runtime.create_sandbox("bad", "examples/counter", alerts={"flaps": 0})
    assert sandbox_runtime.list_sandboxes() == []
