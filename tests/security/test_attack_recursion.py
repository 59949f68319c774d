"""Deep recursion: a clear RecursionError, or (C-level, raised limit) a crash that
the supervisor recovers from; the host is untouched either way."""

from __future__ import annotations

import os

import pytest
from conftest import attempt, wait_for

pytestmark = pytest.mark.timeout(60)


def _deep(n: int = 0) -> int:
    return _deep(n + 1)


def _deeper() -> int:
    import sys

    sys.setrecursionlimit(10**6)
    nested: list = []
    for _ in range(200_000):
        nested = [nested]
    return len(repr(nested))


def test_recursion_error_and_crash_are_contained(world):
    sb = world.sandbox()
    got = attempt(sb, _deep)
    assert isinstance(got, Exception) and "RecursionError" in str(got), got
    world.wait_event(sb.id, "limit.reported")
    assert sb.call("counter", "incr") == 1
    pid = sb.pid
    got = attempt(sb, _deeper)
    assert isinstance(got, Exception), got
    if sb.info()["pid"] != pid or "RecursionError" not in str(got):  # it crashed
        world.wait_event(sb.id, "sandbox.crash")
    wait_for(lambda: sb.info()["status"] == "running" and sb.info()["pid"], 15)
    assert os.getpid() > 0 and sb.call("counter", "get") in (0, 1)
