"""Reading (or writing) another sandbox's directory."""

from __future__ import annotations

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _listdir(path: str) -> list[str]:
    import os

    return os.listdir(path)


def _write(path: str) -> str:
    with open(path, "w") as fh:
        fh.write("tampered")
    return "written"


def test_one_sandbox_cannot_touch_another(world):
    victim = world.sandbox()
    attacker = world.sandbox()
    vdir = world.workdir(victim)
    (vdir / "secret.txt").write_text("victim secret")
    for fn, arg in ((_read, f"{vdir}/secret.txt"), (_listdir, str(vdir)),
                    (_write, f"{vdir}/secret.txt")):
        got = attempt(attacker, fn, arg)
        assert isinstance(got, Exception), (fn.__name__, got)
        assert "victim secret" not in str(got)
    assert (vdir / "secret.txt").read_text() == "victim secret"
    assert len([e for e in world.events(attacker.id) if e["action"] == "refused"]) >= 3
    assert world.events(victim.id, "open") == []
