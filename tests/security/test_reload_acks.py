"""A reload is recorded only if the sandbox installed, and serves, what the host shipped.

The sandbox lies for real: under ``low`` its own code rewrites the runtime inside
its process (what a sandbox that has taken over its process could do), so that
its report of a swap, or what it serves, is not what the host sent. Judged from
the host: ReloadFailed at step ``verify``, the module versions the host keeps
(nothing recorded), a new process serving the recorded code.
"""

from __future__ import annotations

import pytest
from conftest import attempt, wait_for

from runtime.errors import ReloadFailed

pytestmark = pytest.mark.timeout(60)

NEW = '''
from runtime.genserver import GenServer


class Counter(GenServer):
    vsn = 2

    def init(self, start=0):
        return start

    def handle_call(self, request, state):
        return ("v2", state), state
'''


def _forge_digests() -> str:
    """Every digest the sandbox reports, and answers the probe with, is made up."""
    from runtime.child import swap

    swap.serving = lambda names: {n: "0" * 64 for n in names}
    return "forged"


def _pretend_to_swap() -> str:
    """Report the shipped digests without installing anything (the old code serves)."""
    import hashlib

    from runtime.child import swap

    def fake(units, **_kw):
        names = [mc.name for unit in units for mc in unit]
        return {"installed": {mc.name: hashlib.sha256(mc.code).hexdigest()
                              for unit in units for mc in unit},
                "modules": names, "removed": [], "changed": names, "actors": 0,
                "rebound": [], "warnings": [], "suspend_seconds": 0.0, "swap_seconds": 0.0}

    swap.apply_reload = fake
    return "pretending"


@pytest.mark.parametrize("lie", [_forge_digests, _pretend_to_swap])
def test_a_lying_acknowledgement_is_refused_and_nothing_recorded(world, lie):
    sb = world.sandbox(profile="low")
    assert sb.call("counter", "incr") == 1
    before = sb.module_versions()
    pid = sb.pid
    assert attempt(sb, lie) in ("forged", "pretending")
    with pytest.raises(ReloadFailed) as err:
        sb.hot_reload(source={"counter": NEW})
    assert err.value.step == "verify" and "counter" in str(err.value), err.value
    assert sb.module_versions() == before
    assert len(sb.module_versions("counter")) == 1, sb.module_versions("counter")
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 15)
    assert sb.call("counter", "incr") == 1  # the recorded (old) code, in a new process


def test_an_honest_sandbox_passes_the_check(world):
    sb = world.sandbox(profile="low")
    pid = sb.pid
    report = sb.hot_reload(source={"counter": NEW})
    assert report.ok and sb.module_versions()["counter"] == 2, report
    assert sb.call("counter", "get") == ("v2", 0) and sb.pid == pid


class _Proc:
    def __init__(self, alive: bool = True) -> None:
        self.alive, self.killed = alive, []

    def is_alive(self) -> bool:
        return self.alive

    def kill(self, reason) -> None:
        self.killed.append(reason)


class _Slot:
    def __init__(self, current) -> None:
        self._current = current

    def current(self):
        return self._current if self._current is not None and self._current.alive else None

    def get(self, timeout):
        return self._current


def test_a_swap_is_still_served_by_the_process_that_made_it():
    from sandbox.reload_ack import still_serving

    proc = _Proc()
    assert still_serving(_Slot(proc), proc) and not proc.killed


def test_a_process_replaced_during_the_reload_is_restarted_to_boot_the_recorded_code():
    from sandbox.reload_ack import still_serving

    gone, successor = _Proc(alive=False), _Proc()
    assert not still_serving(_Slot(successor), gone)
    assert len(successor.killed) == 1 and not gone.killed
