"""runtime.recovery: every category from real errors, and last_error in sandbox info."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import Recorder, wait_for

from runtime import recovery
from runtime.actor import ExitReason
from runtime.errors import (
    ActorDead,
    ActorFailed,
    CallTimeout,
    CompileError,
    ConfigError,
    ReloadFailed,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
    SecurityViolation,
)

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "examples" / "counter"

WORKER = {
    "app.py": """
        from worker import Worker

        def children():
            return [Worker.child_spec(name="worker")]
    """,
    "worker.py": """
        import os
        import threading
        from runtime.genserver import GenServer

        class Worker(GenServer):
            def init(self):
                return []

            def handle_call(self, request, state):
                op = request[0] if isinstance(request, (list, tuple)) else request
                if op == "ping":
                    return "pong", state
                if op == "hog":
                    return len(bytearray(request[1] * 1024 * 1024)), state
                if op == "open":
                    for _ in range(request[1]):
                        state.append(os.open(os.devnull, os.O_RDONLY))
                    return len(state), state
                if op == "read":
                    with open(request[1]) as f:
                        return f.read(1), state
                if op == "block":
                    threading.Event().wait(request[1])
                    return "late", state
                if op == "die":
                    os._exit(3)
                if op == "garbage":
                    from runtime.child.boot import current_channel
                    current_channel().send_raw(b"\\x00\\x00\\x00\\x04\\xc1\\xc1\\xc1\\xc1")
                    return "sent", state
                raise ValueError(f"unknown request {request!r}")
    """,
}


@pytest.fixture
def worker_app(tmp_path: Path) -> Path:
    app = tmp_path / "worker-app"
    app.mkdir()
    for name, text in WORKER.items():
        (app / name).write_text(textwrap.dedent(text))
    return app


def caught(fn: Any, *args: Any, **kwargs: Any) -> BaseException:
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # the error under test
        return exc
    raise AssertionError(f"{fn} did not raise")


def assert_category(error: Any, category: str) -> None:
    assert recovery.classify(error) == category, (error, recovery.describe(error))
    d = recovery.describe(error)
    assert d["category"] == category and d["recovery"] == recovery.RECOVERY[category]
    assert isinstance(d["remedy"], str) and len(d["remedy"]) > 20


def test_the_table():
    assert recovery.RECOVERY == {
        "compilation": "rollback", "runtime": "restart", "resource": "terminate",
        "security": "isolate", "protocol": "restart", "system": "retry",
    }
    assert set(recovery.CATEGORIES) == set(recovery.RECOVERY)
    assert set(recovery.RECOVERY.values()) == {"retry", "rollback", "restart", "isolate", "terminate"}


# -- compilation -----------------------------------------------------------------------------


def test_compilation_errors(sandbox_runtime, tmp_path, worker_app):
    rt = sandbox_runtime
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "app.py").write_text("def children(:\n")
    err = caught(rt.create_sandbox, "rc-bad", bad)
    assert isinstance(err, CompileError)
    assert_category(err, "compilation")
    assert "file:line:col" in recovery.remedy(err)

    sb = rt.create_sandbox("rc-reload", worker_app, profile="low")
    err = caught(sb.hot_reload, source={"worker": "raise RuntimeError('fails at import')\n"})
    assert isinstance(err, ReloadFailed)
    assert_category(err, "compilation")  # -> rollback: the old code keeps serving
    assert sb.call("worker", "ping") == "pong"
    assert "previous code" in recovery.remedy(err)


# -- runtime ---------------------------------------------------------------------------------


def test_runtime_errors_and_last_error_in_info(sandbox_runtime, worker_app):
    rt = sandbox_runtime
    sb = rt.create_sandbox("rc-rt", worker_app, profile="low")
    err = caught(sb.call, "worker", "nonsense")
    assert isinstance(err, ActorFailed) and "ValueError" in str(err)
    assert_category(err, "runtime")
    assert_category(ZeroDivisionError("division by zero"), "runtime")

    wait_for(lambda: _pong(sb), 30)
    pid = sb.info()["pid"]
    assert sb.info()["last_error"] is None
    with pytest.raises(SandboxError):
        sb.call("worker", "die")
    wait_for(lambda: sb.info()["pid"] not in (None, pid) and _pong(sb), 30)
    last = sb.info()["last_error"]
    assert last["kind"] == "exit" and "code 3" in last["message"]
    assert (last["category"], last["recovery"]) == ("runtime", "restart")
    assert "supervisor restarts" in last["remedy"]
    assert rt.list_sandboxes()[0]["last_error"]["category"] == "runtime"


def test_escalation_has_its_own_remedy(sandbox_runtime, worker_app):
    sb = sandbox_runtime.create_sandbox("rc-esc", worker_app, profile="low", max_restarts=0)
    with pytest.raises(SandboxError):
        sb.call("worker", "die")
    wait_for(lambda: sb.info()["status"] == "error", 30)
    last = sb.info()["last_error"]
    assert last["category"] == "runtime" and "restart_sandbox()" in last["remedy"]


# -- resource --------------------------------------------------------------------------------


def test_resource_errors(sandbox_runtime, worker_app):
    rt = sandbox_runtime
    sb = rt.create_sandbox("rc-mem", worker_app, profile="low", limits={"memory_mb": 512})
    err = caught(sb.call, "worker", ("hog", 2048))
    assert isinstance(err, ActorFailed) and "MemoryError" in str(err)
    assert_category(err, "resource")
    assert_category(MemoryError(), "resource")
    assert_category(ExitReason("exit", "killed by SIGXCPU"), "resource")

    fds = rt.create_sandbox("rc-fds", worker_app, profile="low", limits={"open_files": 40})
    with Recorder("limit.exceeded") as rec:
        err = caught(fds.call, "worker", ("open", 100))
        assert "Too many open files" in str(err)
        assert_category(err, "resource")
        rec.wait("limit.exceeded", sandbox="rc-fds", timeout=30)  # the monitor acts on it
    # how the manager records the monitor's kill (kind "killed", its note as message)
    last = recovery.annotate({"kind": "killed", "message": "open_files limit reached; restarting"})
    assert (last["category"], last["recovery"]) == ("resource", "terminate")
    assert "limits" in last["remedy"]


# -- security --------------------------------------------------------------------------------


def test_security_errors(sandbox_runtime, tmp_path, worker_app):
    rt = sandbox_runtime
    net = tmp_path / "net"
    net.mkdir()
    (net / "app.py").write_text("import socket\n\ndef children():\n    return []\n")
    err = caught(rt.create_sandbox, "rc-net", net, profile="high")
    assert isinstance(err, SecurityViolation)
    assert_category(err, "security")

    sb = rt.create_sandbox("rc-guard", worker_app, profile="high")
    err = caught(sb.run, pow, 2, 3)
    assert isinstance(err, SecurityViolation)
    assert_category(err, "security")
    err = caught(sb.call, "worker", ("read", "/etc/hostname"))
    assert isinstance(err, ActorFailed) and "PermissionError" in str(err)
    assert_category(err, "security")
    assert recovery.recovery(err) == "isolate"
    assert_category({"kind": "quarantined", "message": "quarantined after repeated security "
                     "violations"}, "security")


# -- protocol --------------------------------------------------------------------------------


def test_protocol_errors(sandbox_runtime, worker_app):
    sb = sandbox_runtime.create_sandbox("rc-proto", worker_app, profile="low")
    pid = sb.info()["pid"]
    with Recorder("process.protocol_error") as rec:
        try:
            sb.call("worker", "garbage", timeout=2)
        except SandboxError as exc:
            assert_category(exc, "protocol")  # the call died with the broken channel
        rec.wait("process.protocol_error", timeout=30)
    wait_for(lambda: sb.info()["pid"] not in (None, pid) and _pong(sb), 30)
    last = sb.info()["last_error"]
    assert last["kind"] == "protocol"
    assert (last["category"], last["recovery"]) == ("protocol", "restart")
    assert "msgpack" in last["remedy"]


# -- system ----------------------------------------------------------------------------------


def test_system_errors(sandbox_runtime, worker_app):
    rt = sandbox_runtime
    sb = rt.create_sandbox("rc-sys", worker_app, profile="low")
    err = caught(sb.call, "worker", ("block", 2), timeout=0.2)
    assert isinstance(err, CallTimeout)
    assert_category(err, "system")
    assert "timeout" in recovery.remedy(err)
    err = caught(rt.get_sandbox_info, "nope")
    assert isinstance(err, SandboxNotFound)
    assert_category(err, "system")
    err = caught(rt.create_sandbox, "rc-sys", worker_app)
    assert isinstance(err, SandboxExists)
    assert_category(err, "system")
    assert "another id" in recovery.remedy(err)
    err = caught(rt.create_sandbox, "rc-cfg", worker_app, restart="sometimes")
    assert isinstance(err, ConfigError)
    assert_category(err, "system")
    sb.destroy()
    err = caught(sb.call, "worker", "ping")
    assert isinstance(err, (ActorDead, SandboxNotFound))
    assert_category(err, "system")


# -- forms of input -------------------------------------------------------------------------


def test_names_exit_reasons_and_records_classify_alike():
    assert recovery.classify("CompileError") == "compilation"
    assert recovery.classify("ProtocolError") == "protocol"
    assert recovery.classify(ExitReason("protocol", "broke the mailbox protocol")) == "protocol"
    assert recovery.classify(ExitReason("exception", "PermissionError: x refused by the "
                                                     "sandbox guard")) == "security"
    assert recovery.classify({"type": "MemoryError", "message": ""}) == "resource"
    assert recovery.classify({"kind": "SandboxBootError",
                              "message": "sandbox process 'x' failed to start: "
                                         "ModuleNotFoundError: no module named 'y'"}) == "compilation"
    assert recovery.classify({"kind": "x", "category": "system"}) == "system"
    assert recovery.annotate(None) is None
    kept = recovery.annotate({"kind": "exit", "message": "exited with code 1", "remedy": "mine"})
    assert kept["remedy"] == "mine" and kept["category"] == "runtime"

    class Custom(Exception):
        category = "resource"

    assert recovery.classify(Custom()) == "resource"
    assert recovery.classify(RuntimeError("x")) == "runtime"
    chained = SandboxError("wrapper")
    chained.__cause__ = MemoryError()
    assert recovery.classify(chained) == "resource"


def _pong(sb: Any) -> bool:
    try:
        return sb.call("worker", "ping", timeout=1) == "pong"
    except SandboxError:
        return False
