"""A file-size bomb in the workdir: RLIMIT_FSIZE stops it at the limit."""

from __future__ import annotations

import pytest
from conftest import attempt, wait_for

pytestmark = pytest.mark.timeout(60)


def _grow(name: str) -> int:
    with open(name, "wb") as fh:
        for _ in range(64):
            fh.write(b"\0" * (1 << 20))
            fh.flush()
    return 64


def test_file_size_limit_stops_the_write(world):
    sb = world.sandbox(limits={"file_size_mb": 2})
    pid = sb.pid
    target = world.workdir(sb) / "big.bin"
    got = attempt(sb, _grow, "big.bin")
    assert isinstance(got, Exception), got
    assert target.stat().st_size <= 2 << 20, "the file grew past the limit"
    ev = world.wait_event(sb.id, "limit.exceeded")
    assert "file_size_mb" in ev["detail"], ev
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 15)
