"""A batch destroy is one path: one manager turn for all its ids, one round trip per
component, one store transaction; a lone destroy is a batch of one.

Real runtimes and real child processes; the components' batch forms are counted by
wrapping them (the components run in this process).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import sandbox
import sandbox.testing
from actors import containment
from actors.inflight import InFlight, Ticket
from actors.monitor import ResourceMonitorActor
from actors.security import SecurityControllerActor
from actors.store import Store, StoredSandbox
from actors.versions import VersionManagerActor
from actors.watcher import WatcherActor
from runtime.errors import SandboxError, SandboxNotFound
from test_create_concurrent import gated_app, ids, in_thread, open_gate

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # reaped (also between a look-up and the next)
        return True


def hold_until_read(monkeypatch: pytest.MonkeyPatch, pids: dict[str, int]) -> Callable[[], None]:
    """Hold the sandboxes' processes (``pids``: by id) stopped (SIGSTOP, real
    signals on the real processes) until their destroy has read their cgroup
    membership, then let each go on (SIGCONT). The read comes right after the
    stop request, and a process needs its stop and its exit (>= 1 ms) to leave its
    cgroups; but a loaded host can keep the destroy's thread from the read for
    longer, and the product then makes release's full pass instead (correct, and
    what these tests would read as a failure). Returns what lets them all go (for
    the test's end, whatever happened)."""
    joined = containment.joined_cgroups

    def read_then_go_on(record: Any) -> Any:
        try:
            return joined(record)
        finally:
            pid = pids.get(record.config.id)
            if pid is not None:
                _signal(pid, signal.SIGCONT)

    def let_all_go() -> None:
        for pid in pids.values():
            _signal(pid, signal.SIGCONT)

    monkeypatch.setattr(containment, "joined_cgroups", read_then_go_on)
    for pid in pids.values():
        _signal(pid, signal.SIGSTOP)
    return let_all_go


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # exited (and reaped) already
        pass


@pytest.mark.timeout(120)
def test_the_manager_takes_a_batch_in_one_turn_and_a_refused_id_fails_alone(tmp_path: Path) -> None:
    with sandbox.start(name="db-turn") as rt:
        pids = [rt.create_sandbox(sid, COUNTER).pid for sid in ("a", "b")]
        answers = rt.component("manager").invoke("destroy", ["a", "never", "b", "a"])
        assert [type(a) for a in answers[:3]] == [Ticket, SandboxNotFound, Ticket]
        assert isinstance(answers[3], SandboxError) and "being destroyed" in str(answers[3])
        for ticket in (answers[0], answers[2]):
            ticket.wait(60)
        assert ids(rt) == [] and all(gone(p) for p in pids if p is not None)
        assert [c.id for c in rt.component("sandboxes").which_children()] == []


@pytest.mark.timeout(120)
def test_a_batch_refuses_a_sandbox_being_created_and_destroys_the_others(tmp_path: Path) -> None:
    app, gate = gated_app(tmp_path)
    with sandbox.start(name="db-creating") as rt:
        for sid in ("a", "b"):
            rt.create_sandbox(sid, COUNTER)
        slow, out = in_thread(lambda: rt.create_sandbox("slow", app, profile="low"))
        try:
            sandbox.testing.wait_for(lambda: "slow" in ids(rt), timeout=30)
            results = rt.batch_destroy(["a", "slow", "b"])
        finally:
            open_gate(gate, slow)
            slow.join(60)
        assert [r.ok for r in results] == [True, False, True]
        assert "still being created" in str(results[1].error)
        assert "error" not in out, out.get("error")
        assert ids(rt) == ["slow"]
        rt.destroy_sandbox("slow")


@pytest.mark.timeout(120)
def test_a_batch_makes_one_round_trip_per_component_and_one_store_transaction_per_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, list[list[str]]] = {}

    def counted(cls: Any, op: str) -> None:
        original = getattr(cls, op)

        def wrapper(self: Any, sandbox_ids: list[str]) -> Any:
            calls.setdefault(op, []).append(list(sandbox_ids))
            return original(self, sandbox_ids)

        monkeypatch.setattr(cls, op, wrapper)

    counted(WatcherActor, "op_unwatch_many")
    counted(ResourceMonitorActor, "op_unregister_many")
    counted(SecurityControllerActor, "op_forget_sandboxes")
    counted(VersionManagerActor, "op_forget_many")
    counted(Store, "delete_sandboxes")
    wanted = [f"r{i}" for i in range(4)]
    with sandbox.start(name="db-trips", state_dir=tmp_path / "state") as rt:
        for sid in wanted:
            rt.create_sandbox(sid, COUNTER)
        assert all(r.ok for r in rt.batch_destroy(wanted))
        assert ids(rt) == []
    for op in ("op_unwatch_many", "op_unregister_many", "op_forget_sandboxes", "op_forget_many"):
        assert calls[op] == [wanted], (op, calls[op])
    assert calls["delete_sandboxes"] == [wanted, wanted]  # the manager's and the versions'


