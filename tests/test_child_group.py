"""A sandbox's process group, session and scheduling group (runtime.child.boot.own_group).

A sandbox leads a process group of its own (the host kills its tree with one
``killpg``), has no controlling terminal, and stays in its host's scheduling
autogroup, as a bare child of the same fork server does (a session of its own
would be an autogroup of its own on Linux).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from runtime.child.boot import own_group

pytestmark = pytest.mark.timeout(90)

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"


def _autogroup(pid: int | str) -> str | None:
    """``/autogroup-N`` from ``/proc/PID/autogroup``; None where the kernel has no
    autogroups (no file) or does not say (an empty file, as in some CI sandboxes)."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            words = f.read().split()
    except OSError:
        return None
    return words[0] if words else None


@pytest.mark.parametrize("profile", ["medium", "high"])
def test_a_sandbox_leads_its_group_in_the_hosts_autogroup(sandbox_runtime, profile):
    sb = sandbox_runtime.create_sandbox(f"group-{profile}", COUNTER, profile=profile)
    assert sb.call("counter", "incr") == 1
    pid = sb.pid
    assert os.getpgid(pid) == pid  # killpg(pid) reaches everything it starts
    assert os.getsid(pid) == os.getsid(0)  # no session of its own
    if _autogroup("self") is None:
        pytest.skip("this kernel shows no scheduling autogroups")
    assert _autogroup(pid) == _autogroup("self")


def _run_in_child(fn) -> int:
    """Exit status of ``fn()`` run in a forked child (its return value, 99 if it raised)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_own_group_drops_an_inherited_controlling_terminal():
    """A process with a controlling terminal (here a pty's, made the terminal of a
    session of its own) forks one that calls own_group: that one leads its own
    process group and can no longer open its terminal (``/dev/tty``)."""

    def session_with_a_terminal() -> int:
        os.setsid()
        leader, follower = os.openpty()  # the session leader's first tty: its terminal
        os.close(os.open(os.ttyname(follower), os.O_RDWR))
        tty = os.open("/dev/tty", os.O_RDWR)  # it has one now
        os.close(tty)

        def child() -> int:
            before = os.open("/dev/tty", os.O_RDWR)  # inherited
            os.close(before)
            own_group()
            if os.getpgid(0) != os.getpid():
                return 3
            try:
                os.close(os.open("/dev/tty", os.O_RDWR))
            except OSError as exc:
                return 0 if exc.errno == errno.ENXIO else 4
            return 5  # the terminal is still there

        return _run_in_child(child)

    assert _run_in_child(session_with_a_terminal) == 0


def test_own_group_without_a_terminal_is_quiet():
    def child() -> int:
        os.setsid()  # a session with no terminal, already a group leader
        own_group()
        return 0 if os.getpgid(0) == os.getpid() else 3

    assert _run_in_child(child) == 0
