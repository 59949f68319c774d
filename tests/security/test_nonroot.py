"""A host that is not root contains its sandboxes too (user namespaces).

CI runs as root, so a real unprivileged host is started here: ``nonroot_host.py``
run as ``nobody`` (``setpriv``), in a mount namespace of the test's own where
the Python installation is reachable by other users if it sits under a private
directory such as ``/root/.pyenv`` (that is set-up of the test machine, not of
the runtime). One runtime, a victim and an attacker sandbox, both ``low``; every
attack is judged from outside: files in world-writable host directories (in
and out of ``/tmp``), the host's ``/dev/shm`` and ``/var/tmp``, a listener on
the host's loopback, a unix socket in the host user's home, the victim's
workdir and counter, the host's and the fork server's survival, the
environment of the host's process, the attacker's fd table and namespaces.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import host_address

from runtime.child import isolation, userns
from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
HOST = Path(__file__).with_name("nonroot_host.py")
USER, GROUP = "nobody", "nogroup"
SECRET = f"host-secret-{uuid.uuid4().hex}"


def _launcher(stage: Path) -> str:
    """Shell run as root in a private mount namespace: each directory that hides the
    Python installation from other users becomes an empty tmpfs with the
    installation moved back in; then the host starts as ``nobody``."""
    lines = ["set -e"]
    roots = [os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)]
    for n, (hidden, paths) in enumerate(isolation.exposures(roots)):
        for m, p in enumerate(paths):
            lines.append(f"mkdir -p {stage}/{n}-{m} && mount --bind {p} {stage}/{n}-{m}")
        lines.append(f"mount -t tmpfs -o mode=0755,size=64k tmpfs {hidden}")
        for m, p in enumerate(paths):
            lines.append(f"mkdir -p {p} && mount --move {stage}/{n}-{m} {p}")
    # slirp4netns opens /dev/net/tun as the host's user: give it the usual mode
    # (0666) in this mount namespace, whatever the test machine has
    lines.append(f"mkdir -p {stage}/dev && mount -t tmpfs -o mode=0755,size=64k tmpfs {stage}/dev")
    lines.append(f"mknod -m 666 {stage}/dev/tun c 10 200 && mount --bind {stage}/dev/tun /dev/net/tun")
    lines.append(f'exec setpriv --reuid={USER} --regid={GROUP} --clear-groups --inh-caps=-all "$@"')
    return "\n".join(lines)


def _unprivileged_userns_forbidden() -> str | None:
    probe = subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups",
         "unshare", "-U", "-r", "-m", "-p", "-f", "true"],
        capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else probe.stderr.strip() or "unshare failed"


def _listener(addr: str) -> socket.socket:
    s = socket.socket()
    s.bind((addr, 0))
    s.listen(4)
    s.setblocking(False)
    return s


def _accepted(s: socket.socket) -> bool:
    try:
        s.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def _fd_table(pid: int) -> dict[int, str]:
    return {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}


@pytest.fixture(scope="module")
def run() -> Iterator[dict[str, Any]]:
    """Start the unprivileged host, let it attack, look from outside; its report."""
    if os.geteuid() != 0:
        pytest.skip("starting a host as an unprivileged user needs a root test runner")
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (util-linux)")
    why = _unprivileged_userns_forbidden()
    if why is not None:
        pytest.skip(f"the kernel forbids unprivileged user namespaces here: {why}")
    nobody = pwd.getpwnam(USER)
    made: list[str] = []

    def mkdir(mode: int, owner: bool, where: str | None = None) -> str:
        d = tempfile.mkdtemp(prefix="sandbox-nonroot-", dir=where)
        made.append(d)
        os.chmod(d, mode)
        if owner:
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        return d

    listener = _listener("127.0.0.1")
    addr = host_address()
    remote = {k: _listener(addr) for k in ("allowed", "other")} if addr else {}
    name = uuid.uuid4().hex
    outside = {
        "tmp": os.path.join(mkdir(0o777, False), "marker"),
        # outside every private tmpfs: only the read-only mount view stands in the way
        "repo": os.path.join(mkdir(0o777, False, str(ROOT)), "marker"),
        "shm": f"/dev/shm/sandbox-nonroot-{name}",
        "var_tmp": f"/var/tmp/sandbox-nonroot-{name}",
    }
    # home and workdirs outside /tmp (whose private tmpfs would hide them anyway)
    home = mkdir(0o700, True, str(ROOT))
    with open(os.path.join(home, "secret.txt"), "w") as fh:
        fh.write(SECRET)
    os.chown(os.path.join(home, "secret.txt"), nobody.pw_uid, nobody.pw_gid)
    stage = mkdir(0o700, False)
    brief = {"base": mkdir(0o700, True, str(ROOT)), "app": str(ROOT / "examples" / "counter"),
             "write": outside, "port": listener.getsockname()[1], "secret": SECRET}
    if remote:
        brief["egress"] = {"host": addr, "allowed": remote["allowed"].getsockname()[1],
                           "other": remote["other"].getsockname()[1]}
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "HOST_SECRET": SECRET}
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", _launcher(Path(stage)), "launcher",
         os.path.join(sys.prefix, "bin", "python"), str(HOST), json.dumps(brief)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    report: dict[str, Any] = {}
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready, _, _ = select.select([proc.stdout], [], [], 90)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            pytest.fail(f"the unprivileged host gave no report: {proc.communicate()[1][-3000:]}")
        report = json.loads(line)
        pid = report["pids"]["attacker"]
        report["fd_table"] = _fd_table(pid)
        report["uid_seen"] = psutil.Process(pid).uids().real
        report["own_userns"] = os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
        report["group"] = {"leads": os.getpgid(pid) == pid, "sid": os.getsid(pid),
                           "host_sid": os.getsid(report["pids"]["host"])}
        report["outside"] = {k: os.path.exists(p) for k, p in outside.items()}
        report["planted"] = os.path.exists(os.path.join(report["workdirs"]["victim"], "planted.txt"))
        report["loopback_accepted"] = _accepted(listener)
        report["remote_accepted"] = {k: _accepted(s) for k, s in remote.items()}
        proc.stdin.write("done\n")
        proc.stdin.close()
        proc.wait(60)
        report["exit"] = proc.returncode
        report["stderr"] = proc.stderr.read() if proc.stderr else ""
        gone = wait_for(lambda: not [p for p in report["pids"].values() if psutil.pid_exists(p)
                                     and psutil.Process(p).status() != psutil.STATUS_ZOMBIE],
                        30, message=f"processes outlived the host: {report['pids']}")
        report["all_gone"] = gone
        yield report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        for s in [listener, *remote.values()]:
            s.close()
        for p in (outside["shm"], outside["var_tmp"]):
            if os.path.exists(p):
                os.unlink(p)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def test_the_host_runs_its_sandboxes_in_their_own_user_and_pid_namespaces(run):
    assert run["exit"] == 0, run["stderr"][-3000:]
    assert run["uid_seen"] == pwd.getpwnam(USER).pw_uid and run["own_userns"]
    for layer in ("userns", "pidns", "mountns", "netns", "ipcns", "seccomp", "no_new_privs", "rlimits"):
        assert layer in run["isolation"], run["isolation"]
    # uid 0 of its namespace, without a capability (no mount, no unshare: seccomp)
    assert run["got"]["uid"] == [0, 0]


def test_the_sandbox_leads_its_group_in_the_hosts_session(run):
    """In its own pid namespace too: the sandbox is forked beside the namespace's
    init (runtime.child.userns.spawn), not by it, so the init's session is not
    its own; a session per sandbox would be a scheduling autogroup per sandbox
    (test_child_group.py)."""
    assert run["group"]["leads"], run["group"]
    assert run["group"]["sid"] == run["group"]["host_sid"], run["group"]


def test_nothing_is_written_outside_the_workdir(run):
    assert run["outside"] == {k: False for k in run["outside"]}, run["got"]
    assert not run["planted"], run["got"]["write:victim"]


def test_the_siblings_workdir_and_the_host_users_home_are_hidden(run):
    got = run["got"]
    assert SECRET not in json.dumps(got), "a secret of the victim or the host reached the attacker"
    assert got["read:victim"].startswith("failed") and got["read:home"].startswith("failed")
    assert got["list:workdirs"] == [os.path.basename(run["workdirs"]["attacker"])], got["list:workdirs"]


def test_the_host_loopback_and_the_host_users_sockets_are_out_of_reach(run):
    got = run["got"]
    assert got["connect:loopback"] != "connected" and not run["loopback_accepted"]
    assert got["connect:home_socket"] != "connected" and not run["home_socket_accepted"]


def test_no_process_outside_the_sandbox_can_be_seen_signalled_or_traced(run):
    got = run["got"]
    assert max(got["proc:pids"]) < 10, got["proc:pids"]  # its own pid namespace only
    for name in ("host", "victim", "forkserver"):
        assert got[f"ptrace:{name}"] != "attached"
        assert got[f"kill:{name}"] != "sent", got  # no such process in its namespace
    # everything survived kill(pid) and kill(-1): the host reported, the victim counts on
    assert run["victim_counter"] == 2 and run["attacker_alive"] == 1


def test_the_sandbox_holds_only_its_stdin_output_pipes_and_channel(run):
    table = run["fd_table"]
    assert sorted(table) == [0, 1, 2, 3], table
    assert table[0] == "/dev/null" and table[3].startswith("socket:")
    assert table[1].startswith("pipe:") and table[2].startswith("pipe:")


def test_egress_reaches_only_the_allowlisted_address(run):
    if "egress" not in run:
        pytest.skip("this host has no IPv4 address other than loopback")
    got = list(run["egress"].values())
    assert got[0] == "connected" and got[1] != "connected" and got[2] != "connected", got
    assert run["remote_accepted"] == {"allowed": True, "other": False}
    assert not run["loopback_accepted"]


def test_nothing_outlives_the_host(run):
    assert run["all_gone"]


def test_a_forbidding_kernel_setting_is_named(monkeypatch, tmp_path):
    """The sysctls cannot be changed on a shared test machine: a fake /proc/sys and
    a failing probe stand in for a kernel that forbids unprivileged namespaces."""
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "max_user_namespaces").write_text("0\n")
    monkeypatch.setattr(userns, "SYSCTL", str(tmp_path))
    monkeypatch.setattr(userns, "_PROBE", "import sys; sys.exit('unshare: Operation not permitted')")
    monkeypatch.setattr(userns, "_unavailable", [])
    why = userns.unavailable()
    assert why is not None
    assert "user.max_user_namespaces=0" in why and "sysctl -w user.max_user_namespaces" in why
    assert "Operation not permitted" in why


def test_creation_fails_naming_the_setting_when_the_kernel_forbids_it(monkeypatch):
    """What a non-root host whose kernel forbids user namespaces is told for every
    sandbox: the namespaces are missing, and why. (A double for the euid and the
    probe: the test runner is root and the sysctls are the machine's.)"""
    reason = "this host is not root and cannot create ...: user.max_user_namespaces=0 (sysctl -w ...)"
    monkeypatch.setattr(isolation.os, "geteuid", lambda: 65534)
    monkeypatch.setattr(userns, "unavailable", lambda: reason)
    monkeypatch.setattr(isolation, "_detected", None)
    missing = isolation.missing_required()
    assert {"userns", "pidns", "mountns", "netns", "ipcns"} <= set(missing)
    assert all(why == reason for layer, why in missing.items() if layer != "seccomp"), missing
    exc = isolation.IsolationUnavailable(missing)
    assert "user.max_user_namespaces=0" in str(exc)
    monkeypatch.setattr(isolation, "_detected", None)  # not cached for later tests


def test_what_a_non_root_host_hides(monkeypatch, tmp_path):
    """The home (with the code under it bound back), the directory given as
    base_dir; a home that is itself on the import path stays."""
    home, base = tmp_path / "home", tmp_path / "srv" / "base"
    (home / "venv").mkdir(parents=True)
    (base / "sandbox-rt-1" / "s1").mkdir(parents=True)
    monkeypatch.setattr(isolation, "PRIVATE_TMP", ("/nonexistent-private-tmp",))
    monkeypatch.setenv("HOME", str(home))
    wd = str(base / "sandbox-rt-1" / "s1")
    got = dict(isolation.hidden_for_userns(wd, [str(home / "venv")]))
    assert got[str(base)] == [] and got[str(home)] == [str(home / "venv")], got
    assert str(home) not in dict(isolation.hidden_for_userns(wd, [str(home)]))
