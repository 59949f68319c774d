"""Hot reload in real sandboxes: the checks of issue 4.

Every test edits an app's files (or passes ``source=``), reloads the running
sandbox and asks its actors what they run now. Nothing sleeps: waits are on
events, telemetry or ``wait_for``.
"""

from __future__ import annotations

import sys
import textwrap
import threading

import cloudpickle
import pytest
from helpers import path_of, write

from runtime import telemetry
from runtime.errors import CompileError, ReloadFailed
from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(90)

# Probes sent with Sandbox.run are pickled by value: the sandbox cannot import tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def barrier():
    """The code barrier of the process this runs in (call it inside the sandbox)."""
    from runtime.barrier import BARRIER

    return BARRIER


def versions_state(sb, *modules: str) -> tuple:
    """What a failed reload must leave unchanged in the version manager."""
    return (
        sb.module_versions(),
        {m: [v.info() for v in sb.module_versions(m)] for m in modules},
    )


# -- the counter: add a field, then roll back -------------------------------------------

APP = """
import counter


def children():
    return [counter.Counter.child_spec(name="counter")]
"""

COUNTER_V1 = """
from runtime.genserver import GenServer

LAST_CHANGE = None


class Counter(GenServer):
    vsn = 1

    def init(self):
        return {"count": 0}

    def handle_call(self, request, state):
        if request == "incr":
            state = {**state, "count": state["count"] + 1}
            return state["count"], state
        if request == "get":
            return state, state
        if request == "version":
            return 1, state
        if request == "last_change":
            return LAST_CHANGE, state
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, request, state):
        return {**state, "count": state["count"] + request}

    def code_change(self, old_vsn, state, extra):
        global LAST_CHANGE
        LAST_CHANGE = (old_vsn, self.vsn)
        if old_vsn > self.vsn:  # a downgrade: drop what later versions added
            state = {"count": state["count"]}
        return state
"""

COUNTER_V2 = """
from runtime.genserver import GenServer

LAST_CHANGE = None


class Counter(GenServer):
    vsn = 2

    def init(self):
        return {"count": 0, "label": "fresh"}

    def handle_call(self, request, state):
        if request == "incr":
            state = {**state, "count": state["count"] + 1}
            return state["count"], state
        if request == "get":
            return state, state
        if request == "version":
            return 2, state
        if request == "last_change":
            return LAST_CHANGE, state
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, request, state):
        return {**state, "count": state["count"] + request}

    def code_change(self, old_vsn, state, extra):
        global LAST_CHANGE
        LAST_CHANGE = (old_vsn, self.vsn)
        if old_vsn == 1:
            state = {**state, "label": extra or "fresh"}
        return state
"""


def counter_at_42(sandbox_factory, **options):
    sb = sandbox_factory({"app.py": APP, "counter.py": COUNTER_V1}, **options)
    for _ in range(42):
        sb.call("counter", "incr")
    assert sb.call("counter", "get") == {"count": 42}
    return sb


def test_counter_gains_a_field_then_rolls_back(sandbox_factory):
    sb = counter_at_42(sandbox_factory)
    assert sb.module_versions() == {"app": 1, "counter": 1}

    write(sb, "counter.py", COUNTER_V2)
    report = sb.hot_reload(extra="migrated")
    assert report.ok and report.kind == "reload"
    assert report.changed == ["counter"] and report.versions == {"counter": 2}
    assert report.modules == ["counter", "app"]  # the entry imports it: re-staged after
    assert report.actors == 1 and report.warnings == []
    assert sb.call("counter", "get") == {"count": 42, "label": "migrated"}
    assert sb.call("counter", "version") == 2
    assert sb.call("counter", "last_change") == (1, 2)
    assert sb.module_versions() == {"app": 1, "counter": 2}
    assert sb.call("counter", "incr") == 43

    back = sb.rollback_module("counter", 1)
    assert back.ok and back.kind == "rollback" and back.versions == {"counter": 1}
    assert sb.call("counter", "version") == 1
    # The v1 class's code_change saw the downgrade (old_vsn 2 > its vsn 1).
    assert sb.call("counter", "last_change") == (2, 1)
    assert sb.call("counter", "get") == {"count": 43}, "count kept, field removed"
    assert sb.module_versions() == {"app": 1, "counter": 1}
    assert [v.version for v in sb.module_versions("counter")] == [1, 2]
    status = sb.runtime.reload_status(sb.id)
    assert status["kind"] == "rollback" and status["ok"] and status["versions"] == {"counter": 1}


