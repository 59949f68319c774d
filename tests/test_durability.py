"""Nothing lost when the runtime's own parts fail (issue 12), in real sandboxes.

Each failure measured in the issue has a test here: the version manager and the
``sandboxes`` supervisor crashing, the host timing out on a slow ``code_change``
or a stuck handler, deleted and re-created modules, and the host process killed
with SIGKILL (in a subprocess) then started again on the same state directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest
from helpers import Recorder, wait_for

import runtime
import sandbox
from runtime.errors import ReloadFailed

pytestmark = pytest.mark.timeout(120)

# Probes sent with Sandbox.run are pickled by value: the sandbox cannot import tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"

HELPER_V1 = "def bonus():\n    return 1\n"

COUNTER_SRC = textwrap.dedent(
    """
    import threading

    from runtime.genserver import GenServer

    import helper

    VERSION = {version}
    GATE = threading.Event()
    BLOCKING = threading.Event()


    class Counter(GenServer):
        vsn = {version}

        def init(self, start=0):
            return start

        def handle_call(self, request, state):
            if request == "version":
                return VERSION, state
            if request == "bonus":
                return helper.bonus(), state
            if request == "block":  # a stuck handler, until the process ends
                BLOCKING.set()
                GATE.wait(60)
                return None, state
            if request == "get":
                return state, state
            if request == "incr":
                return state + 1, state + 1
            raise ValueError(request)

        def code_change(self, old_vsn, state, extra):
            threading.Event().wait({migrate_seconds})  # a slow migration
            return state
    """
)


def counter_src(version: int, migrate_seconds: float = 0) -> str:
    return COUNTER_SRC.format(version=version, migrate_seconds=migrate_seconds)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An app whose counter imports a helper module and knows its own version."""
    root = tmp_path / "app"
    shutil.copytree(COUNTER, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "counter.py").write_text(counter_src(1))
    (root / "helper.py").write_text(HELPER_V1)
    return root


@pytest.fixture
def rt(tmp_path: Path):
    with sandbox.start(state_dir=tmp_path / "state") as r:
        yield r


def kill(rt, name: str) -> None:
    ref = rt.component(name)
    ref.kill(runtime.ExitReason("exception", "killed by the test"))
    wait_for(lambda: rt.component(name, timeout=10) != ref, 10)


