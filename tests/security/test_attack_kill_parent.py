"""Signalling the sandbox's parent (the forkserver) and the host."""

from __future__ import annotations

import os

import psutil
import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _kill(pid: int) -> str:
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
    return "sent"


def _kill_parent() -> str:
    import os
    import signal

    os.kill(os.getppid(), signal.SIGKILL)
    return "sent"


def test_signals_outside_the_sandbox_are_refused(world):
    sb = world.sandbox()
    parent = psutil.Process(sb.pid).ppid()
    for fn, args in ((_kill_parent, ()), (_kill, (os.getpid(),))):
        got = attempt(sb, fn, *args)
        assert isinstance(got, Exception) and "refused" in str(got), got
    assert psutil.pid_exists(parent) and psutil.Process(parent).status() != psutil.STATUS_ZOMBIE
    assert len(world.events(sb.id, "os.kill")) >= 2
    assert sb.call("counter", "incr") == 1