def test_a_compiler_gone_before_its_cache_writes_does_not_fail_the_reload(
    sandbox_factory, monkeypatch
):
    """The cache writes are asked for after the compile, unwaited: a compiler that
    ended meanwhile (it writes them as it ends) leaves the reload to go on."""
    from runtime.component import ComponentRef
    from runtime.errors import ActorDead

    sb = counter_at_42(sandbox_factory)
    send = ComponentRef.send

    def gone(self, op, *args, **kwargs):
        if op == "write_cache":
            raise ActorDead("compiler#1", None)
        return send(self, op, *args, **kwargs)

    write(sb, "counter.py", COUNTER_V2)
    monkeypatch.setattr(ComponentRef, "send", gone)
    report = sb.hot_reload(extra="migrated")
    assert report.ok and report.changed == ["counter"]


def test_a_reload_asks_each_component_once(sandbox_factory, monkeypatch):
    """Each round trip to a component actor is a thread hand-off (40 us and more on a
    VM): a reload asks each component what it needs on the reloading thread (in
    place: the components are idle), the manager's context, the compile, the
    version manager's plan and record; the status marks (and the compiler's cache
    writes) are sent, not waited for on their own."""
    from actors.compiler import CompilerActor
    from actors.manager import ManagerActor
    from actors.versions import VersionManagerActor
    from runtime.component import ComponentRef

    sb = counter_at_42(sandbox_factory)
    waited: list[str] = []
    here: list[str] = []
    sent: list[str] = []
    ran_on: dict[str, int] = {}
    me = threading.get_ident()
    invoke, invoke_here, send = ComponentRef.invoke, ComponentRef.invoke_here, ComponentRef.send

    def counted_invoke(self, op, *args, **kwargs):
        if threading.get_ident() == me:  # not the components' own calls to each other
            waited.append(op)
        return invoke(self, op, *args, **kwargs)

    def counted_invoke_here(self, op, *args, **kwargs):
        if threading.get_ident() == me:
            here.append(op)
        return invoke_here(self, op, *args, **kwargs)

    def counted_send(self, op, *args, **kwargs):
        if threading.get_ident() == me:
            sent.append(op)
        return send(self, op, *args, **kwargs)

    def where(name, cls=VersionManagerActor):
        fn = getattr(cls, f"op_{name}")

        def op(self, *args, **kwargs):
            ran_on[name] = threading.get_ident()
            return fn(self, *args, **kwargs)
        return op

    write(sb, "counter.py", COUNTER_V2)
    monkeypatch.setattr(ComponentRef, "invoke", counted_invoke)
    monkeypatch.setattr(ComponentRef, "invoke_here", counted_invoke_here)
    monkeypatch.setattr(ComponentRef, "send", counted_send)
    for name in ("plan_reload", "record"):
        monkeypatch.setattr(VersionManagerActor, f"op_{name}", where(name))
    monkeypatch.setattr(ManagerActor, "op_reload_context", where("reload_context", ManagerActor))
    monkeypatch.setattr(CompilerActor, "op_compile_sandbox", where("compile_sandbox", CompilerActor))
    report = sb.hot_reload(extra="migrated")
    assert report.ok and report.changed == ["counter"]
    assert waited == []
    assert here == ["reload_context", "compile_sandbox", "plan_reload", "record"]
    # the compile's cache entries are written while the sandbox swaps
    assert sent == ["set_status", "write_cache", "set_status"]
    assert ran_on == {"reload_context": me, "compile_sandbox": me, "plan_reload": me,
                      "record": me}
    assert sb.call("counter", "get") == {"count": 42, "label": "migrated"}
    assert sb.info()["status"] == "running"  # the mark sent back is seen by what is asked next


