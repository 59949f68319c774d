"""Starting processes: subprocess, os.system, os.popen, posix_spawn."""

from __future__ import annotations

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _subprocess(marker: str) -> str:
    import subprocess

    subprocess.run(["/usr/bin/touch", marker], check=True)
    return "ran"


def _system(marker: str) -> int:
    import os

    return os.system(f"touch {marker}")


def _spawn(marker: str) -> int:
    import os

    return os.posix_spawn("/usr/bin/touch", ["touch", marker], {})


def test_starting_a_process_is_refused_and_audited(world):
    sb = world.sandbox()
    marker = world.marker()
    for fn in (_subprocess, _system, _spawn):
        got = attempt(sb, fn, str(marker))
        assert isinstance(got, Exception), f"{fn.__name__} returned {got!r}"
        assert "refused" in str(got) or "PermissionError" in str(got)
    assert not marker.exists(), "a process ran on the sandbox's behalf"
    events = {e["event"] for e in world.events(sb.id) if e["action"] == "refused"}
    assert {"os.system", "os.posix_spawn"} <= events, events
    assert events & {"subprocess.Popen", "import", "_posixsubprocess.fork_exec"}, events
    assert sb.call("counter", "incr") == 1, "the sandbox keeps serving"
