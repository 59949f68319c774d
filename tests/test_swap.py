"""The swap transaction in this process (no sandbox): state copies, staging, rollback.

The sandbox runs :func:`runtime.child.swap.apply_reload` on the code the host sends;
here it runs on modules compiled in the test, served by the same app finder, so
each step's guarantees can be checked directly (``sys.modules``, the actors'
classes and states, the barrier).
"""

from __future__ import annotations

import hashlib
import json
import marshal
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime.barrier import BARRIER, CodeBarrier
from runtime.child import swap
from runtime.errors import ReloadFailed
from runtime.supervisor import Supervisor
from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(30)


# -- state copies -------------------------------------------------------------------------


def test_a_plain_state_is_copied_deeply():
    state = {"n": 1, "items": [1, 2, {"k": (3, 4)}]}
    copy = swap._restore(swap._snapshot(state))
    assert copy == state and copy is not state and copy["items"] is not state["items"]


def test_a_flat_state_is_copied_without_pickle():
    for state in ({"count": 1, "label": "x"}, [1, 2.5, "a", None]):
        snap = swap._snapshot(state)
        assert not isinstance(snap, swap._Snapshot)  # the cheap path
        copy = swap._restore(snap)
        assert copy == state and copy is not state
    frozen = (1, "a")
    assert swap._restore(swap._snapshot(frozen)) is frozen  # immutable: shared
    assert swap._restore(swap._snapshot(7)) == 7


def test_a_state_of_scalars_and_live_objects_is_copied_shallow_whatever_its_size():
    lock = threading.Lock()
    refs = [lock] * 1000 + [1, "a"]
    snap = swap._snapshot(refs)
    assert not isinstance(snap, swap._Snapshot)  # no pickle round trip
    copy = swap._restore(snap)
    assert copy == refs and copy is not refs and copy[0] is lock
    state = {"peers": lock, "n": 2}
    assert swap._restore(swap._snapshot(state)) == state
    assert isinstance(swap._snapshot({"nested": [1]}), swap._Snapshot)  # deep: pickled


@pytest.mark.parametrize("source, holdable", [
    ("from runtime.genserver import GenServer\nclass S(GenServer): pass\n", False),
    ("from runtime.genserver import GenServer\nclass S(GenServer):\n    class Msg: pass\n",
     True),
    ("class Point: pass\n", True),
    ("X = 1\ndef f(): return X\n", False),
])
def test_holders_are_looked_for_only_when_a_reloaded_module_defines_state_classes(
        source, holdable):
    name = f"swaptest_holdable_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(source, f"{name}.py", "exec"), vars(module))
        assert swap._state_classes_in([name, "not_loaded_yet"]) is holdable
    finally:
        del sys.modules[name]


def _local_function():
    def inner():
        return 1
    return inner


def test_what_cannot_be_pickled_is_carried_by_reference_inside_a_copied_state():
    gen = (i for i in range(3))
    lock = threading.Lock()
    lam = lambda: 1  # noqa: E731
    inner = _local_function()
    state = {"gen": gen, "lock": lock, "lam": lam, "inner": inner, "mod": json,
             "data": [1, 2], "fn": _local_function}
    snap = swap._snapshot(state)
    assert snap.data is not None and snap.problem is None
    copy = swap._restore(snap)
    assert copy["data"] == [1, 2] and copy["data"] is not state["data"]
    assert copy["gen"] is gen and copy["lock"] is lock and copy["lam"] is lam
    assert copy["inner"] is inner and copy["mod"] is json
    assert copy["fn"] is _local_function  # importable: pickled by name


class Opaque:
    """Importable, so pickled by name, but refusing to be pickled."""

    def __reduce__(self):
        raise TypeError("not today")


def test_a_state_nothing_can_copy_is_carried_as_is_with_the_reason():
    state = [Opaque()]
    snap = swap._snapshot(state)
    assert snap.data is None and "not today" in snap.problem
    assert swap._restore(snap) is state


