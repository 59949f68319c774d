"""Creates of independent sandboxes overlap; the guarantees of a create hold under races.

Real threads and real child processes throughout. The overlap is shown without a
clock: sandbox A's app blocks at boot on a named pipe until the test opens it for
writing, and sandbox B is created (and answers) while A is still booting.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import sandbox
import sandbox.testing
from actors.store import Store
from runtime.actor import ExitReason
from runtime.errors import SandboxError, SandboxExists, SandboxNotFound

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"

GATED_APP = '''
from counter import Counter


def children():
    with open({fifo!r}) as gate:  # blocks until the test opens the pipe for writing
        gate.read()
    return [Counter.child_spec(name="counter")]
'''


def open_gate(fifo: Path, waiting: threading.Thread) -> None:
    """Let the reader of the pipe go on, once it has opened it; nothing to do if the
    thread ``waiting`` on that reader ends first (its boot failed, say)."""

    def opened() -> bool:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                raise
            return not waiting.is_alive()
        return True

    sandbox.testing.wait_for(opened, timeout=30)


def gated_app(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the counter app whose boot waits on a named pipe; returns (app, pipe).

    The pipe lives in the app's own directory: the sandbox's private /tmp hides the
    rest of pytest's tmp_path, but binds the app's directory back read-only (and
    makes the directories above it searchable), so its UID can open the pipe.
    """
    app = tmp_path / "gated"
    app.mkdir()
    app.chmod(0o755)
    fifo = app / "gate.fifo"
    os.mkfifo(fifo, 0o666)
    fifo.chmod(0o666)
    (app / "counter.py").write_text((COUNTER / "counter.py").read_text())
    (app / "app.py").write_text(GATED_APP.format(fifo=str(fifo)))
    return app, fifo


def ids(rt: Any) -> list[str]:
    return [i["id"] for i in rt.list_sandboxes()]


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.timeout(120)
def test_a_create_does_not_wait_for_another_sandbox_booting(tmp_path: Path) -> None:
    app, gate = gated_app(tmp_path)
    with sandbox.start(name="cc-overlap") as rt:
        slow, slow_out = in_thread(lambda: rt.create_sandbox("slow", app, profile="low"))
        try:
            # Reserved by the manager, whose turn is over: its info answers while the
            # app still waits at the gate.
            sandbox.testing.wait_for(lambda: "slow" in ids(rt), timeout=30)
            fast = rt.create_sandbox("fast", COUNTER)  # the manager is not held by "slow"
            assert fast.call("counter", "incr") == 1
            assert slow.is_alive(), "slow's create returned before its app booted"
            for refused in (rt.destroy_sandbox, rt.restart_sandbox, rt.hot_reload):
                with pytest.raises(SandboxError, match="still being created"):
                    refused("slow")
        finally:
            open_gate(gate, slow)
            slow.join(60)
        assert "error" not in slow_out, slow_out.get("error")
        assert slow_out["value"].call("counter", "incr") == 1
        rt.destroy_sandbox("slow")  # settled now


@pytest.mark.timeout(120)
@pytest.mark.parametrize("racers", [2, 4])
def test_racing_creates_of_one_id_make_one_sandbox_recorded_once(tmp_path: Path, racers: int) -> None:
    state = tmp_path / "state"
    with sandbox.start(name="cc-race", state_dir=state) as rt:
        go = threading.Barrier(racers)

        def create() -> Any:
            go.wait(30)
            return rt.create_sandbox("same", COUNTER)

        threads = [in_thread(create) for _ in range(racers)]
        for t, _ in threads:
            t.join(60)
        outcomes = [out for _, out in threads]
        won = [o["value"] for o in outcomes if "value" in o]
        lost = [o["error"] for o in outcomes if "error" in o]
        assert len(won) == 1 and len(lost) == racers - 1, outcomes
        assert all(isinstance(e, SandboxExists) for e in lost), lost
        assert won[0].call("counter", "incr") == 1
        assert ids(rt).count("same") == 1
        store = Store.open(state / "state.db")
        try:
            assert [s.id for s in store.sandboxes()] == ["same"]
        finally:
            store.close()


