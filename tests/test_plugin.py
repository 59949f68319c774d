"""The pytest plugin (sandbox.pytest_plugin) and the helpers of sandbox.testing.

What is about the plugin itself (entry point, leak check, cleanup between tests) runs
in inner pytest sessions with ``pytester``; the helpers are used directly, as the
project's own tests use them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest

from runtime import telemetry
from runtime.errors import CompileError
from sandbox.testing import (
    StressReport,
    assert_hot_reload_successful,
    assert_sandbox_running,
    stress,
    wait_for,
    wait_for_reload,
)

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
COUNTER = REPO / "examples" / "counter"

COUNTER_V2 = (COUNTER / "counter.py").read_text().replace("vsn = 1", "vsn = 2").replace(
    'if request == "get":\n            return state, state',
    'if request == "get":\n            return state, state\n'
    '        if request == "version":\n            return 2, state',
)

ECHO_APP = {
    "app.py": '''
        from runtime.genserver import GenServer

        class Echo(GenServer):
            def handle_call(self, request, state):
                return request, state

        def children():
            return [Echo.child_spec(name="echo")]
    ''',
}


# -- the plugin, seen from pytest --------------------------------------------------------


def test_plugin_is_registered_through_the_pytest11_entry_point():
    eps = metadata.entry_points(group="pytest11")
    assert any(ep.name == "sandbox" and ep.value == "sandbox.pytest_plugin" for ep in eps)


def test_fixtures_are_available_without_any_conftest(pytester):
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    out = result.stdout.str()
    for name in ("sandbox_runtime", "sandbox_factory", "app_dir", "wait_for", "wait_for_reload",
                 "assert_sandbox_running", "assert_hot_reload_successful", "stress"):
        assert f"\n{name} -- " in out, name


LEAKY_TESTS = '''
import subprocess
import sys
import threading

LEAKED = []

def test_clean(sandbox_factory):
    sb = sandbox_factory({"app.py": APP})
    assert sb.call("echo", "hi") == "hi"

def test_leaks_a_thread(sandbox_runtime):
    threading.Thread(target=threading.Event().wait, name="leaky-thread", daemon=True).start()

def test_leaks_a_process(sandbox_runtime):
    LEAKED.append(subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE))

def test_leaks_a_file_descriptor(sandbox_runtime, tmp_path):
    LEAKED.append(open(tmp_path / "left-open.txt", "w"))
'''


def test_leak_check_fails_leaking_tests_and_names_what_leaked(pytester):
    """Each leaking test errors at teardown, naming what it left; the run fails."""
    app = ECHO_APP["app.py"]
    pytester.makepyfile(test_leaky=f"APP = {app!r}\n" + LEAKY_TESTS)
    pytester.makeini("[pytest]\nsandbox_leak_timeout = 0.5\n")
    # A subprocess: the leaked thread, process and fd must not outlive the inner run.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    result.assert_outcomes(passed=4, errors=3)
    assert result.ret != 0
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_thread*",
        "*the test leaked:*",
        "*thread 'leaky-thread' still running*",
    ])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks_a_process*", "*process * still running*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks_a_file_descriptor*",
                                 "*fd * still open: *left-open.txt*"])
    assert "ERROR at teardown of test_clean" not in out


CLEANUP_TESTS = '''
import psutil
import pytest
from runtime import telemetry
from runtime.errors import SandboxError

DESTROYED = []
SEEN = {}

def setup_module():
    telemetry.attach("inner-destroys", "sandbox.destroy.stop",
                     lambda e, m, md: DESTROYED.append(md["sandbox"]))

def teardown_module():
    telemetry.detach("inner-destroys")

def _fingerprint(pid):
    p = psutil.Process(pid)
    return pid, p.create_time()

def _gone(pid, created):
    try:
        p = psutil.Process(pid)
        return p.create_time() != created or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True

def test_make_sandboxes(sandbox_runtime, sandbox_factory, app_dir):
    a = sandbox_factory({"app.py": APP})
    b = sandbox_factory({"app.py": APP})
    c = sandbox_factory(app_dir({"app.py": APP}), profile="high")
    d = sandbox_factory(COUNTER, id="my-counter")
    ids = [s.id for s in (a, b, c, d)]
    assert len(set(ids)) == 4 and "my-counter" in ids
    assert a.call("echo", 1) == 1 and c.info()["profile"] == "high"
    assert d.call("counter", "incr") == 1
    SEEN.update(rt=sandbox_runtime, ids=ids, pids=[_fingerprint(s.pid) for s in (a, b, c, d)])

def test_they_were_destroyed_and_the_runtime_stopped():
    assert sorted(DESTROYED) == sorted(SEEN["ids"])
    with pytest.raises(SandboxError, match="not running"):
        SEEN["rt"].list_sandboxes()
    for pid, created in SEEN["pids"]:
        assert _gone(pid, created), pid

@pytest.mark.sandbox_runtime(name="custom-name", history=3)
def test_runtime_options_come_from_the_marker(sandbox_runtime):
    assert sandbox_runtime.name == "custom-name"
'''


def test_factory_cleans_up_and_runtime_stops_after_each_test(pytester):
    app = ECHO_APP["app.py"]
    pytester.makepyfile(
        test_cleanup=f"APP = {app!r}\nCOUNTER = {str(COUNTER)!r}\n" + CLEANUP_TESTS
    )
    pytester.makeini("[pytest]\nsandbox_leak_timeout = 30\n")  # a loaded machine is slow
    # A subprocess: an in-process run would drop the runtime modules it imported first
    # from sys.modules afterwards (pytester restores sys.modules).
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    assert result.ret == 0, result.stdout.str()[-6000:]
    result.assert_outcomes(passed=3)


def test_helpers_are_fixtures_too(wait_for, wait_for_reload, stress,
                                  assert_sandbox_running, assert_hot_reload_successful):
    import sandbox.testing as t

    assert (wait_for, wait_for_reload, stress) == (t.wait_for, t.wait_for_reload, t.stress)
    assert assert_sandbox_running is t.assert_sandbox_running
    assert assert_hot_reload_successful is t.assert_hot_reload_successful


def test_plugin_module_exports_the_helpers():
    import sandbox.pytest_plugin as plugin

    for name in ("wait_for", "wait_for_reload", "assert_sandbox_running",
                 "assert_hot_reload_successful", "stress", "StressReport"):
        assert name in plugin.__all__ and callable(getattr(plugin, name))


def test_app_dir_writes_dedented_files(app_dir):
    d = app_dir({"app.py": "\n    x = 1\n", "pkg/mod.py": "y = 2\n"})
    assert (d / "app.py").read_text() == "\nx = 1\n"
    assert (d / "pkg" / "mod.py").read_text() == "y = 2\n"
    assert app_dir({}) != d


# -- wait_for --------------------------------------------------------------------------


def test_wait_for_an_event_a_predicate_and_a_timeout():
    flag = threading.Event()
    timer = threading.Timer(0.01, flag.set)
    timer.start()
    assert wait_for(flag, timeout=5) is True
    timer.join()
    box = []
    telemetry_thread = threading.Thread(
        target=lambda: (box.append(42), telemetry.execute("test.plugin.tick", {}, {}))
    )
    telemetry_thread.start()
    assert wait_for(lambda: box and box[0], timeout=5) == 42
    telemetry_thread.join()
    with pytest.raises(TimeoutError, match="never-true"):
        wait_for(lambda: False, timeout=0.05, message="never-true")
    with pytest.raises(TimeoutError):
        wait_for(threading.Event(), timeout=0.01)


# -- assert_sandbox_running ------------------------------------------------------------


def test_assert_sandbox_running(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    info = assert_sandbox_running(sb)
    assert info["status"] == "running" and info["pid"] == sb.pid


def test_assert_sandbox_running_waits_for_a_restart(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    old = sb.pid
    os.kill(old, signal.SIGKILL)
    # once the host has seen the process die, the helper must wait for the new one
    wait_for(lambda: sb.info()["pid"] != old or sb.info()["status"] != "running", timeout=20)
    info = assert_sandbox_running(sb, timeout=20)
    assert info["pid"] != old


def test_assert_sandbox_running_fails_for_a_dead_sandbox(sandbox_factory):
    sb = sandbox_factory(COUNTER, restart="temporary")
    pid = sb.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: sb.info()["status"] != "running" or sb.info()["pid"] != pid, timeout=20)
    with pytest.raises(AssertionError, match=r"sandbox 'sb\d+' is not running"):
        assert_sandbox_running(sb)


# -- hot reload helpers ------------------------------------------------------------------


def test_assert_hot_reload_successful_with_a_callable_a_report_and_a_handle(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    sb.call("counter", "incr")
    report = assert_hot_reload_successful(
        lambda: sb.hot_reload(source={"counter": COUNTER_V2}), changed=["counter"]
    )
    assert report.ok and sb.call("counter", "version") == 2 and sb.call("counter", "get") == 1
    assert assert_hot_reload_successful(report) is report
    assert assert_hot_reload_successful(sb)["changed"] == ["counter"]
    with pytest.raises(AssertionError, match=r"changed \['counter'\], expected \['app'\]"):
        assert_hot_reload_successful(report, changed=["app"])


def test_assert_hot_reload_successful_reports_a_failed_reload(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    with pytest.raises(AssertionError, match="hot reload failed: CompileError") as info:
        assert_hot_reload_successful(lambda: sb.hot_reload(source={"counter": "def broken(:\n"}))
    assert isinstance(info.value.__cause__, CompileError)
    with pytest.raises(AssertionError, match="failed: CompileError"):
        assert_hot_reload_successful(sb)  # its last reload is the failed one
    with pytest.raises(AssertionError, match="no reload"):
        assert_hot_reload_successful(None)
    with pytest.raises(AssertionError, match="not been reloaded"):
        assert_hot_reload_successful(sandbox_factory(COUNTER))


def _reload_when_waited_on(fn):
    """Run ``fn`` in a thread once a wait_for_reload handler is attached."""

    def waiting() -> bool:
        return any(h.startswith("sandbox.testing.reload.") for h in telemetry.handlers())

    def run() -> None:
        wait_for(waiting, timeout=10)
        try:
            fn()
        except Exception:
            pass  # the failure is what the test waits for

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wait_for_reload_sees_a_reload_of_that_sandbox(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    other = sandbox_factory(COUNTER)
    thread = _reload_when_waited_on(lambda: (
        other.hot_reload(source={"counter": COUNTER_V2}),
        sb.hot_reload(source={"counter": COUNTER_V2}),
    ))
    outcome = wait_for_reload(sb, timeout=30)
    thread.join()
    assert outcome["sandbox"] == sb.id and outcome["ok"] and outcome["error"] is None
    assert outcome["changed"] == ["counter"] and outcome["versions"] == {"counter": 2}
    assert outcome["duration"] > 0
    assert_hot_reload_successful(outcome, changed=["counter"])


def test_wait_for_reload_returns_a_failed_reload(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    thread = _reload_when_waited_on(lambda: sb.hot_reload(source={"counter": "x = (\n"}))
    outcome = wait_for_reload(sb, timeout=30)
    thread.join()
    assert not outcome["ok"] and outcome["error"].startswith("CompileError")
    with pytest.raises(AssertionError, match="CompileError"):
        assert_hot_reload_successful(outcome)


def test_wait_for_reload_since_catches_a_reload_that_already_finished(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    t0 = time.time()
    sb.hot_reload(source={"counter": COUNTER_V2})
    status = wait_for_reload(sb, timeout=10, since=t0)
    assert status["ok"] and status["changed"] == ["counter"]
    with pytest.raises(TimeoutError, match="no hot reload"):
        wait_for_reload(sb, timeout=0.2, since=time.time() + 60)


# -- stress --------------------------------------------------------------------------------


def test_stress_by_count(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    report = stress(sb, ("counter", "incr"), count=300, threads=4)
    assert isinstance(report, StressReport)
    assert (report.count, report.succeeded, report.errors) == (300, 300, 0)
    assert sb.call("counter", "get") == 300  # every operation ran exactly once
    assert 0 < report.p50 <= report.p95 <= report.p99 <= report.max
    assert report.throughput > 0 and report.threads == 4 and report.error_rate == 0
    assert "300 operations" in str(report) and report.as_dict()["count"] == 300


def test_stress_by_duration_with_named_operations_and_errors(sandbox_factory):
    sb = sandbox_factory(COUNTER)
    ops = {
        "incr": lambda s: s.call("counter", "incr"),
        "get": ("counter", "get"),
        "bad": lambda s: 1 / 0,
    }
    t0 = time.monotonic()
    report = stress(sb, ops, duration=0.5, threads=3)
    assert time.monotonic() - t0 >= 0.5
    assert report.count > 3 and report.errors == report.by_operation["bad"]["errors"] > 0
    assert report.error_types == {"ZeroDivisionError": report.errors}
    assert report.error_samples[0].startswith("bad: ZeroDivisionError")
    assert report.by_operation["incr"]["succeeded"] > 0 and report.by_operation["get"]["errors"] == 0
    assert report.succeeded + report.errors == report.count


def test_stress_accepts_zero_argument_callables_and_checks_its_arguments():
    assert stress(None, [lambda: 1, lambda: 2], count=10, threads=2).succeeded == 10
    with pytest.raises(ValueError, match="duration= .* or count="):
        stress(None, lambda: 1)
    with pytest.raises(TypeError, match="neither a callable"):
        stress(None, [42], count=1)
    with pytest.raises(ValueError, match="at least one"):
        stress(None, [], count=1)