def test_reload_with_nothing_changed_swaps_nothing(sandbox_factory):
    sb = counter_at_42(sandbox_factory)
    report = sb.hot_reload()
    assert report.ok and report.modules == [] and report.changed == [] and report.actors == 0
    assert sb.module_versions() == {"app": 1, "counter": 1}
    assert sb.call("counter", "get") == {"count": 42}


def test_migrate_function_from_the_host_replaces_code_change(sandbox_factory):
    """The function is defined here, a module the sandbox cannot import: it travels
    by value and runs inside the swap (it used to break the mailbox protocol)."""
    sb = counter_at_42(sandbox_factory)
    seen = []

    def migrate(old_state, old_vsn, new_vsn):
        return {**old_state, "label": f"{old_vsn}->{new_vsn}", "seen": len(seen)}

    write(sb, "counter.py", COUNTER_V2)
    report = sb.hot_reload(migrate=migrate)
    assert report.ok and report.versions == {"counter": 2}
    assert sb.call("counter", "get") == {"count": 42, "label": "1->2", "seen": 0}
    assert sb.call("counter", "last_change") is None, "code_change was not called"
    assert sb.info()["restart_count"] == 0


def test_source_reload_keeps_the_apps_file_names(sandbox_factory):
    """hot_reload(source=...) compiles in a temporary copy of the app; the modules it
    loads still name the app's files (tracebacks, __file__), not the copy."""
    sb = counter_at_42(sandbox_factory)
    on_disk = (path_of(sb) / "counter.py").read_text()
    report = sb.hot_reload(source={"counter": textwrap.dedent(COUNTER_V2)})
    assert report.ok and report.changed == ["counter"] and report.versions == {"counter": 2}
    assert sb.call("counter", "version") == 2
    (v2,) = [v for v in sb.module_versions("counter") if v.version == 2]
    assert v2.file == str(path_of(sb) / "counter.py")
    assert sb.run(lambda: sys.modules["counter"].__file__) == str(path_of(sb) / "counter.py")
    assert (path_of(sb) / "counter.py").read_text() == on_disk, "the app's files untouched"


# -- failures: each leaves the old code serving, states and history intact -------------

COUNTER_V2_BAD_CODE_CHANGE = COUNTER_V2.replace(
    "        if old_vsn == 1:",
    "        if state['count'] == 3:\n"
    "            raise RuntimeError('cannot migrate this one')\n"
    "        if old_vsn == 1:",
)

FAILURES = {
    # name: (new counter.py, hot_reload options, step, module)
    "import error": (
        "import no_such_module_anywhere\n" + COUNTER_V2, {}, "stage", "counter"),
    "module body raises half-way": (
        COUNTER_V2 + "\nraise RuntimeError('half-way through the module body')\n",
        {}, "stage", "counter"),
    "code_change raises": (
        COUNTER_V2.replace("        if old_vsn == 1:",
                           "        raise KeyError('label')\n        if old_vsn == 1:"),
        {}, "code_change", "counter"),
    "migrate function raises": (COUNTER_V2, {"migrate": "raise"}, "migrate", "counter"),
    "changed class no longer exists": (
        COUNTER_V2.replace("class Counter(", "class Tally("), {}, "resolve", "counter"),
}


def _raising_migrate(old_state, old_vsn, new_vsn):
    raise ValueError("this migration is wrong")


