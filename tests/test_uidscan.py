"""Shared passes over /proc for the processes of sandbox UIDs (runtime.child.uidscan)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from runtime.child.uidscan import UidScans, pids_of

pytestmark = pytest.mark.timeout(30)


def test_a_pass_finds_the_processes_of_each_uid():
    if os.geteuid() != 0:
        pytest.skip("starting a process under another UID needs root")
    uid = 199_999
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, user=uid, group=uid)
    try:
        found = pids_of({uid, os.getuid()})
        assert found[uid] == [proc.pid]
        assert os.getpid() in found[os.getuid()]
    finally:
        proc.kill()
        proc.wait()


def test_requests_made_while_a_pass_runs_share_the_next_one():
    passes: list[set[int]] = []
    first_running, let_go = threading.Event(), threading.Event()

    def scan(uids: set[int]) -> dict[int, list[int]]:
        passes.append(set(uids))
        if len(passes) == 1:
            first_running.set()
            assert let_go.wait(10)
        n = len(passes)  # which pass saw it: the pids say
        return {uid: [uid * 10 + n] for uid in uids}

    scans = UidScans(scan)
    got: dict[int, list[int]] = {}

    def ask(uid: int) -> None:
        got[uid] = scans.pids(uid)

    first = threading.Thread(target=ask, args=(1,))
    first.start()
    assert first_running.wait(10)
    later = [threading.Thread(target=ask, args=(uid,)) for uid in (2, 3, 4)]
    for t in later:
        t.start()
    # The three wait for the running pass: they all joined the one not started yet.
    from sandbox.testing import wait_for

    wait_for(lambda: scans._open.uids == {2, 3, 4}, 10)
    let_go.set()
    for t in [first, *later]:
        t.join(10)
    assert passes == [{1}, {2, 3, 4}]
    # Each got the pass that started after it asked: 1 the first, the others the second.
    assert got == {1: [11], 2: [22], 3: [32], 4: [42]}


def test_a_failed_pass_raises_in_each_request_and_the_next_pass_runs():
    calls = []

    def scan(uids: set[int]) -> dict[int, list[int]]:
        calls.append(set(uids))
        if len(calls) == 1:
            raise OSError("no /proc")
        return {uid: [] for uid in uids}

    scans = UidScans(scan)
    with pytest.raises(OSError):
        scans.pids(5)
    assert scans.pids(5) == []
    assert calls == [{5}, {5}]


def _under(uid: int) -> subprocess.Popen:
    return subprocess.Popen(["tail", "-f", "/dev/null"], stdin=subprocess.DEVNULL,
                            user=uid, group=uid)


def test_strays_are_the_uids_processes_outside_the_cgroups(tmp_path):
    """``kill_strays`` kills what runs under the UID outside the cgroups, spares
    the cgroups' members, and vouches for nothing when the sandbox's process was
    not in its cgroups (a cgroup here is a directory with a ``cgroup.procs``)."""
    from runtime.child import isolation

    if os.geteuid() != 0:
        pytest.skip("starting a process under another UID needs root")
    uid = 199_998
    member, inside, stray = _under(uid), _under(uid), _under(uid)
    try:
        procs = tmp_path / "cgroup.procs"
        state = {"uid": uid, "cgroups": {"pids": str(tmp_path)}}
        procs.write_text(f"{inside.pid}\n")
        assert not isolation.in_cgroups(state, member.pid)
        assert isolation.kill_strays(state, None) is None  # member outside: no verdict
        assert stray.poll() is None and inside.poll() is None
        procs.write_text(f"{member.pid}\n{inside.pid}\n")
        assert isolation.in_cgroups(state, member.pid)
        assert isolation.kill_strays(state, member.pid) == [stray.pid]
        assert stray.wait(10) is not None
        assert member.poll() is None and inside.poll() is None
        assert isolation.kill_strays({**state, "cgroups": {}}, member.pid) is None
        assert isolation.kill_strays({**state, "uid": None}, member.pid) is None
    finally:
        for p in (member, inside, stray):
            p.kill()
            p.wait()
