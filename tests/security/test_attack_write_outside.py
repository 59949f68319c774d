"""Writing outside the workdir: absolute paths, '..', and a symlink in the workdir."""

from __future__ import annotations

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _write(path: str) -> str:
    with open(path, "w") as fh:
        fh.write("pwned")
    return "written"


def _symlink_write(target: str) -> str:
    import os

    os.symlink(target, "innocent.txt")
    with open("innocent.txt", "w") as fh:
        fh.write("pwned")
    return "written"


def test_writes_outside_the_workdir_are_refused(world):
    sb = world.sandbox()
    marker = world.marker()
    wd = world.workdir(sb)
    dotdot = "../" * len(wd.parts) + str(marker).lstrip("/")
    for fn, arg in ((_write, str(marker)), (_write, dotdot), (_symlink_write, str(marker))):
        got = attempt(sb, fn, arg)
        assert isinstance(got, Exception) and "refused" in str(got), (fn.__name__, arg, got)
    assert not marker.exists()
    refused = [e for e in world.events(sb.id) if e["action"] == "refused"]
    assert len(refused) >= 3, refused
    assert attempt(sb, _write, "inside.txt") == "written"
    assert (wd / "inside.txt").read_text() == "pwned"