def test_stale_code_is_found_by_comparing_globals_with_the_staged_module():
    old = types.ModuleType("stale_mod")
    new = types.ModuleType("stale_mod")
    src = ("def f():\n    return 1\n\ndef h():\n    return 2\n\ndef g():\n    yield 1\n\n"
           "class Box:\n    def m(self):\n        return 3\n")
    exec(compile(src, "stale_mod.py", "exec"), vars(old))
    exec(compile(src, "stale_mod.py", "exec"), vars(new))
    box = old.Box()
    box.handler = old.h
    running = old.g()
    next(running)
    finished = old.g()
    list(finished)
    state = {"f": old.f, "gen": running, "fresh": new.f, "unstarted": old.g(),
             "finished": finished, "nested": [box], "method": old.Box().m}
    found = swap._stale_code_in(state, {"stale_mod": vars(new)})
    # a generator that never started has a frame too (it would run old code); a
    # finished one has none and runs nothing
    assert sorted(found) == ["function Box.m", "function f", "function h",
                             "generator g", "generator g"]
    assert swap._stale_code_in({"fresh": new.f}, {"stale_mod": vars(new)}) == []


# -- apply_reload in this process ---------------------------------------------------------


class App:
    """Modules served by the app finder in this process, removed afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.prefix = f"swaptest_{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []

    def name(self, short: str) -> str:
        return f"{self.prefix}_{short}"

    def code(self, short: str, source: str, version: int = 1) -> swap.ModuleCode:
        name = self.name(short)
        file = str(self.tmp_path / f"{name}.py")
        code = marshal.dumps(compile(source, file, "exec"))
        if name not in self.names:
            self.names.append(name)
        return swap.ModuleCode(name, file, code, source, version=version,
                               code_sha256=hashlib.sha256(code).hexdigest())

    def install(self, *mods: swap.ModuleCode) -> None:
        swap.install_finder(mods)

    def cleanup(self) -> None:
        for n in self.names:
            sys.modules.pop(n, None)
            swap.FINDER.modules.pop(n, None)
        if not swap.FINDER.modules and swap.FINDER in sys.meta_path:
            sys.meta_path.remove(swap.FINDER)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = App(tmp_path)
    try:
        yield a
    finally:
        a.cleanup()


SERVER_V1 = """
from runtime.genserver import GenServer


class Box(GenServer):
    vsn = 1

    def init(self, n):
        return {"n": n}

    def handle_call(self, request, state):
        return ("v1", state), state
"""

SERVER_V2 = SERVER_V1.replace("vsn = 1", "vsn = 2").replace('"v1"', '"v2"') + """
    def code_change(self, old_vsn, state, extra):
        if state["n"] == extra:
            raise ValueError(f"refusing {extra}")
        return {**state, "from": old_vsn}
