"""What a sandbox process inherits from the host, judged from the host's side.

A sandbox holds exactly: fd 0 on /dev/null, fd 1 and fd 2 on pipes whose read
ends the host holds, fd 3 its channel (a socket whose peer the host holds), and
what its own code opens. Nothing of the fork server's, nothing of
multiprocessing's, none of the host's environment, argv or authentication key.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from conftest import attempt

from runtime.host import forkserver
from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(90)

PROFILES = ["high", "medium", "low"]


def _fd_table(pid: int) -> dict[int, str]:
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return table


def _host_inodes() -> set[str]:
    return set(_fd_table(os.getpid()).values())


@pytest.mark.parametrize("profile", PROFILES)
def test_a_sandbox_holds_exactly_stdin_its_output_pipes_and_its_channel(world, profile):
    sb = world.sandbox(profile=profile)
    assert sb.call("counter", "incr") == 1
    table = _fd_table(sb.pid)
    assert sorted(table) == [0, 1, 2, 3], table
    assert table[0] == "/dev/null"
    assert table[1].startswith("pipe:") and table[2].startswith("pipe:") and table[1] != table[2]
    assert table[3].startswith("socket:")
    mine = _host_inodes()
    # the host holds the other ends: the read ends of both pipes (a pipe's two ends
    # share one inode), and the peer of the channel (a socketpair: the peer's inode
    # is the next one, so check it through the socket's peer instead)
    assert table[1] in mine and table[2] in mine, "output pipes not owned by the host"
    server = forkserver.server_pid()
    assert server is not None
    server_links = set(_fd_table(server).values())
    assert not (set(table.values()) - {"/dev/null"}) & server_links, (
        "the sandbox shares a descriptor with the fork server")


def _whoami() -> dict:
    import os
    import sys

    out = {"environ": dict(os.environ), "argv": list(sys.argv)}
    try:
        with open("/proc/self/environ", "rb") as fh:
            out["block"] = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        out["block"] = f"unreadable: {exc}"
    try:
        import multiprocessing

        out["authkey"] = multiprocessing.current_process().authkey.hex()
    except Exception as exc:  # noqa: BLE001 - refused by the profile is fine
        out["authkey"] = f"refused: {exc}"
    return out


@pytest.mark.parametrize("profile", ["high-run", "medium", "low"])
def test_nothing_of_the_hosts_environment_argv_or_authkey_leaks_in(world, profile, monkeypatch):
    import multiprocessing

    secret = "s3cr3t-" + os.urandom(6).hex()
    monkeypatch.setenv("SANDBOX_HOST_SECRET", secret)
    # A fork server started now sees the secret in the host's environment.
    forkserver.stop_server()
    forkserver.ensure_running()
    sb = world.sandbox(profile=profile)
    got = attempt(sb, _whoami)
    assert isinstance(got, dict), got
    assert secret not in repr(got)
    host_key = multiprocessing.current_process().authkey.hex()
    assert host_key not in repr(got)
    # and from the host: the sandbox's environment block and command line
    with open(f"/proc/{sb.pid}/environ", "rb") as fh:
        block = fh.read()
    with open(f"/proc/{sb.pid}/cmdline", "rb") as fh:
        cmdline = fh.read()
    assert secret.encode() not in block
    assert set(block.split(b"\0")) - {b""} <= {
        f"{k}={os.environ[k]}".encode() for k in forkserver.SERVER_ENV if k in os.environ}
    import sys

    for arg in sys.argv[1:]:
        assert arg.encode() not in cmdline, f"the host's argv ({arg!r}) is in the sandbox's"


def test_killing_the_fork_server_leaves_running_sandboxes_serving(world):
    first = world.sandbox(profile="high")
    assert first.call("counter", "incr") == 1
    old_server = forkserver.server_pid()
    assert old_server is not None and psutil.Process(first.pid).ppid() == old_server
    os.kill(old_server, signal.SIGKILL)
    wait_for(lambda: forkserver.server_pid() != old_server, 10)
    # the running sandbox does not notice
    assert first.call("counter", "incr") == 2
    # a new one starts, from a new fork server
    second = world.sandbox(profile="high")
    assert second.call("counter", "incr") == 1
    assert forkserver.server_pid() not in (None, old_server)
    assert first.call("counter", "get") == 2
    # the orphan still stops when it is destroyed, and is really gone
    orphan = first.pid
    first.destroy()

    def gone() -> bool:
        try:
            return psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, 10)


def test_bytes_written_into_every_inherited_descriptor_reach_no_host_helper(world):
    victim = world.sandbox(profile="low", id="victim")
    assert victim.call("counter", "incr") == 1
    server = forkserver.server_pid()
    attacker = world.sandbox(profile="low", id="attacker")

    def scribble() -> list:
        import os

        hit = []
        for fd in range(4, 1024):  # everything beyond stdio and the channel
            try:
                os.write(fd, b"\x00garbage" * 64)
                hit.append(fd)
            except OSError:
                pass
        return hit

    assert attempt(attacker, scribble) == []
    assert forkserver.server_pid() == server
    assert victim.call("counter", "incr") == 2