def call(sb, request, timeout: float = 20.0):
    """A call that retries the documented retriable error (a restart under way)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sb.call("counter", request, timeout=timeout)
        except (runtime.ActorDead, runtime.CallTimeout):
            if time.monotonic() > deadline:
                raise


# -- 1. versions restarts with everything it knew ------------------------------------------


def test_versions_crash_keeps_history_numbering_and_rollback(rt, app):
    sb = rt.create_sandbox("c1", app)
    (app / "counter.py").write_text(counter_src(2))
    assert sb.hot_reload().versions == {"counter": 2}
    kill(rt, "versions")
    assert rt.module_versions("c1") == {"app": 1, "counter": 2, "helper": 1}
    assert [v.version for v in sb.module_versions("counter")] == [1, 2]
    (app / "counter.py").write_text(counter_src(3))
    assert sb.hot_reload().versions == {"counter": 3}  # not 1 again
    assert sb.rollback_module("counter", 1).versions == {"counter": 1}
    assert sb.call("counter", "version") == 1


# -- 2. the sandboxes supervisor comes back with every sandbox ---------------------------


def test_sandboxes_supervisor_crash_brings_every_sandbox_back_with_its_code(rt, app):
    sbs = [rt.create_sandbox(f"s{i}", app) for i in range(3)]
    (app / "counter.py").write_text(counter_src(2))
    sbs[0].hot_reload()
    with Recorder("sandbox.recovered") as rec:
        kill(rt, "sandboxes")
        for sb in sbs:
            wait_for(lambda sb=sb: sb.info()["status"] == "running" and sb.info()["recovered"], 20)
    assert sorted(e.metadata["sandbox"] for e in rec.events) == ["s0", "s1", "s2"]
    assert {e.metadata["how"] for e in rec.events} == {"restarted"}
    assert [call(sb, "version") for sb in sbs] == [2, 1, 1]  # each its current code
    assert all(sb.info()["recovered"] == "restarted" for sb in sbs)


def test_a_manager_crash_adopts_the_running_processes(rt, app):
    sb = rt.create_sandbox("m1", app)
    pid = sb.info()["pid"]
    kill(rt, "manager")
    info = sb.info()
    assert (info["pid"], info["recovered"], info["status"]) == (pid, "adopted", "running")


# -- 3. one truth about a reload -----------------------------------------------------------


def agree(rt, sb, expected: int) -> None:
    """module_versions, what the sandbox serves and what a restart boots say the same."""
    assert rt.module_versions(sb.id)["counter"] == expected
    assert sb.call("counter", "version") == expected
    sb.restart()
    assert sb.call("counter", "version") == expected


@pytest.mark.parametrize("migrate_seconds, timeout, failed_step", [
    (4, 2, "commit"),    # the sandbox reaches its commit late: it rolls back, says so
    (9, 1, "timeout"),   # no verdict in timeout + 5 s: the host cancels, the swap never commits
    (0.5, 3, None),      # in time: committed and recorded
])
def test_a_slow_code_change_is_either_committed_and_recorded_or_neither(
    rt, app, migrate_seconds, timeout, failed_step
):
    committed = failed_step is None
    sb = rt.create_sandbox("slow", app)
    (app / "counter.py").write_text(counter_src(2, migrate_seconds))
    if committed:
        assert sb.hot_reload(timeout=timeout).versions == {"counter": 2}
    else:
        with pytest.raises(ReloadFailed) as info:
            sb.hot_reload(timeout=timeout)
        assert info.value.step == failed_step
    [entry] = rt.state.store.journal("slow")
    assert entry.state == ("committed" if committed else "failed")
    agree(rt, sb, 2 if committed else 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [1.0, 3.0])
def test_a_stuck_handler_fails_at_suspend_whatever_the_timeout(rt, app, timeout):
    sb = rt.create_sandbox("stuck", app)
    caller = threading.Thread(target=_ignore_errors, args=(sb.call, "counter", "block"))
    caller.start()
    try:
        wait_for(lambda: sb.run(lambda: sys.modules["counter"].BLOCKING.is_set()), 10)
        (app / "counter.py").write_text(counter_src(2))
        with pytest.raises(ReloadFailed) as info:
            sb.hot_reload(timeout=timeout)
        assert info.value.step == "suspend"
        assert rt.module_versions("stuck")["counter"] == 1
        assert [e.state for e in rt.state.store.journal("stuck")] == ["failed"]
    finally:
        sb.destroy()  # ends the stuck call
        caller.join(30)


def _ignore_errors(fn, *args):
    try:
        fn(*args, timeout=None)
    except runtime.SandboxError:
        pass


# -- 4. deleted and re-created modules -----------------------------------------------------


def test_a_deleted_module_nobody_imports_is_unloaded_and_reported(rt, app):
    (app / "extra.py").write_text("X = 1\n")
    sb = rt.create_sandbox("del", app)
    assert "extra" in rt.module_versions("del")
    (app / "extra.py").unlink()
    report = sb.hot_reload()
    assert report.removed == ["extra"]
    assert "extra" not in rt.module_versions("del")
    assert sb.run(lambda: __import__("sys").modules.get("extra") is None)
    sb.restart()  # a restart boots without it
    assert sb.run(lambda: "extra" not in __import__("runtime.child.swap").child.swap.FINDER.modules)


def test_deleting_an_imported_module_is_refused_naming_its_importers(rt, app):
    sb = rt.create_sandbox("imp", app)
    (app / "helper.py").unlink()
    with pytest.raises(ReloadFailed, match="'helper' was deleted but 'counter' still imports it") as info:
        sb.hot_reload()
    assert info.value.step == "plan"
    assert sb.call("counter", "bonus") == 1
    # re-created with new code: its importer picks it up
    (app / "helper.py").write_text("def bonus():\n    return 2\n")
    report = sb.hot_reload()
    assert report.changed == ["helper"] and "counter" in report.modules
    assert sb.call("counter", "bonus") == 2


# -- 7. host SIGKILL, then start again on the same state directory -----------------------

HOST = textwrap.dedent(
    """
    import shutil, sys, pathlib, sandbox
    state, app, phase, v2, v3 = sys.argv[1:]
    rt = sandbox.start(state_dir=state)
    a = rt.create_sandbox("a", app)
    b = rt.create_sandbox("b", app)
    shutil.copy(v2, pathlib.Path(app) / "counter.py")
    a.hot_reload()
    print(a.info()["pid"], b.info()["pid"], flush=True)
    if phase == "mid-reload":
        shutil.copy(v3, pathlib.Path(app) / "counter.py")
        print("reloading", flush=True)
        b.hot_reload(timeout=60)
    if phase == "mid-rollback":  # version 1's code_change is the slow one
        print("reloading", flush=True)
        a.rollback_module("counter", 1, timeout=60)
    sys.stdin.readline()  # until killed
    """
)


@pytest.mark.parametrize("phase", ["idle", "mid-reload", "mid-rollback"])
def test_host_sigkill_then_restart_brings_back_every_sandbox(tmp_path, app, phase):
    state = tmp_path / "killed-state"
    if phase == "mid-rollback":
        (app / "counter.py").write_text(counter_src(1, migrate_seconds=30))
    (tmp_path / "v2.py").write_text(counter_src(2))
    (tmp_path / "v3.py").write_text(counter_src(3, migrate_seconds=30))
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(state), str(app), phase, str(tmp_path / "v2.py"),
         str(tmp_path / "v3.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert host.stdin is not None and host.stdout is not None
    try:
        pids = [int(p) for p in host.stdout.readline().split()]
        if phase != "idle":
            assert host.stdout.readline().strip() == "reloading"
            busy = "b" if phase == "mid-reload" else "a"
            wait_for(lambda: [j.state for j in _journal(state, busy)][-1:] == ["pending"], 20)
    finally:
        os.kill(host.pid, signal.SIGKILL)
        host.wait(30)
        host.stdin.close()
        host.stdout.close()
    # the sandboxes die with their host (EOF on their socket)
    psutil.wait_procs([p for p in map(_proc, pids) if p is not None], timeout=30)
    (app / "counter.py").write_text(counter_src(4))  # on disk now: not what was committed
    with sandbox.start(state_dir=state) as rt:
        assert sorted(s["id"] for s in rt.list_sandboxes()) == ["a", "b"]
        a, b = rt.sandbox("a"), rt.sandbox("b")
        assert a.info()["recovered"] == b.info()["recovered"] == "restarted"
        assert (a.call("counter", "version"), b.call("counter", "version")) == (2, 1)
        assert rt.module_versions("a")["counter"] == 2
        assert rt.module_versions("b")["counter"] == 1
        if phase == "mid-reload":
            assert [j.state for j in rt.state.store.journal("b")] == ["abandoned"]
        if phase == "mid-rollback":
            assert [(j.kind, j.state) for j in rt.state.store.journal("a")] == [
                ("reload", "committed"), ("rollback", "abandoned")]
        assert [v.version for v in a.module_versions("counter")] == [1, 2]
        if phase != "mid-rollback":  # (there, version 1's code_change takes 30 s)
            assert a.rollback_module("counter", 1).versions == {"counter": 1}
            assert a.call("counter", "version") == 1
        assert b.hot_reload().versions == {"counter": 2}  # the abandoned v3 took no number
        assert b.call("counter", "version") == 4


def _journal(state: Path, sandbox_id: str) -> list:
    from actors.store import Store

    st = Store.open(state / "state.db")
    try:
        return st.journal(sandbox_id)
    finally:
        st.close()


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


# -- 5. objects of reloaded classes held by actors outside the reload -----------------------

SHAPES = (
    "class Point:\n    def __init__(self, x):\n        self.x = x\n    def label(self):\n"
    "        return 'v{n}'\n\n\ndef local_point():\n    class Local(Point):\n"
    "        pass\n    return Local(7)\n"
)
MAKER = textwrap.dedent(
    """
    from runtime.genserver import GenServer
    from runtime.registry import whereis

    import shapes


    class Maker(GenServer):
        def handle_call(self, request, state):
            point = shapes.Point(7) if request == "give" else shapes.local_point()
            whereis("holder").call(("keep", point))
            return "given", state
    """
)
HOLDER = textwrap.dedent(
    """
    import sys

    from runtime.genserver import GenServer


    class Holder(GenServer):  # never imports shapes: not part of a reload of it
        def init(self):
            return {"kept": []}

        def handle_call(self, request, state):
            if request[0] == "keep":
                return None, {"kept": [request[1]]}
            obj = state["kept"][0]
            return (isinstance(obj, sys.modules["shapes"].Point), obj.label(), obj.x), state
    """
)
APP_HELD = textwrap.dedent(
    """
    from holder import Holder
    from maker import Maker


    def children():
        return [Holder.child_spec(name="holder"), Maker.child_spec(name="maker")]
    """
)


@pytest.mark.parametrize("given", ["give", "give_local"])
def test_objects_of_a_reloaded_class_held_elsewhere_are_rebound_or_reported(rt, tmp_path, given):
    app = tmp_path / "held"
    app.mkdir()
    for name, src in [("app", APP_HELD), ("holder", HOLDER), ("maker", MAKER),
                      ("shapes", SHAPES.format(n=1))]:
        (app / f"{name}.py").write_text(src)
    sb = rt.create_sandbox("held", app)
    assert sb.call("maker", given) == "given"
    assert sb.call("holder", ("check",)) == (True, "v1", 7)
    (app / "shapes.py").write_text(SHAPES.format(n=2))
    report = sb.hot_reload()
    assert "holder" not in report.modules
    if given == "give":  # copied with the holder's state: re-bound to the new class
        assert report.warnings == []
        assert sb.call("holder", ("check",)) == (True, "v2", 7)
    else:  # a class made inside a function cannot be looked up again: reported
        [warning] = report.warnings
        assert "actor holder" in warning and "state['kept'][0]" in warning
        assert sb.call("holder", ("check",)) == (False, "v1", 7)


# -- 6. supervisor flags changed by a reload -------------------------------------------------

APP_FLAGS = textwrap.dedent(
    """
    from runtime.supervisor import SupervisorSpec

    from counter import Counter


    def children():
        return SupervisorSpec([Counter.child_spec(name="a"), Counter.child_spec(name="b")],
                              strategy="{strategy}", max_restarts={max_restarts})
    """
)


def test_a_reload_applies_changed_supervisor_flags_as_otp_code_change(rt, tmp_path):
    app = tmp_path / "flags"
    shutil.copytree(COUNTER, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "app.py").write_text(APP_FLAGS.format(strategy="one_for_one", max_restarts=3))
    sb = rt.create_sandbox("flags", app)
    sb.call("b", ("add", 5))
    (app / "app.py").write_text(APP_FLAGS.format(strategy="one_for_all", max_restarts=10))
    report = sb.hot_reload()
    assert report.children["flags"] == ["strategy: one_for_one -> one_for_all",
                                        "max_restarts: 3 -> 10"]
    assert sb.call("b", "get") == 5  # applying flags restarts nobody
    with pytest.raises(runtime.SandboxError):
        sb.call("a", "crash")
    # one_for_all now: b was restarted with a, so its count starts again
    assert wait_for(lambda: _get(sb, "b") == 0, 20)


def _get(sb, name):
    try:
        return sb.call(name, "get", timeout=5)
    except runtime.SandboxError:
        return None


def test_a_sandbox_dying_mid_reload_restarts_with_the_recorded_code(rt, app):
    sb = rt.create_sandbox("dies", app)
    src = counter_src(2).replace("threading.Event().wait(0)  # a slow migration",
                                 "import os; os._exit(3)  # the process dies mid-swap")
    assert "os._exit" in src
    (app / "counter.py").write_text(src)
    with pytest.raises(runtime.SandboxError):
        sb.hot_reload()
    assert [e.state for e in rt.state.store.journal("dies")] == ["failed"]
    assert rt.module_versions("dies")["counter"] == 1
    assert call(sb, "version") == 1  # restarted by its supervisor, with the recorded code


# -- the state directory ---------------------------------------------------------------------


def test_a_named_runtime_keeps_its_state_in_the_user_data_dir_across_a_clean_stop(app):
    with sandbox.start(name="durable-named") as rt:
        expected = Path(os.environ["XDG_DATA_HOME"]) / "sandbox" / "durable-named"
        assert Path(rt.state.path) == expected.resolve()
        rt.create_sandbox("kept", app).call("counter", "incr")
    assert (expected / "state.db").is_file()
    with sandbox.start(name="durable-named") as rt:
        assert [s["id"] for s in rt.list_sandboxes()] == ["kept"]
        assert rt.sandbox("kept").call("counter", "get") == 0  # in-memory state is not kept
        rt.destroy_sandbox("kept")
    with sandbox.start(name="durable-named") as rt:
        assert rt.list_sandboxes() == []


def test_an_unnamed_runtime_state_is_temporary(app):
    with sandbox.start() as rt:
        path = Path(rt.state.path)
        rt.create_sandbox("gone", app)
        assert (path / "state.db").is_file()
    assert not path.exists()


def test_two_runtimes_cannot_share_a_state_dir(tmp_path):
    with sandbox.start(state_dir=tmp_path / "shared"):
        with pytest.raises(runtime.ConfigError, match="no other running runtime uses"):
            sandbox.start(state_dir=tmp_path / "shared")


def test_a_sandbox_that_gave_up_stays_stopped_across_a_manager_crash(rt, app):
    sb = rt.create_sandbox("gaveup", app, max_restarts=0)
    os.kill(sb.info()["pid"], signal.SIGKILL)
    wait_for(lambda: sb.info()["status"] == "error", 20)
    kill(rt, "manager")
    info = sb.info()
    assert (info["status"], info["recovered"], info["pid"]) == ("error", None, None)
    sb.restart()
    assert sb.call("counter", "version") == 1