@pytest.mark.parametrize("kind", list(FAILURES))
def test_failed_reload_keeps_old_code_state_and_history(sandbox_factory, kind):
    new_source, options, step, module = FAILURES[kind]
    if options.get("migrate") == "raise":
        options = {**options, "migrate": _raising_migrate}
    sb = counter_at_42(sandbox_factory)
    before = versions_state(sb, "counter", "app")

    write(sb, "counter.py", new_source)
    with pytest.raises(ReloadFailed) as info:
        sb.hot_reload(**options)
    err = info.value
    assert (err.step, err.module) == (step, module), str(err)
    assert f"step {step!r}" in str(err) and "still serving" in str(err)
    assert sb.call("counter", "version") == 1, "the old code still serves"
    assert sb.call("counter", "get") == {"count": 42}, "the state is intact"
    assert versions_state(sb, "counter", "app") == before, "version history unchanged"
    status = sb.runtime.reload_status(sb.id)
    assert status["ok"] is False and "ReloadFailed" in status["error"]
    assert sb.info()["status"] == "running" and sb.info()["restart_count"] == 0

    # Not wedged: a good edit reloads fine afterwards.
    write(sb, "counter.py", COUNTER_V2)
    assert sb.hot_reload().versions == {"counter": 2}
    assert sb.call("counter", "get") == {"count": 42, "label": "fresh"}


POOL_APP = """
import counter


def children():
    return [counter.Counter.child_spec(name=f"c{i}", id=f"c{i}") for i in range(6)]
"""


def test_code_change_raising_for_actor_k_of_n_migrates_none(sandbox_factory):
    sb = sandbox_factory({"app.py": POOL_APP, "counter.py": COUNTER_V1})
    for i in range(6):
        for _ in range(i):
            sb.call(f"c{i}", "incr")
    before = versions_state(sb, "counter")
    write(sb, "counter.py", COUNTER_V2_BAD_CODE_CHANGE)
    with pytest.raises(ReloadFailed) as info:
        sb.hot_reload()
    assert (info.value.step, info.value.module) == ("code_change", "counter")
    assert "for actor c3#" in str(info.value) and "cannot migrate this one" in str(info.value)
    for i in range(6):
        assert sb.call(f"c{i}", "version") == 1
        assert sb.call(f"c{i}", "get") == {"count": i}
        assert sb.call(f"c{i}", "last_change") is None, "no code_change committed anywhere"
    assert versions_state(sb, "counter") == before


# -- dependencies and cycles -------------------------------------------------------------

CHAIN = {
    "app.py": """
        from a import A


        def children():
            return [A.child_spec(name="a")]
        """,
    "a.py": """
        from runtime.genserver import GenServer

        from b import f


        class A(GenServer):
            def init(self):
                return None

            def handle_call(self, request, state):
                return f(request), state
        """,
    "b.py": """
        def f(x):
            return f"b1:{x}"
        """,
}


def test_dependent_using_from_import_calls_the_new_function(sandbox_factory):
    sb = sandbox_factory(CHAIN)
    assert sb.call("a", 1) == "b1:1"
    write(sb, "b.py", 'def f(x):\n    return f"b2:{x}"\n')
    report = sb.hot_reload()
    assert report.changed == ["b"] and report.modules == ["b", "a", "app"]
    assert report.versions == {"b": 2} and report.cycles == []
    assert sb.call("a", 2) == "b2:2"
    assert sb.module_versions() == {"a": 1, "app": 1, "b": 2}


CYCLE = {
    "app.py": """
        import a


        def children():
            return [a.A.child_spec(name="a")]
        """,
    "a.py": """
        from runtime.genserver import GenServer

        import b

        TAG = "a1"


        class A(GenServer):
            def init(self):
                return 0

            def handle_call(self, request, state):
                return b.describe(), state + 1
        """,
    "b.py": """
        import a


        def describe():
            return f"b1 sees {a.TAG}"
        """,
}


