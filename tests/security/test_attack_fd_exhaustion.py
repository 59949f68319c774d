"""Exhausting file descriptors: RLIMIT_NOFILE refuses the 65th; the monitor restarts."""

from __future__ import annotations

import pytest
from conftest import attempt, wait_for

pytestmark = pytest.mark.timeout(60)


def _hoard() -> int:
    import os

    held = []
    try:
        while True:
            held.append(open("/dev/null", "rb"))  # noqa: SIM115
    except OSError as exc:
        os.hoard = held  # keep them open after the call returns
        return exc.errno


def test_fd_limit_then_restart(world):
    sb = world.sandbox()
    pid = sb.pid
    assert attempt(sb, _hoard) == 24  # EMFILE at the profile's open_files (64)
    world.rt.component("monitor").invoke("sample_now")
    ev = world.wait_event(sb.id, "limit.exceeded")
    assert "open_files" in ev["detail"], ev
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 15)
    assert sb.call("counter", "incr") == 1
