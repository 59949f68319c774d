"""rt.health(), and /health and /metrics served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import Recorder, wait_for
from test_metrics import parse, parse_with_prometheus_client, value

import runtime
import sandbox
from runtime.errors import ConfigError, SandboxError

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "examples" / "counter"

DYING = {
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
                if request == "die":
                    os._exit(3)
                return "ok", state
    """,
}


def _app(directory: Path) -> Path:
    directory.mkdir()
    for name, text in DYING.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def get(rt: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = rt.http_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:  # 404, 503: still an answer
        with err:
            return err.code, dict(err.headers), err.read()


def test_health_of_a_healthy_runtime(sandbox_runtime):
    rt = sandbox_runtime
    rt.create_sandbox("h1", COUNTER)
    h = rt.health()
    assert h["status"] == "ok" and h["runtime"] == rt.name and h["uptime"] > 0
    assert set(h["components"]) >= {"root", "sandboxes", "compiler", "versions", "manager"}
    assert all(c == {"alive": True, "restarts": 0} for c in h["components"].values())
    s = h["sandboxes"]["h1"]
    assert s["status"] == "running" and s["ok"] and s["restarts"] == 0
    assert s["pid"] == rt.get_sandbox_info("h1")["pid"] and s["last_error"] is None
    json.dumps(h)  # plain data


def test_a_failing_sandbox_degrades_health_with_its_error(sandbox_runtime, tmp_path):
    rt = sandbox_runtime
    rt.create_sandbox("fine", COUNTER)
    sb = rt.create_sandbox("fragile", _app(tmp_path / "app"), profile="low", max_restarts=0)
    with pytest.raises(SandboxError):
        sb.call("worker", "die")
    wait_for(lambda: rt.health()["sandboxes"]["fragile"]["status"] == "error", 30)
    h = rt.health()
    assert h["status"] == "degraded"
    assert h["sandboxes"]["fine"]["ok"] and not h["sandboxes"]["fragile"]["ok"]
    err = h["sandboxes"]["fragile"]["last_error"]
    assert err["kind"] == "exit" and "code 3" in err["message"]
    assert (err["category"], err["recovery"]) == ("runtime", "restart") and err["remedy"]
    # destroying it makes the runtime healthy again
    sb.destroy()
    assert rt.health()["status"] == "ok" and "fragile" not in rt.health()["sandboxes"]


def test_component_restarts_are_counted(sandbox_runtime):
    rt = sandbox_runtime
    compiler = rt.component("compiler")
    with Recorder("supervisor.restart") as rec:
        compiler.kill(runtime.ExitReason("exception", "killed by the test"))
        rec.wait("supervisor.restart", child="compiler", timeout=30)
    wait_for(lambda: rt.component("compiler") is not compiler, 30)
    h = wait_for(lambda: (lambda h: h if h["status"] == "ok" else None)(rt.health()), 30)
    assert h["components"]["compiler"] == {"alive": True, "restarts": 1}
    assert h["components"]["manager"]["restarts"] == 0
    fams = parse(rt.metrics_text())
    assert value(fams, "sandbox_supervisor_restarts_total", supervisor="root", child="compiler") == 1


def test_a_stopped_runtime_is_down():
    rt = sandbox.start(name=f"h-down{os.getpid()}")
    assert rt.health()["status"] == "ok"
    rt.stop()
    h = rt.health()
    assert h["status"] == "down" and not h["components"]["root"]["alive"]
    assert value(parse(rt.metrics_text()), "sandbox_runtime_up") == 0


@pytest.mark.sandbox_runtime(http=("127.0.0.1", 0))
def test_health_and_metrics_over_http(sandbox_runtime, tmp_path):
    rt = sandbox_runtime
    host, port = rt.http_address
    assert host == "127.0.0.1" and port > 0
    sb = rt.create_sandbox("web", COUNTER)
    for _ in range(3):
        sb.call("counter", "incr")
    sb.hot_reload()

    status, headers, body = get(rt, "/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["sandboxes"]["web"]["status"] == "running"

    status, headers, body = get(rt, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    fams = parse(text)  # the test's own strict parser
    assert value(fams, "sandbox_calls_total", sandbox="web") == 3
    assert value(fams, "sandbox_reloads_total", sandbox="web", kind="reload", outcome="ok") == 1
    assert value(fams, "sandbox_up", sandbox="web", status="running") == 1
    pc = parse_with_prometheus_client(text)  # skipped (with its reason) without the extra
    calls = {s.labels["sandbox"]: s.value for s in pc["sandbox_calls"].samples
             if s.name == "sandbox_calls_total"}
    assert calls == {"web": 3.0}
    assert pc["sandbox_runtime_up"].samples[0].value == 1.0

    assert get(rt, "/nowhere")[0] == 404

    # a failing sandbox: 503, and the JSON says why
    bad = rt.create_sandbox("web-bad", _app(tmp_path / "app"), profile="low", max_restarts=0)
    with pytest.raises(SandboxError):
        bad.call("worker", "die")
    wait_for(lambda: get(rt, "/health")[0] == 503, 30)
    health = json.loads(get(rt, "/health")[2])
    assert health["status"] == "degraded"
    assert health["sandboxes"]["web-bad"]["last_error"]["category"] == "runtime"


def test_the_endpoint_stops_with_the_runtime():
    rt = sandbox.start(name=f"h-stop{os.getpid()}", http=("127.0.0.1", 0))
    host, port = rt.http_address
    assert get(rt, "/health")[0] == 200
    rt.stop()
    assert rt.http_address is None
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()


@pytest.mark.parametrize("bad", ["127.0.0.1:80", 8080, ("127.0.0.1",), ("127.0.0.1", 70000),
                                 (None, 80), ("127.0.0.1", True)])
def test_bad_http_option_is_refused(bad):
    with pytest.raises(ConfigError, match="http"):
        sandbox.start(http=bad)


def test_a_busy_port_is_refused_and_nothing_is_left_running():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="listen"):
            sandbox.start(name=f"h-busy{os.getpid()}", http=("127.0.0.1", port))