def test_import_cycle_reloads_as_one_unit(sandbox_factory):
    sb = sandbox_factory(CYCLE)
    assert sb.call("a", "x") == "b1 sees a1"
    write(sb, "b.py", 'import a\n\n\ndef describe():\n    return f"b2 sees {a.TAG}"\n')
    report = sb.hot_reload()
    assert report.cycles == [["a", "b"]]
    assert report.modules == ["a", "b", "app"] and report.changed == ["b"]
    assert report.actors == 1
    assert sb.call("a", "x") == "b2 sees a1"
    # both sides of the cycle changed at once
    write(sb, "a.py", (path_of(sb) / "a.py").read_text().replace('TAG = "a1"', 'TAG = "a2"'))
    write(sb, "b.py", 'import a\n\n\ndef describe():\n    return f"b3 sees {a.TAG}"\n')
    report = sb.hot_reload()
    assert report.cycles == [["a", "b"]] and report.changed == ["a", "b"]
    assert report.versions == {"a": 2, "b": 3}
    assert sb.call("a", "x") == "b3 sees a2"
    assert sb.call("a", "x") == "b3 sees a2"


# -- messages in flight ---------------------------------------------------------------------

SEQ_APP = {
    "app.py": """
        import seq


        def children():
            return [seq.Seq.child_spec(name="seq")]
        """,
    "seq.py": """
        import threading

        from runtime.genserver import GenServer

        GATE = threading.Event()
        HOLDING = threading.Event()


        class Seq(GenServer):
            vsn = 1

            def init(self):
                return []

            def handle_cast(self, request, state):
                if request == "hold":  # keeps this handler busy until the test opens GATE
                    HOLDING.set()
                    GATE.wait(30)
                    return state
                state.append((request, 1))
                return state

            def handle_call(self, request, state):
                if request == "len":
                    return len(state), state
                return state, state
        """,
}


def _seq_v2(sb) -> None:
    src = (path_of(sb) / "seq.py").read_text()
    write(sb, "seq.py", src.replace("vsn = 1", "vsn = 2").replace("(request, 1)", "(request, 2)"))


def test_a_thousand_casts_in_flight_across_a_reload(sandbox_factory):
    sb = sandbox_factory(SEQ_APP)
    _seq_v2(sb)
    half, reloaded = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def caster() -> None:
        try:
            for i in range(1000):
                if i == 500:
                    half.set()
                    if not reloaded.wait(30):
                        raise TimeoutError("the reload did not finish")
                sb.cast("seq", i)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            half.set()

    thread = threading.Thread(target=caster)
    thread.start()
    try:
        wait_for(half, timeout=30)
        report = sb.hot_reload()  # casts 0..499 are still arriving and queued
        reloaded.set()
    finally:
        reloaded.set()
        thread.join(30)
    assert not errors, errors
    assert report.actors == 1
    wait_for(lambda: sb.call("seq", "len") >= 1000, timeout=30)
    got = sb.call("seq", "list")
    assert [n for n, _ in got] == list(range(1000)), "each cast once, in order"
    tags = [t for _, t in got]
    assert tags == sorted(tags), "old code, then new code: never interleaved"
    assert all(t == 2 for n, t in got if n >= 500), "casts after the swap ran the new code"