@pytest.mark.timeout(120)
def test_every_destroy_of_a_batch_kills_its_uids_strays_while_its_process_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each sandbox is found in its cgroups before its process exits, even when the
    batch's thread starts only after the exits (a busy host), so the shared pass over
    /proc stands for release's: no full pass per sandbox after the exits."""
    vouched: dict[str, bool] = {}
    release = containment.release

    def recorded(manager: Any, record: Any, *, strays_killed: bool = False) -> None:
        vouched[record.config.id] = strays_killed
        release(manager, record, strays_killed=strays_killed)

    pids: list[int] = []
    late = threading.Event()
    run = InFlight.run

    def run_late(self: InFlight, fn: Callable[[], None]) -> None:
        def after_the_exits() -> None:
            sandbox.testing.wait_for(lambda: all(gone(p) for p in pids), timeout=30)
            fn()

        run(self, after_the_exits if late.is_set() else fn)

    monkeypatch.setattr(containment, "release", recorded)
    monkeypatch.setattr(InFlight, "run", run_late)
    wanted = [f"v{i}" for i in range(6)]
    with sandbox.start(name="db-vouch") as rt:
        by_id = {sid: rt.create_sandbox(sid, COUNTER).pid for sid in wanted}
        pids.extend(p for p in by_id.values() if p)
        info = rt.get_sandbox_info(wanted[0])
        if info.get("uid") is None or not info.get("cgroups"):
            pytest.skip("sandboxes have no UID and cgroups of their own here")
        late.set()
        let_all_go = hold_until_read(monkeypatch, {s: p for s, p in by_id.items() if p})
        try:
            assert all(r.ok for r in rt.batch_destroy(wanted))
        finally:
            let_all_go()
    assert vouched == {sid: True for sid in wanted}


@pytest.mark.timeout(120)
def test_each_stop_goes_before_its_cgroup_membership_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A destroy's stop request leaves first; the read of whether the process is in
    its cgroups (for kill_strays) comes right after it, while the process stops
    (it leaves its cgroups at the very end of its exit), and still finds it there."""
    asked_first: dict[str, bool] = {}

    def recorded(record: Any) -> Any:
        proc = record.slot.current()
        asked_first[record.config.id] = proc is not None and proc._conn._closing
        return read(record)

    vouched: dict[str, bool] = {}
    release = containment.release

    def released(manager: Any, record: Any, *, strays_killed: bool = False) -> None:
        vouched[record.config.id] = strays_killed
        release(manager, record, strays_killed=strays_killed)

    monkeypatch.setattr(containment, "release", released)
    with sandbox.start(name="db-order") as rt:
        by_id = {sid: rt.create_sandbox(sid, COUNTER).pid for sid in ("o1", "o2", "o3")}
        info = rt.get_sandbox_info("o1")
        let_all_go = hold_until_read(monkeypatch, {s: p for s, p in by_id.items() if p})
        read = containment.joined_cgroups  # the read that lets its process go on
        monkeypatch.setattr(containment, "joined_cgroups", recorded)
        try:
            rt.destroy_sandbox("o1")
            assert all(r.ok for r in rt.batch_destroy(["o2", "o3"]))
        finally:
            let_all_go()
    assert asked_first == {"o1": True, "o2": True, "o3": True}
    if info.get("uid") is not None and info.get("cgroups"):
        assert vouched == {"o1": True, "o2": True, "o3": True}


def test_store_deletes_sandboxes_in_one_transaction(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    try:
        for sid in ("a", "b", "c"):
            store.put_sandbox(StoredSandbox(sid, {"path": "/x"}, "/w", 1.0))
        store.delete_sandboxes(["a", "c", "never"])
        assert [s.id for s in store.sandboxes()] == ["b"]
    finally:
        store.close()


def test_batch_forms_of_the_components_forget_each_id() -> None:
    with sandbox.start(name="db-forms") as rt:
        rt.create_sandbox("f", COUNTER)
        versions = rt.component("versions")
        assert versions.invoke("forget_many", ["f", "never"]) == [True, False]
        assert versions.invoke("sandboxes") == []
        rt.component("security").invoke("forget_sandboxes", ["f", "never"])
        rt.component("monitor").invoke("unregister_many", ["f", "never"])
        assert rt.component("monitor").invoke("usage", "f") is None
        assert rt.component("watcher").invoke("unwatch_many", ["f", "never"]) == [False, False]
        rt.destroy_sandbox("f")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((str(getattr(record, "sandbox", "")), record.getMessage()))


@pytest.mark.timeout(120)
def test_a_batch_stops_each_sandbox_gracefully_before_its_destroy_returns(tmp_path: Path) -> None:
    """The terminate callbacks of every sandbox of a batch run (graceful stop), and each
    process is gone, its workdir removed and its id free when the batch returns."""
    app = tmp_path / "marks"
    app.mkdir()
    (app / "app.py").write_text(TERMINATE_APP)
    wanted = [f"g{i}" for i in range(3)]
    lines = _Lines()
    logger = logging.getLogger("runtime.output")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)  # each line a sandbox writes is an INFO record
    try:
        with sandbox.start(name="db-graceful") as rt:
            made = [rt.create_sandbox(sid, app) for sid in wanted]
            pids = [sb.pid for sb in made]
            workdirs = [Path(rt.get_sandbox_info(sid)["workdir"]) for sid in wanted]
            assert all(r.ok for r in rt.batch_destroy(wanted))
            assert all(gone(p) for p in pids if p is not None)
            assert not any(w.exists() for w in workdirs)
            assert ids(rt) == [] and [c.id for c in rt.component("sandboxes").which_children()] == []
            sandbox.testing.wait_for(
                lambda: sorted(s for s, text in lines.lines if "terminated shutdown" in text)
                == wanted, timeout=30)
            assert rt.create_sandbox("g0", COUNTER).call("counter", "get") == 0
            rt.destroy_sandbox("g0")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


TERMINATE_APP = """
from runtime.genserver import GenServer


