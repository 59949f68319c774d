"""The OS layers this host offers are applied, and show in the sandbox's info."""

from __future__ import annotations

import os

import psutil
import pytest
from conftest import attempt, layer_missing

pytestmark = pytest.mark.timeout(60)


def _env() -> dict:
    import os

    return {"HOME": os.environ.get("HOME"), "TMPDIR": os.environ.get("TMPDIR"),
            "secret": os.environ.get("SANDBOX_TEST_SECRET"), "uid": os.getuid()}


def _interfaces() -> list[str]:
    import socket

    return [name for _i, name in socket.if_nameindex()]


@pytest.mark.parametrize(
    "layer", ["rlimits", "audit-hook", "netns", "uid", "no_new_privs", "cgroup-pids"]
)
def test_layer_is_applied(world, layer):
    if layer not in ("rlimits", "audit-hook") and layer_missing(layer):
        pytest.skip(f"{layer} is not available on this host: {layer_missing(layer)}")
    info = world.sandbox(profile="high").info()
    assert layer in info["isolation"], info["isolation_skipped"]


def test_environment_is_scrubbed_and_home_is_the_workdir(world, monkeypatch):
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "s3cret")
    import multiprocessing.forkserver as fs

    sb = world.sandbox()
    wd = str(world.workdir(sb))
    got = attempt(sb, _env)
    assert got["HOME"] == wd and got["TMPDIR"].startswith(wd), got
    assert got["secret"] is None, "the host's environment leaked into the sandbox"
    assert fs  # (the forkserver's environment predates the variable anyway)
    if not layer_missing("uid"):
        assert got["uid"] != 0 and psutil.Process(sb.pid).uids().real == got["uid"]
        assert os.stat(wd).st_uid == got["uid"]


@pytest.mark.parametrize("profile", ["high", "medium", "low"])
def test_every_profile_gets_the_os_layers(world, profile):
    """Network, IPC and mount namespaces and the seccomp filter, whatever the
    profile allows inside; the network namespace has only a loopback interface."""
    for layer in ("netns", "ipcns", "mountns", "seccomp"):
        if layer_missing(layer):
            pytest.skip(f"{layer} is not available on this host: {layer_missing(layer)}")
    sb = world.sandbox(profile=profile)
    info = sb.info()
    assert {"netns", "ipcns", "mountns", "seccomp"} <= set(info["isolation"]), info
    with open(f"/proc/{sb.pid}/net/dev") as fh:
        names = {line.split(":")[0].strip() for line in fh.readlines()[2:]}
    assert names == {"lo"}, names
    for ns in ("net", "ipc", "mnt"):
        assert os.readlink(f"/proc/{sb.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    with open(f"/proc/{sb.pid}/status") as fh:
        assert "Seccomp:\t2" in fh.read()


def test_the_seccomp_filter_is_built_once_per_variant_and_kept_as_bpf() -> None:
    """Built by libseccomp when the module is imported (in the fork server), so a
    sandbox only loads the program; the variants deny what their profiles need."""
    from runtime.child import seccomp

    if seccomp.unavailable():
        pytest.skip(seccomp.unavailable())
    seccomp.prepare()
    strict = seccomp.program(deny_exec=True, fatal=True)
    assert seccomp.program(deny_exec=True, fatal=True) is strict  # not built again
    assert {"execve", "fork", "ptrace", "mount"} <= set(strict[1])
    loose = seccomp.program(deny_exec=False, fatal=False)
    assert "execve" not in loose[1] and "ptrace" in loose[1]
    for bpf, _denied in (strict, loose):
        assert bpf and len(bpf) % 8 == 0  # struct sock_filter