def test_casts_arriving_while_actors_are_suspended_wait_and_run_the_new_code(
    sandbox_factory,
):
    """A handler busy at reload time holds the swap back; casts that arrive
    meanwhile wait in the mailbox and are handled after the swap, in order, by the
    new code."""
    sb = sandbox_factory(SEQ_APP, profile="low")
    for i in range(300):
        sb.cast("seq", i)
    sb.cast("seq", "hold")
    wait_for(lambda: sb.run(lambda: sys.modules["seq"].HOLDING.is_set()), timeout=30)
    _seq_v2(sb)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("report", sb.hot_reload()))
    thread.start()
    try:
        wait_for(lambda: sb.run(lambda: barrier()._writers_waiting > 0), timeout=30)
        for i in range(300, 1000):  # the reload waits for the busy handler: all queue
            sb.cast("seq", i)
        assert sb.run(lambda: sys.modules["seq"].Seq.vsn) == 1, "not swapped yet"
    finally:
        sb.run(lambda: sys.modules["seq"].GATE.set())  # the old module's gate
        thread.join(30)
    assert out["report"].ok and out["report"].suspend_seconds > 0
    wait_for(lambda: sb.call("seq", "len") >= 1000, timeout=30)
    got = sb.call("seq", "list")
    assert got == [(i, 1) for i in range(300)] + [(i, 2) for i in range(300, 1000)]


# -- compile isolation ----------------------------------------------------------------------

# CPython 3.11 parses f-string replacement fields in quadratic time: this much takes
# ~25 s to compile (see tests/test_compiler.py): a runaway compile.
SLOW_SOURCE = "a = 1\ns = f'" + "{a}" * 160_000 + "'\n"


def test_pathological_compile_is_killed_and_the_old_code_keeps_serving(
    sandbox_factory, sandbox_runtime
):
    sb = counter_at_42(sandbox_factory)
    before = versions_state(sb, "counter")
    write(sb, "counter.py", COUNTER_V2 + "\n" + SLOW_SOURCE)
    started = threading.Event()
    telemetry.attach("t-hr-compile", "compile.start", lambda e, m, md: started.set())
    out: dict = {}

    def reload() -> None:
        try:
            sb.hot_reload(compile_timeout=1.0)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=reload)
    try:
        thread.start()
        wait_for(started, timeout=10)
        # The host and the sandbox answer while the compile worker grinds: the reload
        # is still under way after both answers (no clock: the order is the check).
        assert sb.call("counter", "get") == {"count": 42}
        assert sandbox_runtime.get_sandbox_info(sb.id)["status"] == "reloading"
        assert thread.is_alive() and "error" not in out
        thread.join(60)
    finally:
        telemetry.detach("t-hr-compile")
    err = out["error"]
    assert isinstance(err, CompileError), err
    assert not thread.is_alive()  # ended by the 1 s timeout, not by the ~25 s compile
    (diag,) = [d for d in err.diagnostics if d.code == "timeout"]
    assert diag.file.endswith("counter.py") and "1" in diag.message
    assert "timeout" in str(err)
    assert sb.call("counter", "version") == 1 and sb.call("counter", "get") == {"count": 42}
    assert versions_state(sb, "counter") == before
    assert sb.info()["status"] == "running"


# -- child specs --------------------------------------------------------------------------

WORKER = """
from runtime.genserver import GenServer


class Worker(GenServer):
    def init(self, tag="w"):
        return tag

    def handle_call(self, request, state):
        return f"{state}:{request}", state
"""


def test_child_spec_changes_start_stop_and_restart_only_what_changed(sandbox_factory):
    sb = counter_at_42(sandbox_factory)
    write(sb, "worker.py", WORKER)
    write(sb, "app.py", """
        import counter
        import worker


        def children():
            return [counter.Counter.child_spec(name="counter"),
                    worker.Worker.child_spec("w1", name="worker")]
        """)
    report = sb.hot_reload()
    assert sorted(report.changed) == ["app", "worker"]
    assert report.children == {"added": ["worker"], "removed": [], "changed": [], "failed": [],
                               "flags": []}
    assert sb.call("worker", "ping") == "w1:ping"
    assert sb.call("counter", "get") == {"count": 42}, "the counter kept running"

    # Change the worker's arguments, drop nothing: only the worker restarts.
    write(sb, "app.py", (path_of(sb) / "app.py").read_text().replace('"w1"', '"w2"'))
    report = sb.hot_reload()
    assert report.children == {"added": [], "removed": [], "changed": ["worker"], "failed": [],
                               "flags": []}
    assert sb.call("worker", "ping") == "w2:ping"
    assert sb.call("counter", "get") == {"count": 42}

    # Remove the worker again.
    write(sb, "app.py", APP)
    report = sb.hot_reload()
    assert report.children == {"added": [], "removed": ["worker"], "changed": [], "failed": [],
                               "flags": []}
    assert sb.call("counter", "get") == {"count": 42}
    assert "worker" not in sb.run(lambda: __import__("runtime.registry").registry.registered())