class Marker(GenServer):
    def handle_call(self, request, state):
        return state, state

    def terminate(self, reason, state):
        print("terminated", reason.kind, flush=True)


def children():
    return [Marker.child_spec(name="marker")]
"""


@pytest.mark.timeout(120)
def test_a_destroy_costs_the_manager_no_turn_for_its_own_downs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The destroyed process's ``sandbox.process.down`` event and its supervisor's
    Down change nothing in the manager (the record is ``stopping``), so neither wakes
    it while the destroy's thread finishes; a crash still reaches it."""
    from actors import manager as manager_mod
    from runtime.actor import Down

    seen: list[Any] = []
    on_info = manager_mod.ManagerActor.on_info

    def recorded(self: Any, message: Any) -> None:
        if isinstance(message, (Down, manager_mod._ProcessEvent)):
            seen.append(message)
        on_info(self, message)

    monkeypatch.setattr(manager_mod.ManagerActor, "on_info", recorded)
    with sandbox.start(name="db-quiet") as rt:
        for sid in ("a", "b"):
            rt.create_sandbox(sid, COUNTER, restart="temporary")
        seen.clear()
        rt.destroy_sandbox("a")  # the finishing turn comes after anything they posted
        assert seen == []
        pid = rt.get_sandbox_info("b")["pid"]
        psutil.Process(pid).kill()  # not a destroy: the manager hears it
        sandbox.testing.wait_for(lambda: rt.get_sandbox_info("b")["status"] == "error",
                                 timeout=30)
        assert any(isinstance(m, manager_mod._ProcessEvent) and m.sandbox == "b"
                   and m.event == "sandbox.process.down" for m in seen)