"""


def start_boxes(app: App, n: int) -> list:
    import importlib

    module = importlib.import_module(app.name("box"))
    return [module.Box.start(i) for i in range(n)]


@contextmanager
def running_boxes(app: App, n: int) -> Iterator[list]:
    """``n`` Box actors of the installed code, stopped afterwards (with any the test adds)."""
    refs = start_boxes(app, n)
    try:
        yield refs
    finally:
        for r in refs:
            r.stop()


def test_apply_reload_swaps_classes_and_migrates_states(app: App):
    app.install(app.code("box", SERVER_V1))
    refs = start_boxes(app, 3)
    try:
        writes = BARRIER.writes
        report = swap.apply_reload([[app.code("box", SERVER_V2, 2)]])
        assert report["actors"] == 3 and report["changed"] == [app.name("box")]
        assert BARRIER.writes == writes + 1
        assert [r.call("x") for r in refs] == [("v2", {"n": i, "from": 1}) for i in range(3)]
        assert sys.modules[app.name("box")].Box.vsn == 2
    finally:
        for r in refs:
            r.stop()


def test_a_failing_code_change_for_one_actor_changes_nothing(app: App):
    app.install(app.code("box", SERVER_V1))
    refs = start_boxes(app, 4)
    old_module = sys.modules[app.name("box")]
    old_finder = swap.FINDER.modules[app.name("box")]
    try:
        with pytest.raises(ReloadFailed) as info:
            swap.apply_reload([[app.code("box", SERVER_V2, 2)]], extra=2)
        assert (info.value.step, info.value.module) == ("code_change", app.name("box"))
        assert "refusing 2" in str(info.value) and "for actor Box#" in str(info.value)
        assert sys.modules[app.name("box")] is old_module
        assert swap.FINDER.modules[app.name("box")] is old_finder
        assert [r.call("x") for r in refs] == [("v1", {"n": i}) for i in range(4)]
    finally:
        for r in refs:
            r.stop()


def test_a_reload_that_does_not_commit_puts_every_switched_actor_back(app: App):
    """Actors are switched to the new class as they are staged; a reload refused at
    its commit (cancelled by the host) puts each one back: the same class, instance
    and state objects, ``trap_exit`` untouched. A committed one sets ``trap_exit``."""
    app.install(app.code("box", SERVER_V1))
    trapping = SERVER_V2.replace("vsn = 2", "vsn = 2\n    trap_exit = True")
    with running_boxes(app, 4) as refs:
        servers = [r._actor for r in refs]
        before = [(s.impl_cls, s.impl, s.state, s.trap_exit) for s in servers]
        rid = f"cancelled-{app.prefix}"
        assert swap.cancel_reload(rid) == "cancelled"
        with pytest.raises(ReloadFailed) as err:
            swap.apply_reload([[app.code("box", trapping, 2)]], reload_id=rid)
        assert err.value.step == "commit"
        after = [(s.impl_cls, s.impl, s.state, s.trap_exit) for s in servers]
        assert all(a[0] is b[0] and a[1] is b[1] and a[2] is b[2] and a[3] is b[3] is False
                   for a, b in zip(after, before, strict=True))
        assert [r.call("x") for r in refs] == [("v1", {"n": i}) for i in range(4)]
        report = swap.apply_reload([[app.code("box", trapping, 3)]])
        assert report["actors"] == 4 and all(s.trap_exit is True for s in servers)
        assert [r.call("x") for r in refs] == [("v2", {"n": i, "from": 1}) for i in range(4)]


def test_a_code_change_mutating_its_state_in_place_leaves_the_old_state_on_failure(app: App):
    """The copy a flat state's code_change gets is made for it: a change in place
    never reaches the state the old code keeps serving when the reload fails."""
    app.install(app.code("box", SERVER_V1))
    mutating = SERVER_V1.replace("vsn = 1", "vsn = 2") + """
    def code_change(self, old_vsn, state, extra):
        state["touched"] = True
        if state["n"] == extra:
            raise ValueError("no")
        return state
"""
    with running_boxes(app, 3) as refs:
        with pytest.raises(ReloadFailed):
            swap.apply_reload([[app.code("box", mutating, 2)]], extra=2)
        assert [r.call("x") for r in refs] == [("v1", {"n": i}) for i in range(3)]


RECORDING_RELEASE = """
from runtime.barrier import BARRIER

RELEASED = []  # for each instance released: whether the actors were held then
""" + SERVER_V1 + """
    def __del__(self):
        RELEASED.append(BARRIER.writer)
