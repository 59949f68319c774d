"""Code that gets past the audit hook still cannot run a program (seccomp).

The attacks the independent suite used against the hook: rebinding
``subprocess.sys`` (so no audit event fires) and calling ``fork_exec`` directly
(``subprocess._fork_exec``, a reference the guard used not to wrap), under
``high-bypass`` / ``medium-bypass`` (their profile with ``subprocess`` and
``_posixsubprocess`` importable, the groups still denied). The guard now catches
both; the kernel is shown to stop what does get past it with
``fork`` + ``execv`` called through ctypes, which raises no audit event at all,
under ``high-native`` / ``medium-native`` (the profile with ctypes allowed,
``subprocess`` still denied): only the seccomp filter is left in the way, and
there the fork already ends the sandbox's process (``SIGSYS``).

Judged from the host: the program would create a marker in the sandbox's own
workdir (a place the sandbox may write), so its absence means it never ran. The
same code under ``low`` (which allows subprocess) does create it: the attacks are
real.
"""

from __future__ import annotations

import pytest
from conftest import HIGH_RUN, attempt, layer_missing

from actors.profiles import Profile

pytestmark = pytest.mark.timeout(90)

BYPASS = Profile.derive(
    HIGH_RUN, name="high-bypass", unblocked_modules=("subprocess", "_posixsubprocess")
)
MEDIUM_BYPASS = Profile.derive(
    "medium", name="medium-bypass", unblocked_modules=("subprocess", "_posixsubprocess"),
    violation_threshold=50,
)
HIGH_NATIVE = Profile.derive(HIGH_RUN, name="high-native", allow=HIGH_RUN.allow | {"native"})
MEDIUM_NATIVE = Profile.derive(
    "medium", name="medium-native", allow=HIGH_RUN.allow | {"native"}, violation_threshold=50
)


def _rebound_subprocess(marker: str) -> str:
    import subprocess
    import sys
    import types

    quiet = types.ModuleType("sys")
    quiet.__dict__.update(sys.__dict__)
    quiet.audit = lambda *a, **k: None
    subprocess.sys = quiet  # Popen's audit event now goes nowhere
    try:
        subprocess.run(["/bin/sh", "-c", f"echo ran > {marker}"], check=False)
        return "started"
    except Exception as exc:  # noqa: BLE001
        return f"failed: {type(exc).__name__}: {exc}"


def _fork_exec(marker: str) -> str:
    import os
    import subprocess

    import _posixsubprocess

    # The guard wraps _posixsubprocess.fork_exec; subprocess kept its own reference.
    fork_exec = getattr(subprocess, "_fork_exec", _posixsubprocess.fork_exec)
    errpipe_read, errpipe_write = os.pipe()
    try:
        pid = fork_exec(
            [b"/bin/sh", b"-c", f"echo ran > {marker}".encode()], [b"/bin/sh"],
            True, (errpipe_write,), None, None,
            -1, -1, -1, -1, -1, -1,
            errpipe_read, errpipe_write,
            True, False, -1, None, None, None, -1,
            None, False,
        )
        os.close(errpipe_write)
        err = b""
        while chunk := os.read(errpipe_read, 1024):  # "OSError:<errno in hex>:..."
            err += chunk
        os.waitpid(pid, 0)
        if not err:
            return "started"
        code = int(err.split(b":")[1] or b"0", 16)
        return f"failed: [Errno {code}] {os.strerror(code)}"
    except Exception as exc:  # noqa: BLE001
        return f"failed: {type(exc).__name__}: {exc}"
    finally:
        os.close(errpipe_read)


def _ctypes_exec(marker: str) -> str:
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    argv = (ctypes.c_char_p * 4)(b"/bin/sh", b"-c", f"echo ran > {marker}".encode(), None)
    # fork through PyDLL, which keeps the GIL across the call: a CDLL call lets
    # it go, and if another of the sandbox's threads took it in that moment the
    # child (where that thread does not exist) would wait for it forever.
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:  # only async-signal-safe calls from here on
        libc.execv(b"/bin/sh", argv)
        libc._exit(ctypes.get_errno())
    status = ctypes.c_int()
    libc.waitpid(pid, ctypes.byref(status), 0)
    code = (status.value >> 8) & 0xFF
    return "started" if code == 0 else f"failed: [Errno {code}] {os.strerror(code)}"


@pytest.fixture
def bypass_world(world):
    if layer_missing("seccomp"):
        pytest.skip(f"seccomp is not available here: {layer_missing('seccomp')}")
    for profile in (BYPASS, MEDIUM_BYPASS, HIGH_NATIVE, MEDIUM_NATIVE):
        world.rt.register_profile(profile)
    return world


@pytest.mark.parametrize("attack", [_rebound_subprocess, _fork_exec])
@pytest.mark.parametrize("profile", ["high-bypass", "medium-bypass"])
def test_hook_bypasses_run_no_program(bypass_world, profile, attack):
    sb = bypass_world.sandbox(profile=profile)
    marker = bypass_world.workdir(sb) / "ran.txt"
    got = attempt(sb, attack, str(marker))
    assert not marker.exists(), f"{profile}/{attack.__name__}: a program ran ({got})"
    assert str(got).startswith("failed"), got
    assert sb.call("counter", "incr") == 1  # the sandbox itself carries on


@pytest.mark.parametrize("profile", ["high-native", "medium-native"])
def test_the_kernel_stops_exec_that_no_hook_sees(bypass_world, profile):
    sb = bypass_world.sandbox(profile=profile)
    marker = bypass_world.workdir(sb) / "ran.txt"
    got = attempt(sb, _ctypes_exec, str(marker))
    assert not marker.exists(), f"{profile}: a program ran ({got})"
    # Stopped by the kernel, not by the guard: the fork itself killed the process
    # (SIGSYS), which the host counted (test_kernel_refusals.py has the rest).
    assert isinstance(got, Exception), got
    assert bypass_world.wait_event(sb.id, "seccomp.kill")["source"] == "observed"


@pytest.mark.parametrize("attack", [_rebound_subprocess, _fork_exec, _ctypes_exec])
def test_the_same_code_runs_a_program_where_exec_is_allowed(world, attack):
    sb = world.sandbox(profile="low")
    marker = world.workdir(sb) / "ran.txt"
    got = attempt(sb, attack, str(marker))
    assert got == "started" and marker.read_text() == "ran\n", got


def _kernel_surface() -> dict:
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for name, nr, args in (("unshare", 272, (0x40000000,)), ("ptrace", 101, (16, os.getppid(), 0, 0)),
                           ("bpf", 321, (0, 0, 0)), ("keyctl", 250, (0, 0, 0))):
        rc = libc.syscall(nr, *args)
        out[name] = (rc, ctypes.get_errno())
    return out


def test_kernel_surface_is_denied_even_in_low(world):
    """Raw syscalls through ctypes (allowed in low) meet the filter: EPERM."""
    if layer_missing("seccomp"):
        pytest.skip(f"seccomp is not available here: {layer_missing('seccomp')}")
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("syscall numbers in this test are x86_64's")
    sb = world.sandbox(profile="low")
    got = attempt(sb, _kernel_surface)
    assert got == {k: (-1, 1) for k in ("unshare", "ptrace", "bpf", "keyctl")}, got
