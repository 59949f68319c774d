"""Memory bombs: the address-space limit refuses the allocation; a bomb that holds
what it got is restarted by the resource monitor."""

from __future__ import annotations

import threading

import pytest
from conftest import attempt, wait_for

pytestmark = pytest.mark.timeout(60)


def _bomb() -> int:
    chunks = []
    while True:
        chunks.append(b"x" * (8 << 20))


def _holder() -> None:
    import threading

    chunks = []
    while True:
        try:
            chunks.append(b"x" * (4 << 20))
        except MemoryError:
            threading.Event().wait(0.01)


def test_allocation_past_the_limit_fails_cleanly(world):
    sb = world.sandbox(limits={"memory_mb": 96})
    got = attempt(sb, _bomb)
    assert isinstance(got, Exception), got
    if "MemoryError" in str(got):  # RLIMIT_AS refused the allocation
        world.wait_event(sb.id, "limit.reported")
    else:  # the monitor saw the RSS over the limit first and restarted it
        assert "memory_mb" in world.wait_event(sb.id, "limit.exceeded")["detail"]
    wait_for(lambda: serves(sb), 15, message="the sandbox does not serve again")


def serves(sb) -> bool:
    try:
        return sb.call("counter", "get", timeout=2) == 0
    except Exception:  # noqa: BLE001 - a restart may still be under way
        return False


def test_a_bomb_holding_its_memory_is_restarted(world):
    sb = world.sandbox(limits={"memory_mb": 96})
    pid = sb.pid
    out: list = []
    t = threading.Thread(target=lambda: out.append(attempt(sb, _holder, timeout=30)))
    t.start()
    try:
        ev = world.wait_event(sb.id, "limit.exceeded", 20)
        assert "memory_mb" in ev["detail"]
        wait_for(lambda: sb.info()["pid"] not in (None, pid), 15)
    finally:
        t.join(30)
    assert out and isinstance(out[0], Exception), out
    wait_for(lambda: serves(sb), 15, message="the sandbox does not serve again")