"""


def test_what_a_swap_replaced_is_released_after_the_actors_are_let_go(app: App):
    """Each actor's previous instance and state are released once the barrier is
    released, not while the actors are held."""
    app.install(app.code("box", RECORDING_RELEASE))
    with running_boxes(app, 3) as refs:
        v1 = sys.modules[app.name("box")]
        report = swap.apply_reload([[app.code("box", SERVER_V2, 2)]])
        assert report["actors"] == 3
        assert v1.RELEASED == [False, False, False]
        assert [r.call("x") for r in refs] == [("v2", {"n": i, "from": 1}) for i in range(3)]


def test_a_state_nothing_changes_is_kept_as_it_is(app: App):
    """No code_change of its own (nor a migrate function): a flat state is not copied."""
    app.install(app.code("box", SERVER_V1))
    with running_boxes(app, 2) as refs:
        before = [r._actor.state for r in refs]
        report = swap.apply_reload([[app.code("box", SERVER_V1.replace('"v1"', '"v2"'), 2)]])
        assert report["actors"] == 2
        assert all(r._actor.state is state for r, state in zip(refs, before, strict=True))
        assert [r.call("x") for r in refs] == [("v2", {"n": i}) for i in range(2)]


def test_a_state_nothing_changes_is_still_checked_against_what_the_new_class_declares(
    app: App,
):
    """The default code_change is not called, but the state must still have the keys the
    new class declares: the reload is refused and nothing changes."""
    app.install(app.code("box", SERVER_V1))
    declaring = SERVER_V1.replace("vsn = 1", 'vsn = 2\n    state_keys = ("n", "label")')
    with running_boxes(app, 2) as refs:
        before = [r._actor.state for r in refs]
        with pytest.raises(ReloadFailed) as err:
            swap.apply_reload([[app.code("box", declaring, 2)]])
        assert err.value.step == "check_state" and "'label'" in str(err.value)
        assert all(r._actor.state is state for r, state in zip(refs, before, strict=True))
        assert [r.call("x") for r in refs] == [("v1", {"n": i}) for i in range(2)]


def test_an_actor_a_new_module_body_starts_is_not_migrated(app: App):
    """Actors are looked for after staging: one the new module's body started runs
    the new class already, and gets no code_change."""
    app.install(app.code("box", SERVER_V1))
    starting = SERVER_V2 + "\n\nEXTRA = Box.start(7)\n"
    with running_boxes(app, 2) as refs:
        report = swap.apply_reload([[app.code("box", starting, 2)]])
        assert report["actors"] == 2
        extra = sys.modules[app.name("box")].EXTRA
        refs.append(extra)
        assert extra.call("x") == ("v2", {"n": 7})
        assert [r.call("x") for r in refs[:2]] == [("v2", {"n": i, "from": 1}) for i in range(2)]


def test_states_only_a_pickle_copies_rebind_to_the_new_classes(app: App):
    """A state holding objects of a reloaded class is pickled against the old code
    (looked for after staging) and comes back holding objects of the new class."""
    source = SERVER_V1 + """

class Point:
    def __init__(self, x):
        self.x = x


class Holder(GenServer):
    def init(self, n):
        return {"p": [Point(n)]}

    def handle_call(self, request, state):
        return (type(state["p"][0]) is Point, state["p"][0].x), state
