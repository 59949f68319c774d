"""A double-forked daemon must not outlive destroy."""

from __future__ import annotations

import subprocess

import psutil
import pytest
from conftest import attempt, wait_for

pytestmark = pytest.mark.timeout(60)


def _daemonize(marker: str) -> int:
    import os

    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            import threading

            while True:
                with open(marker, "a") as fh:
                    fh.write("alive\n")
                threading.Event().wait(0.05)
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _sandbox_processes(uid: int | None, pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["uids", "pid"]):
        try:
            if (uid is not None and p.info["uids"].real == uid) or os_getpgid(p.pid) == pgid:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def os_getpgid(pid: int) -> int:
    import os

    return os.getpgid(pid)


def test_high_refuses_the_fork(world):
    sb = world.sandbox()
    marker = world.marker()
    got = attempt(sb, _daemonize, str(marker))
    assert isinstance(got, Exception) and "os.fork refused" in str(got), got
    info = sb.info()
    sb.destroy()
    assert not marker.exists()
    assert not _sandbox_processes(info.get("uid"), info["pid"])
    assert world.events(sb.id, "os.fork"), world.events(sb.id)


def test_low_daemon_that_left_the_process_group_dies_with_the_sandbox(world):
    """Under ``low`` forking works; the daemon escapes the process group (setsid),
    so killpg cannot reach it: destroy finds it in the sandbox's cgroup / by UID."""
    info0 = world.sandbox(profile="low", id="lowd").info()
    if not info0.get("cgroups") and info0.get("uid") is None:
        pytest.skip("neither a cgroup nor a sandbox UID is available to find escaped processes")
    sb = world.rt.sandbox("lowd")
    marker = world.workdir(sb) / "daemon.log"
    assert isinstance(attempt(sb, _daemonize, str(marker)), int)
    wait_for(marker.exists, 10)
    uid = info0.get("uid")
    escaped = [
        p for p in psutil.process_iter(["uids"])
        if uid is not None and p.info["uids"] and p.info["uids"].real == uid and p.pid != info0["pid"]
    ]
    assert escaped or info0.get("cgroups"), "the daemon should be running before destroy"
    sb.destroy()
    gone, alive = psutil.wait_procs(escaped, timeout=5)
    assert not alive, f"daemon outlived destroy: {alive}"
    assert world.events("lowd", "sandbox.leftovers"), world.events("lowd")


def _outsider(uid: int) -> subprocess.Popen:
    """A process under the sandbox's UID in neither its cgroups nor its process
    group (what an incarnation whose cgroup join failed could leave): only the
    destroy's pass over the UID's processes can find it."""
    return subprocess.Popen(["tail", "-f", "/dev/null"], stdin=subprocess.DEVNULL,
                            user=uid, group=uid, start_new_session=True)


def _survivors(procs: list[subprocess.Popen]) -> list[int]:
    """The pids of ``procs`` still running 5 s after a destroy; reaps them all."""
    alive = []
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            alive.append(p.pid)
            p.kill()
            p.wait()
    return alive


def test_a_process_left_under_the_uid_outside_the_cgroup_dies_with_the_sandbox(world):
    info = world.sandbox(id="uidleft").info()
    if info.get("uid") is None:
        pytest.skip("sandboxes have no UID of their own here")
    outsider = _outsider(info["uid"])
    world.rt.destroy_sandbox("uidleft")
    alive = _survivors([outsider])
    assert not alive, f"a process under the sandbox's UID outlived destroy: {alive}"
    assert world.events("uidleft", "sandbox.leftovers"), world.events("uidleft")


def test_destroys_side_by_side_each_kill_what_their_uid_left(world):
    """A batch's destroys share their passes over /proc: each still finds its own."""
    ids = [f"uidb{i}" for i in range(6)]
    infos = [world.sandbox(id=sid).info() for sid in ids]
    if infos[0].get("uid") is None:
        pytest.skip("sandboxes have no UID of their own here")
    outsiders = [_outsider(info["uid"]) for info in infos]
    results = world.rt.batch_destroy(ids, workers=6)
    assert all(r.ok for r in results), results
    alive = _survivors(outsiders)
    assert not alive, f"processes under the sandboxes' UIDs outlived destroy: {alive}"
    for sid in ids:
        assert world.events(sid, "sandbox.leftovers"), (sid, world.events(sid))


def _join_group(pgid: int) -> str:
    import os

    try:
        os.setpgid(0, pgid)
    except OSError as exc:
        return f"refused: {exc.strerror}"
    return "joined"


def test_low_cannot_join_the_hosts_process_group(world):
    """A sandbox shares its host's session (a group of its own, not a session:
    runtime.child.boot.own_group), so the kernel would let it join the host's
    process group, and a kill(0) would then reach the host: the seccomp filter
    refuses every setpgid but to a group of its own, in every profile."""
    import os

    sb = world.sandbox(profile="low", id="lowpg")
    if "seccomp" not in (sb.info().get("isolation") or ()):
        pytest.skip(f"the seccomp layer is not applied here: {sb.info()['isolation_skipped']}")
    host_group = os.getpgid(0)
    assert attempt(sb, _join_group, host_group) == "refused: Operation not permitted"
    assert os.getpgid(sb.pid) == sb.pid  # seen from the host: still its own group
    assert attempt(sb, _join_group, 0) == "joined"  # a group of its own stays allowed
