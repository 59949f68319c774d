"""Fork bombs: refused under high; bounded by the process limit under low."""

from __future__ import annotations

import psutil
import pytest
from conftest import attempt, wait_for

pytestmark = pytest.mark.timeout(60)


def _bomb() -> int:
    import os

    n = 0
    while True:
        os.fork()
        n += 1


def _bounded_bomb(n: int) -> int:
    import os
    import threading

    kids = 0
    for _ in range(n):
        if os.fork() == 0:
            threading.Event().wait(30)
            os._exit(0)
        kids += 1
    return kids


def test_high_refuses_the_first_fork(world):
    sb = world.sandbox()
    pid = sb.pid
    got = attempt(sb, _bomb)
    assert isinstance(got, Exception) and "os.fork refused" in str(got), got
    assert psutil.Process(pid).children() == []
    assert world.events(sb.id, "os.fork")
    assert sb.call("counter", "incr") == 1


def test_low_process_limit_restarts_the_sandbox(world):
    sb = world.sandbox(profile="low", limits={"processes": 4})
    pid = sb.pid
    got = attempt(sb, _bounded_bomb, 10)
    assert got == 10 or isinstance(got, Exception), got  # restarted mid-bomb is fine
    world.wait_event(sb.id, "limit.exceeded")
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 15)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    info = sb.info()
    assert any(e["limit"] == "processes" for e in info["usage"]["limit_events"]), info["usage"]