@pytest.mark.timeout(120)
def test_a_destroy_removes_the_remains_once_its_process_has_exited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process the destroy stopped is not restarted: its cgroups and workdir go
    once it has exited, while its supervisor still winds down, and the destroy
    returns only after that supervisor has stopped."""
    from runtime.host.process import ProcessActor

    closed, held = threading.Event(), threading.Event()
    on_exit = ProcessActor.on_exit

    def winding_down(self: Any, reason: Any) -> None:
        on_exit(self, reason)  # the process is gone (exited and reaped)
        closed.set()
        held.wait(90)  # the rest of the supervisor's wind-down waits here

    monkeypatch.setattr(ProcessActor, "on_exit", winding_down)
    with sandbox.start(name="db-reaped") as rt:
        # A long shutdown: the destroy would wait that long for the held supervisor
        # before it removed anything, were it to wait for it first.
        rt.create_sandbox("a", COUNTER, shutdown=60.0)
        info = rt.get_sandbox_info("a")
        workdir = Path(info["workdir"])
        cgroups = [Path(d) for d in (info.get("cgroups") or {}).values()]
        t, out = in_thread(lambda: rt.destroy_sandbox("a"))
        try:
            sandbox.testing.wait_for(closed.is_set, timeout=30)
            sandbox.testing.wait_for(lambda: not workdir.exists(), timeout=30)
            assert not any(d.exists() for d in cgroups)
            assert t.is_alive()  # it waits for the supervisor's stop
        finally:
            held.set()
        t.join(60)
        assert "error" not in out
        assert ids(rt) == [] and [c.id for c in rt.component("sandboxes").which_children()] == []


@pytest.mark.timeout(120)
def test_a_destroys_turn_runs_on_the_callers_thread_when_the_manager_is_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The turn that sends the stops runs where the destroy was asked (no hand-off to
    the manager's thread before the stop leaves), one turn at a time as always."""
    from actors import manager as manager_mod

    threads: list[threading.Thread] = []
    op_destroy = manager_mod.ManagerActor.op_destroy

    def recorded(self: Any, sandbox_ids: list[str]) -> Any:
        threads.append(threading.current_thread())
        return op_destroy(self, sandbox_ids)

    monkeypatch.setattr(manager_mod.ManagerActor, "op_destroy", recorded)
    with sandbox.start(name="db-here") as rt:
        for sid in ("a", "b", "c"):
            rt.create_sandbox(sid, COUNTER)
        for sid in ("a", "b", "c"):
            rt.destroy_sandbox(sid)
        # Each turn on this thread unless something else kept the manager busy then.
        assert len(threads) == 3 and threading.current_thread() in threads
        assert ids(rt) == []


@pytest.mark.timeout(120)
def test_a_destroys_finishing_turn_runs_on_its_thread_when_the_manager_is_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's thread runs the turn that finishes its destroys itself when the
    manager is idle, then settles the tickets: no hand-off to the manager's thread
    and back before the caller hears."""
    from actors import manager as manager_mod

    where: list[str] = []
    finish = manager_mod.ManagerActor._finish_destroy

    def recorded(self: Any, job: Any) -> None:
        where.append(threading.current_thread().name)
        finish(self, job)

    monkeypatch.setattr(manager_mod.ManagerActor, "_finish_destroy", recorded)
    with sandbox.start(name="db-finish") as rt:
        for sid in ("a", "b", "c"):
            rt.create_sandbox(sid, COUNTER)
        rt.destroy_sandbox("a")
        assert rt.batch_destroy(["b", "c"]) and ids(rt) == []
        # On the job's thread unless something else kept the manager busy then.
        assert len(where) == 3 and any(name.startswith("sandbox-job") for name in where)
        assert rt.create_sandbox("a", COUNTER).call("counter", "get") == 0  # the id is free


@pytest.mark.timeout(120)
def test_a_member_left_in_the_cgroups_is_killed_before_the_workdir_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The UID is the workdir's inode: while a process may still run in the sandbox's
    cgroups, the workdir stays, until release has removed them (or killed what is in
    them): the workdir's removal never runs beside release."""
    from actors import manager as manager_mod

    removing = threading.Event()
    seen: list[bool] = []
    release, rmtree = containment.release, manager_mod.shutil.rmtree

    def slow_release(manager: Any, record: Any, *, strays_killed: bool = False) -> None:
        seen.append(removing.wait(1.0))  # a removal beside would start meanwhile
        release(manager, record, strays_killed=strays_killed)

    def noted_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        removing.set()
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(containment, "release", slow_release)
    monkeypatch.setattr(manager_mod.shutil, "rmtree", noted_rmtree)
    with sandbox.start(name="db-member") as rt:
        rt.create_sandbox("a", COUNTER)
        workdir = Path(rt.get_sandbox_info("a")["workdir"])
        removing.clear()
        rt.destroy_sandbox("a")
        assert seen == [False] and not workdir.exists()


def test_remove_workdir_takes_the_usual_shape_and_any_other(tmp_path: Path) -> None:
    from runtime.child import isolation

    usual = tmp_path / "usual"
    (usual / "tmp").mkdir(parents=True)
    isolation.remove_workdir(str(usual))
    assert not usual.exists()
    written = tmp_path / "written"
    (written / "tmp" / "deep").mkdir(parents=True)
    (written / "tmp" / "deep" / "f").write_text("x")
    (written / "state.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (written / "link").symlink_to(outside)  # a link is removed, not followed
    isolation.remove_workdir(str(written))
    assert not written.exists() and (outside / "keep").exists()
    only_link = tmp_path / "only_link"
    only_link.mkdir()
    (only_link / "tmp").symlink_to(outside)  # rmdir does not follow it either
    isolation.remove_workdir(str(only_link))
    assert not only_link.exists() and (outside / "keep").exists()
    isolation.remove_workdir(str(tmp_path / "never"))  # gone already: nothing to do
