"""Shared passes over /proc for the processes of sandbox UIDs (runtime.child.uidscan)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from runtime.child.uidscan import UidScans, now_ticks, pids_by_uid, start_ticks

pytestmark = pytest.mark.timeout(30)


def test_a_pass_finds_the_processes_of_each_uid():
    if os.geteuid() != 0:
        pytest.skip("starting a process under another UID needs root")
    uid = 199_999
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, user=uid, group=uid)
    try:
        found = pids_by_uid()
        assert found[uid] == [proc.pid]
        assert os.getpid() in found[os.geteuid()]
        assert start_ticks(proc.pid) <= now_ticks()
    finally:
        proc.kill()
        proc.wait()


def _counting_scan(passes: list[int], hold: threading.Event | None = None,
                   running: threading.Event | None = None):
    def scan() -> dict[int, list[int]]:
        passes.append(len(passes) + 1)
        n = len(passes)
        if n == 1 and hold is not None:
            running.set()
            assert hold.wait(10)
        return {uid: [uid * 10 + n] for uid in (1, 2, 3, 4)}  # which pass saw it
    return scan


def test_requests_made_while_a_pass_runs_share_the_next_one():
    passes: list[int] = []
    first_running, let_go = threading.Event(), threading.Event()
    scans = UidScans(_counting_scan(passes, let_go, first_running))
    got: dict[int, list[int]] = {}

    def ask(uid: int) -> None:
        got[uid] = scans.pids(uid)

    first = threading.Thread(target=ask, args=(1,))
    first.start()
    assert first_running.wait(10)
    later = [threading.Thread(target=ask, args=(uid,)) for uid in (2, 3, 4)]
    for t in later:
        t.start()
    # The three wait for the running pass, having joined the one not started yet.
    from sandbox.testing import wait_for

    wait_for(lambda: sum(t.is_alive() for t in later) == 3 and scans._running.locked(), 10)
    let_go.set()
    for t in [first, *later]:
        t.join(10)
    assert len(passes) == 2
    # Each got a pass that started after it asked: 1 the first, the others the second.
    assert got == {1: [11], 2: [22], 3: [32], 4: [42]}


def test_a_pass_that_started_after_the_moment_asked_for_serves_it():
    passes: list[int] = []
    scans = UidScans(_counting_scan(passes))
    before = now_ticks() - 1
    assert scans.since(1, before) == [11]  # no pass yet: one is made
    assert scans.since(2, before) == [21]  # the last pass started after `before`
    assert len(passes) == 1
    assert scans.since(3, now_ticks() + 1) == [32]  # not after this: a new pass
    assert scans.pids(4) == [43]  # a fresh one always
    assert len(passes) == 3


def test_a_failed_pass_raises_in_each_request_and_the_next_pass_runs():
    calls = []

    def scan() -> dict[int, list[int]]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no /proc")
        return {}

    scans = UidScans(scan)
    with pytest.raises(OSError):
        scans.pids(5)
    assert scans.since(5, 0) == []  # the failed pass serves nobody
    assert len(calls) == 2


def test_a_failed_pass_gives_no_verdict_so_release_makes_its_own(monkeypatch, tmp_path):
    """A pass over /proc that fails while the process stops must not fail the
    destroy: ``kill_strays`` then vouches for nothing (``release`` makes the pass
    after the exit). /proc that cannot be read is a fault a test cannot cause for
    root: the scan is replaced by one that raises."""
    from runtime.child import isolation

    def unreadable() -> dict[int, list[int]]:
        raise OSError(13, "simulated: /proc cannot be read")

    monkeypatch.setattr(isolation, "_uid_scans", UidScans(unreadable))
    (tmp_path / "cgroup.procs").write_text(f"{os.getpid()}\n")
    state = {"uid": 199_997, "cgroups": {"pids": str(tmp_path)}}
    assert isolation.kill_strays(state, os.getpid()) is None
    assert isolation.kill_strays(state, os.getpid(), since=0) is None


def _under(uid: int) -> subprocess.Popen:
    return subprocess.Popen(["tail", "-f", "/dev/null"], stdin=subprocess.DEVNULL,
                            user=uid, group=uid)


def test_strays_are_the_uids_processes_outside_the_cgroups(tmp_path, monkeypatch):
    """``kill_strays`` kills what runs under the UID outside the cgroups, spares
    the cgroups' members, and vouches for nothing when the sandbox's process was
    not in its cgroups (a cgroup here is a directory with a ``cgroup.procs``).
    A pass that started after the member did and shows no stray is taken as is;
    a stray it shows is killed from a fresh pass."""
    from runtime.child import isolation

    if os.geteuid() != 0:
        pytest.skip("starting a process under another UID needs root")
    passes: list[int] = []

    def counted() -> dict[int, list[int]]:
        passes.append(1)
        return pids_by_uid()

    monkeypatch.setattr(isolation, "_uid_scans", UidScans(counted))
    uid = 199_998
    procs: list[subprocess.Popen] = []
    try:
        member, inside, stray = (_under(uid) for _ in range(3))
        procs += [member, inside, stray]
        cgroup = tmp_path / "cgroup.procs"
        state = {"uid": uid, "cgroups": {"pids": str(tmp_path)}}
        cgroup.write_text(f"{inside.pid}\n")
        assert not isolation.in_cgroups(state, member.pid)
        assert isolation.kill_strays(state, None) is None  # member outside: no verdict
        assert not passes and stray.poll() is None and inside.poll() is None
        cgroup.write_text(f"{member.pid}\n{inside.pid}\n")
        assert isolation.in_cgroups(state, member.pid)
        since = start_ticks(member.pid)
        assert isolation.kill_strays(state, member.pid, since) == [stray.pid]
        assert stray.wait(10) is not None
        assert member.poll() is None and inside.poll() is None
        isolation._uid_scans.pids(uid)  # a pass after the stray was reaped
        made = len(passes)
        # The last pass started after the member: it shows no stray, none is made.
        assert isolation.kill_strays(state, member.pid, since) == []
        assert len(passes) == made
        # A stray the last pass shows is looked for again, and killed.
        late = _under(uid)
        procs.append(late)
        isolation._uid_scans.pids(uid)  # the last pass now shows it
        assert isolation.kill_strays(state, member.pid, since) == [late.pid]
        assert late.wait(10) is not None
        assert isolation.kill_strays({**state, "cgroups": {}}, member.pid) is None
        assert isolation.kill_strays({**state, "uid": None}, member.pid) is None
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_the_workdir_outlives_the_pass_over_its_uid(tmp_path, monkeypatch):
    """The sandbox's UID is its workdir's inode number: the workdir goes after
    ``release`` (its pass over the UID's processes without a verdict from
    ``kill_strays``, the cgroups' removal with one), so no sandbox created meanwhile
    can have the UID while a process of this one may still run."""
    from types import SimpleNamespace

    from actors import containment, manager

    workdir = tmp_path / "wd"
    seen: list[tuple[bool, bool]] = []

    def release(_m, _record, *, strays_killed=False):
        seen.append((strays_killed, workdir.exists()))

    monkeypatch.setattr(containment, "release", release)
    record = SimpleNamespace(workdir=str(workdir), config=SimpleNamespace(id="wd"),
                             supervisor=None)
    for strays_killed in (False, True):
        workdir.mkdir()
        manager._remove_remains(record, lambda name: None, str(tmp_path),
                                stopped=True, strays_killed=strays_killed)
        assert not workdir.exists()
    assert seen == [(False, True), (True, True)]


def test_release_reads_no_member_list_of_an_empty_cgroup_and_kills_what_one_holds(
        tmp_path, monkeypatch):
    """After ``kill_strays`` vouched (``strays_killed``), ``release`` removes an empty
    cgroup without reading its member list; one whose removal fails (it has a
    member) has its members killed and reported (a cgroup here is a directory)."""
    from runtime.child import isolation

    reads: list[str] = []
    members = isolation._cgroup_members
    monkeypatch.setattr(isolation, "_cgroup_members",
                        lambda state: reads.append("read") or members(state))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert isolation.release({"cgroups": {"pids": str(empty)}}, strays_killed=True) == []
    assert not empty.exists() and reads == []
    held = tmp_path / "held"
    held.mkdir()
    proc = subprocess.Popen(["tail", "-f", "/dev/null"], stdin=subprocess.DEVNULL)
    try:
        (held / "cgroup.procs").write_text(f"{proc.pid}\n")  # the rmdir fails: not empty
        left = isolation.release({"cgroups": {"pids": str(held)}}, timeout=0.05,
                                 strays_killed=True)
        assert left == [proc.pid] and reads
        assert proc.wait(10) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_membership_reads_stop_where_the_answer_is_known(tmp_path, monkeypatch):
    """``kill_strays`` reads no cgroup member list when its pass saw nothing under
    the UID but the sandbox's own process (no stray can be outside the cgroups),
    and ``in_cgroups`` stops at the first cgroup that lists the process (a cgroup
    here is a directory with a ``cgroup.procs``)."""
    from runtime.child import isolation

    reads: list[str] = []
    members = isolation._members
    monkeypatch.setattr(isolation, "_members",
                        lambda cgroup: reads.append(os.path.basename(cgroup)) or members(cgroup))
    uid, member = 199_997, 4_000_001
    monkeypatch.setattr(isolation, "_uid_scans", UidScans(lambda: {uid: [member]}))
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
        (d / "cgroup.procs").write_text(f"{member}\n")
    state = {"uid": uid, "cgroups": {"memory": str(first), "pids": str(second)}}
    assert isolation.kill_strays(state, member) == []
    assert reads == []
    assert isolation.in_cgroups(state, member) and reads == ["first"]
    reads.clear()
    assert not isolation.in_cgroups(state, member + 1) and reads == ["first", "second"]
