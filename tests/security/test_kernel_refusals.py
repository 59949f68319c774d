"""Refusals that decide quarantine are counted where the sandbox cannot hide them.

In ``high`` and ``medium`` a system call the seccomp filter denies kills the
sandbox's process (``SIGSYS``); the host reads that from the exit status and counts
it as a refusal, restarts the process, and quarantines the sandbox at its
profile's threshold. The attacks go around the audit hook entirely (raw calls
through ctypes, which the ``*-native`` profiles allow and which raise no event the
guard could refuse or report), so nothing the sandbox says is involved: the guard
reports nothing, and the count still rises.

Judged from the host: the process table (psutil), the sandbox's pid and
quarantine state, and the audit log's ``source`` field (``observed``).
"""

from __future__ import annotations

import platform

import psutil
import pytest
from conftest import attempt, layer_missing, wait_for

from actors.profiles import Profile, get_builtin

pytestmark = pytest.mark.timeout(60)

NATIVE = {
    base: Profile.derive(
        base, name=f"{base}-native2", allow=get_builtin(base).allow | {"native"},
        violation_threshold=2, allow_run=True,
    )
    for base in ("high", "medium")
}


def _fork() -> str:
    """fork() through libc: no audit event, and a new process the host does not reap."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.fork()
    if pid == 0:
        libc._exit(0)
    return f"forked {pid}"


def _ptrace_parent() -> str:
    """A raw ptrace(PTRACE_ATTACH) of the fork server: no audit event at all."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(101, 16, os.getppid(), 0, 0)
    return f"ptrace returned {rc} (errno {ctypes.get_errno()})"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def native_world(world):
    if layer_missing("seccomp"):
        pytest.skip(f"seccomp is not available here: {layer_missing('seccomp')}")
    if platform.machine() != "x86_64":
        pytest.skip("the ptrace syscall number in this test is x86_64's")
    for profile in NATIVE.values():
        world.rt.register_profile(profile)
    return world


@pytest.mark.parametrize("base", ["high", "medium"])
def test_a_kernel_kill_is_counted_by_the_host_and_quarantines(native_world, base):
    w = native_world
    sb = w.sandbox(profile=NATIVE[base].name)
    first = sb.pid
    got = attempt(sb, _fork)
    assert isinstance(got, Exception), f"the fork went through: {got}"
    wait_for(lambda: _gone(first), 10, message=f"pid {first} still runs")
    ev = w.wait_event(sb.id, "seccomp.kill")
    assert ev["source"] == "observed" and ev["action"] == "refused", ev
    assert "SIGSYS" in ev["detail"] and ev["response"] == "logged", ev
    # Below the threshold: restarted, serving.
    wait_for(lambda: sb.info()["pid"] not in (None, first), 15)
    assert sb.call("counter", "incr") == 1
    second = sb.pid
    got = attempt(sb, _ptrace_parent)
    assert isinstance(got, Exception), f"ptrace returned: {got}"
    wait_for(lambda: sb.info()["quarantined"], 15, message=str(sb.info()))
    wait_for(lambda: _gone(second), 10, message=f"pid {second} still runs")
    info = sb.info()
    assert info["pid"] is None and info["status"] == "error", info
    assert w.rt.component("security").invoke("is_quarantined", sb.id)
    refusals = [e for e in w.events(sb.id) if e.get("action") == "refused"]
    # Both counted from what the host saw; the guard said nothing.
    assert [e["source"] for e in refusals] == ["observed", "observed"], refusals


def test_low_keeps_eperm_and_its_process(world):
    """Trusted code: a denied call fails (EPERM) and nothing is counted."""
    if layer_missing("seccomp"):
        pytest.skip(f"seccomp is not available here: {layer_missing('seccomp')}")
    if platform.machine() != "x86_64":
        pytest.skip("the ptrace syscall number in this test is x86_64's")
    sb = world.sandbox(profile="low")
    pid = sb.pid
    assert attempt(sb, _ptrace_parent) == "ptrace returned -1 (errno 1)"
    assert sb.pid == pid and not world.events(sb.id, "seccomp.kill")