def test_a_child_that_fails_to_start_is_reported_not_fatal(sandbox_factory):
    sb = counter_at_42(sandbox_factory)
    write(sb, "worker.py", WORKER.replace('return tag', 'raise RuntimeError("no start")'))
    write(sb, "app.py", """
        import counter
        import worker


        def children():
            return [counter.Counter.child_spec(name="counter"),
                    worker.Worker.child_spec(name="worker")]
        """)
    report = sb.hot_reload()
    assert report.ok and report.children["added"] == []
    (failed,) = report.children["failed"]
    assert failed.startswith("worker:") and "no start" in failed
    assert any("child spec not applied: worker" in w for w in report.warnings)
    assert sb.call("counter", "get") == {"count": 42}
    assert sb.module_versions()["app"] == 2, "the code swap itself committed"


ENTRY_COUNTING_APP = """
import os

import counter


def children():
    os.environ["ENTRY_CALLS"] = str(int(os.environ.get("ENTRY_CALLS", "0")) + 1)
    return [counter.Counter.child_spec(name="counter")]
"""


def test_the_entry_is_read_again_only_when_its_module_was_re_staged(sandbox_factory):
    sb = sandbox_factory({"app.py": ENTRY_COUNTING_APP, "counter.py": COUNTER_V1,
                          "tools.py": "X = 1\n"}, profile="low")
    calls = lambda: sb.run(lambda: __import__("os").environ["ENTRY_CALLS"])  # noqa: E731
    assert calls() == "1"
    write(sb, "tools.py", "X = 2\n")  # nothing imports it: the entry cannot have changed
    report = sb.hot_reload()
    assert report.modules == ["tools"] and report.children == {
        "added": [], "removed": [], "changed": [], "failed": [], "flags": []}
    assert calls() == "1"
    write(sb, "counter.py", COUNTER_V2)  # the entry imports it: re-staged, read again
    report = sb.hot_reload()
    assert report.modules == ["counter", "app"] and calls() == "2"
    assert sb.call("counter", "version") == 2


# -- a thousand actors of the changed class ----------------------------------------------

MANY = {
    "app.py": """
        import many


        def children():
            return [many.Cell.child_spec(i, name=f"cell{i}", id=f"cell{i}")
                    for i in range(1000)]
        """,
    "many.py": """
        from runtime.genserver import GenServer


        class Cell(GenServer):
            vsn = 1

            def init(self, n):
                return n

            def handle_call(self, request, state):
                return ("v1", state), state
        """,
}


@pytest.mark.timeout(120)
def test_a_thousand_actors_migrate_at_one_barrier_and_keep_serving(sandbox_factory):
    sb = sandbox_factory(MANY, profile="low")
    writes_before = sb.run(lambda: barrier().writes)
    write(sb, "many.py", """
        from runtime.genserver import GenServer


        class Cell(GenServer):
            vsn = 2

            def init(self, n):
                return {"n": n}

            def code_change(self, old_vsn, state, extra):
                return {"n": state, "from": old_vsn}

            def handle_call(self, request, state):
                return ("v2", state), state
        """)
    report = sb.hot_reload(timeout=60)
    assert report.actors == 1000 and report.changed == ["many"]
    assert sb.run(lambda: barrier().writes) == writes_before + 1, "one barrier for all"
    for i in range(1000):
        assert sb.call(f"cell{i}", "x") == ("v2", {"n": i, "from": 1})
