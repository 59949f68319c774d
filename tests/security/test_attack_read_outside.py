"""Reading outside the workdir: a host secret by absolute path, '..' and a symlink."""

from __future__ import annotations

import os

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _symlink_read(target: str) -> str:
    import os

    os.symlink(target, "link.txt")
    with open("link.txt") as fh:
        return fh.read()


def test_reads_outside_the_workdir_are_refused(world):
    sb = world.sandbox()
    secret = world.marker("secret.txt")
    secret.write_text("host secret")
    os.chmod(secret, 0o644)
    wd = world.workdir(sb)
    dotdot = "../" * len(wd.parts) + str(secret).lstrip("/")
    for fn, arg in ((_read, str(secret)), (_read, dotdot), (_symlink_read, str(secret)),
                    (_read, "/etc/passwd")):
        got = attempt(sb, fn, arg)
        assert isinstance(got, Exception), (fn.__name__, arg, got)
        assert "host secret" not in str(got)
    assert len([e for e in world.events(sb.id) if e["action"] == "refused"]) >= 4
