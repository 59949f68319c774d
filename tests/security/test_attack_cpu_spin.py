"""A CPU spin: ended by RLIMIT_CPU (SIGXCPU), or by the monitor's CPU share limit."""

from __future__ import annotations

import threading

import pytest
from conftest import attempt, wait_for

pytestmark = pytest.mark.timeout(60)


def _spin() -> None:
    while True:
        pass


def test_cpu_seconds_limit_kills_the_spinner(world):
    sb = world.sandbox(limits={"cpu_seconds": 1})
    pid = sb.pid
    got = attempt(sb, _spin, timeout=20)
    assert isinstance(got, Exception), got
    ev = world.wait_event(sb.id, "limit.exceeded")
    assert "cpu_seconds" in ev["detail"] and "SIGXCPU" in ev["detail"], ev
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 15)
    assert sb.call("counter", "incr") == 1


def test_cpu_share_limit_terminates_the_sandbox(world):
    sb = world.sandbox(limits={"cpu_percent": 50, "cpu_window": 1, "action": "terminate"})
    out: list = []
    t = threading.Thread(target=lambda: out.append(attempt(sb, _spin, timeout=30)))
    t.start()
    try:
        ev = world.wait_event(sb.id, "limit.exceeded", 20)
        assert "cpu_percent" in ev["detail"]
        wait_for(lambda: sb.info()["status"] == "error", 15)
    finally:
        t.join(30)
    info = sb.info()
    assert info["pid"] is None and info["blocked"].startswith("limit"), info