@pytest.mark.timeout(120)
def test_batch_create_of_one_app_compiles_once_and_a_failed_create_leaves_nothing(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "app.py").write_text("def children(:\n")  # a syntax error
    with sandbox.start(name="cc-batch") as rt:
        compiler = rt.component("compiler")
        before = compiler.invoke("status")
        specs: list[dict[str, Any]] = [{"id": f"b{i}", "path": COUNTER} for i in range(6)]
        specs.append({"id": "bad", "path": broken})
        results = {r.id: r for r in rt.batch_create(specs)}
        assert all(results[f"b{i}"].ok for i in range(6)), results
        assert not results["bad"].ok
        after = compiler.invoke("status")
        # counter has 2 modules: compiled once, and the batch asks the compiler once
        # per app (no cache lookup for the other five)
        assert after["compiled"] - before["compiled"] <= 2 + 1  # + the broken app's module
        assert after["cached"] - before["cached"] == 0
        assert sorted(ids(rt)) == [f"b{i}" for i in range(6)]
        with pytest.raises(SandboxNotFound):
            rt.get_sandbox_info("bad")
        workdir = Path(rt.get_sandbox_info("b0")["workdir"])
        assert not list(workdir.parent.glob("bad-*"))
        assert [results[f"b{i}"].value.call("counter", "incr") for i in range(6)] == [1] * 6


@pytest.mark.timeout(120)
def test_racing_destroys_stop_the_sandbox_once_and_leave_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with sandbox.start(name="cc-destroy", state_dir=state) as rt:
        sb = rt.create_sandbox("gone", COUNTER)
        pid = sb.pid
        assert pid is not None
        workdir = Path(rt.get_sandbox_info("gone")["workdir"])
        go = threading.Barrier(2)

        def destroy() -> Any:
            go.wait(30)
            return rt.destroy_sandbox("gone")

        threads = [in_thread(destroy) for _ in range(2)]
        for t, _ in threads:
            t.join(60)
        outcomes = [out for _, out in threads]
        assert sum("error" not in o for o in outcomes) == 1, outcomes
        (err,) = [o["error"] for o in outcomes if "error" in o]
        assert isinstance(err, SandboxNotFound) or "being destroyed" in str(err), err
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert "gone" not in ids(rt) and not workdir.exists()
        # Its supervisor's entry under ``sandboxes`` went with it: the id is free at once.
        assert [c.id for c in rt.component("sandboxes").which_children()] == []
        assert rt.create_sandbox("gone", COUNTER).call("counter", "get") == 0
        rt.destroy_sandbox("gone")
        store = Store.open(state / "state.db")
        try:
            assert store.sandboxes() == []
        finally:
            store.close()


HOLDING_APP = '''
from runtime.genserver import GenServer


class Holder(GenServer):
    def init(self, start=0):
        return start

    def handle_call(self, request, state):
        return state, state

    def terminate(self, reason, state):
        with open({fifo!r}) as gate:  # a graceful stop waits for the test
            gate.read()


def children():
    return [Holder.child_spec(name="holder")]
'''


def killed_manager(rt: Any) -> None:
    """Kill the runtime's manager (no cleanup runs) and wait for its successor."""
    old = rt.component("manager")
    old.kill(ExitReason("exception", "killed by the test"))
    sandbox.testing.wait_for(lambda: rt.component("manager", timeout=30) is not old, timeout=30)


def stored_ids(state: Path) -> list[str]:
    store = Store.open(state / "state.db")
    try:
        return [s.id for s in store.sandboxes()]
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_a_create_in_flight_when_the_manager_is_killed_is_finished_by_its_successor(
    tmp_path: Path,
) -> None:
    app, gate = gated_app(tmp_path)
    state = tmp_path / "state"
    with sandbox.start(name="cc-kill-create", state_dir=state) as rt:
        slow, out = in_thread(lambda: rt.create_sandbox("slow", app, profile="low"))
        try:
            sandbox.testing.wait_for(lambda: "slow" in ids(rt), timeout=30)
            killed_manager(rt)  # while the app still waits at the gate
            assert "slow" in ids(rt), "the successor lost the create in flight"
            with pytest.raises(SandboxExists):  # its id stays reserved
                rt.create_sandbox("slow", COUNTER)
            assert slow.is_alive()
        finally:
            open_gate(gate, slow)
            slow.join(60)
        assert "error" not in out, out.get("error")  # never ActorDead
        assert out["value"].call("counter", "incr") == 1
        assert ids(rt) == ["slow"] and stored_ids(state) == ["slow"]
        rt.destroy_sandbox("slow")
        assert ids(rt) == [] and stored_ids(state) == []


