"""Repeated violations: terminated at the profile's threshold and quarantined."""

from __future__ import annotations

import pytest
from conftest import wait_for

pytestmark = pytest.mark.timeout(60)

APP = {
    "app.py": """
        import prober


        def children():
            return [prober.Prober.child_spec(name="prober")]
        """,
    "prober.py": """
        from runtime.genserver import GenServer


        class Prober(GenServer):
            def init(self):
                return 0

            def handle_call(self, path, state):
                try:
                    with open(path) as fh:
                        return fh.read(), state
                except PermissionError as exc:
                    return str(exc), state + 1
        """,
}


def test_threshold_terminates_and_quarantines(world):
    sb = world.sandbox(profile="high", app=APP)
    pid = sb.pid
    for _ in range(3):  # the high profile's threshold
        try:
            got = sb.call("prober", "/etc/hostname")
        except Exception as exc:  # noqa: BLE001 - killed mid-call is fine
            got = str(exc)
        assert "refused" in got or "not running" in got or "killed" in got, got
    wait_for(lambda: sb.info()["status"] == "error", 15)
    info = sb.info()
    assert info["quarantined"] and info["pid"] is None, info
    assert world.events(sb.id, "security.quarantine")
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(Exception):  # noqa: B017
        sb.call("prober", "/etc/hostname", timeout=1)