"""
    app.install(app.code("box", source))
    import importlib

    module = importlib.import_module(app.name("box"))
    ref = module.Holder.start(3)
    try:
        report = swap.apply_reload([[app.code("box", source + "\n# v2\n", 2)]])
        assert report["actors"] == 1
        new_point = sys.modules[app.name("box")].Point
        assert new_point is not module.Point
        assert ref.call("x") == (True, 3)
        assert type(ref._actor.state["p"][0]) is new_point
    finally:
        ref.stop()


def test_a_failed_stage_restores_every_module_of_the_plan(app: App):
    dep_v1 = app.code("dep", "X = 1\n")
    user_src = f"from {app.name('dep')} import X\nY = X\n"
    app.install(dep_v1, app.code("user", user_src))
    import importlib

    user = importlib.import_module(app.name("user"))
    dep = sys.modules[app.name("dep")]
    bad_user = app.code("user", user_src + "raise RuntimeError('half-way')\n", 2)
    with pytest.raises(ReloadFailed) as info:
        swap.apply_reload([[app.code("dep", "X = 2\n", 2)], [bad_user]],
                          changed=[app.name("dep")])
    assert (info.value.step, info.value.module) == ("stage", app.name("user"))
    assert sys.modules[app.name("dep")] is dep and sys.modules[app.name("user")] is user
    assert (dep.X, user.Y) == (1, 1)
    # a good plan then goes through, dependents seeing the new names
    swap.apply_reload([[app.code("dep", "X = 2\n", 2)], [app.code("user", user_src)]],
                      changed=[app.name("dep")])
    assert sys.modules[app.name("user")].Y == 2


def test_a_busy_handler_makes_the_suspend_step_fail_and_changes_nothing(app: App):
    app.install(app.code("box", SERVER_V1))
    refs = start_boxes(app, 1)
    holding, release = threading.Event(), threading.Event()

    def busy_reader() -> None:
        with BARRIER.reading():
            holding.set()
            release.wait(10)

    t = threading.Thread(target=busy_reader)
    t.start()
    try:
        wait_for(holding, timeout=5)
        with pytest.raises(ReloadFailed) as info:
            swap.apply_reload([[app.code("box", SERVER_V2, 2)]], suspend_timeout=0.2)
        assert info.value.step == "suspend"
    finally:
        release.set()
        t.join(10)
    try:
        assert refs[0].call("x") == ("v1", {"n": 0})
    finally:
        refs[0].stop()


def test_a_server_started_from_a_class_looked_up_before_a_swap_runs_the_new_class(app: App):
    app.install(app.code("box", SERVER_V1))
    import importlib

    old_cls = importlib.import_module(app.name("box")).Box
    swap.apply_reload([[app.code("box", SERVER_V2, 2)]])
    ref = old_cls.start(7)  # e.g. a supervisor restarting a child from an old spec
    try:
        assert ref.call("x") == ("v2", {"n": 7})
    finally:
        ref.stop()


# -- child specs ----------------------------------------------------------------------------


def test_upgrade_children_reports_what_it_cannot_apply_and_never_raises(app: App):
    app.install(app.code("box", SERVER_V1))
    import importlib

    box = importlib.import_module(app.name("box"))
    entry = types.ModuleType(app.name("entry"))
    app.names.append(entry.__name__)
    sys.modules[entry.__name__] = entry
    root = Supervisor.start([box.Box.child_spec(1, id="a")])
    try:
        def broken():
            raise RuntimeError("entry broke")

        entry.children = broken
        report = swap.upgrade_children(root, f"{entry.__name__}:children")
        assert report["added"] == [] and report["failed"][0].endswith("entry broke")

        entry.children = lambda: [box.Box.child_spec(1, id="a"),
                                  box.Box.child_spec("bad", id="b"),
                                  box.Box.child_spec(3, id="c")]
        box.Box.init = lambda self, n: {"n": n + 0}  # "bad" + 0 raises TypeError
        report = swap.upgrade_children(root, f"{entry.__name__}:children")
        assert report["added"] == ["c"] and report["changed"] == []
        assert len(report["failed"]) == 1 and report["failed"][0].startswith("b: ")
        assert [c.id for c in root.which_children()] == ["a", "c"]
    finally:
        root.stop()


def test_the_barrier_counts_write_acquisitions():
    b = CodeBarrier()
    with b.writing():
        pass
    with b.writing():
        pass
    assert b.writes == 2


def test_a_writer_waits_for_a_reader_that_came_in_without_the_lock():
    """try_read's reader holds the write side off until release_quick, and a
    reader arriving while a writer waits backs off (the writer has priority)."""
    b = CodeBarrier()
    assert b.try_read()
    assert not b.acquire_write(timeout=0.05), "the writer got in past a quick reader"
    got = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with b.writing(timeout=10):
            got.set()
            release.wait(10)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_for(lambda: b._writers_waiting == 1, timeout=10)
    assert not got.is_set()
    b.release_quick()
    assert got.wait(10), "the writer never saw the quick reader leave"
    assert not b.try_read() and not b.held(), "a reader got in while the writer held it"
    release.set()
    t.join(10)
    assert b.try_read() and b.held()
    b.release_quick()
    assert not b.held()


STARTS_AT_IMPORT = SERVER_V1 + """
HELPER = Box.start(99)  # an actor started by the module body, during the swap
"""


def test_a_module_body_starting_a_server_during_the_swap_does_not_deadlock(app: App):
    app.install(app.code("box", SERVER_V1))
    refs = start_boxes(app, 1)
    done: dict = {}

    def reload() -> None:
        try:
            done["report"] = swap.apply_reload([[app.code("box", STARTS_AT_IMPORT, 2)]])
        except BaseException as exc:
            done["error"] = exc

    t = threading.Thread(target=reload, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the swap deadlocked"
    assert "error" not in done, done.get("error")
    helper = sys.modules[app.name("box")].HELPER
    try:
        assert helper.call("x") == ("v1", {"n": 99})
        assert refs[0].call("x") == ("v1", {"n": 0})
    finally:
        helper.stop()
        refs[0].stop()