@pytest.mark.timeout(120)
def test_a_destroy_in_flight_when_the_manager_is_killed_is_finished_by_its_successor(
    tmp_path: Path,
) -> None:
    app, gate = gated_app(tmp_path)
    (app / "app.py").write_text(HOLDING_APP.format(fifo=str(gate)))
    state = tmp_path / "state"
    with sandbox.start(name="cc-kill-destroy", state_dir=state) as rt:
        sb = rt.create_sandbox("held", app, profile="low", shutdown=30.0)
        pid = sb.pid
        workdir = Path(rt.get_sandbox_info("held")["workdir"])
        gone, out = in_thread(lambda: rt.destroy_sandbox("held"))
        try:
            sandbox.testing.wait_for(
                lambda: rt.get_sandbox_info("held")["status"] == "stopping", timeout=30)
            killed_manager(rt)  # while the app's terminate waits at the gate
            with pytest.raises(SandboxError, match="being destroyed"):
                rt.destroy_sandbox("held")
            assert gone.is_alive()
        finally:
            open_gate(gate, gone)
            gone.join(60)
        assert "error" not in out, out.get("error")
        assert "held" not in ids(rt) and stored_ids(state) == [] and not workdir.exists()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.timeout(120)
def test_a_create_in_flight_when_the_runtime_stops_fails_clearly_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    app, gate = gated_app(tmp_path)
    rt = sandbox.start(name="cc-stop-create")
    base = Path(rt.base_dir)
    slow, out = in_thread(lambda: rt.create_sandbox("slow", app, profile="low"))
    try:
        sandbox.testing.wait_for(lambda: "slow" in ids(rt), timeout=30)
        rt.stop()  # while the app still waits at the gate
    finally:
        open_gate(gate, slow)
        slow.join(60)
    err = out.get("error")
    assert isinstance(err, SandboxError) and "runtime stopped" in str(err), out
    assert not base.exists() or not list(base.glob("slow-*"))


@pytest.mark.timeout(120)
def test_creates_and_destroys_while_the_manager_is_killed_over_and_over_all_succeed(
    tmp_path: Path,
) -> None:
    """Kills land anywhere: in the turn that starts a job (its thread runs on after
    the caller heard ActorDead), between the job's parts, in the finishing turn."""
    state = tmp_path / "state"
    with sandbox.start(name="cc-kill-race", state_dir=state, max_restarts=10_000) as rt:
        stop = threading.Event()
        kills = [0]

        def killer() -> None:
            while not stop.is_set():
                old = rt.component("manager", timeout=30)
                old.kill(ExitReason("exception", "killed by the test"))
                kills[0] += 1
                sandbox.testing.wait_for(
                    lambda: rt.component("manager", timeout=30) is not old, timeout=30)

        wanted = [f"k{i}" for i in range(6)]
        k = threading.Thread(target=killer)
        k.start()
        try:
            made = rt.batch_create([{"id": i, "path": COUNTER} for i in wanted])
            gone = rt.batch_destroy(wanted[:3])
        finally:
            stop.set()
            k.join(60)
        assert kills[0] > 1
        assert [(r.id, r.error) for r in made if not r.ok] == []
        assert [(r.id, r.error) for r in gone if not r.ok] == []
        assert sorted(ids(rt)) == wanted[3:] and sorted(stored_ids(state)) == wanted[3:]
        assert [rt.sandbox(i).call("counter", "incr") for i in wanted[3:]] == [1, 1, 1]
