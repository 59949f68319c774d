"""The version manager actor: history, deduplication, rollback lookup, reload order."""

from __future__ import annotations

import marshal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.compilation import CompiledModule
from actors.compiler import CompilerActor
from actors.versions import ModuleVersion, VersionManagerActor, VersionNotFound
from runtime import telemetry
from runtime.component import ComponentRef
from runtime.errors import ConfigError, SandboxError, SandboxNotFound
from sandbox.testing import leaks, snapshot

pytestmark = pytest.mark.timeout(60)


def mod(name: str, source: str, deps: tuple[str, ...] = ()) -> CompiledModule:
    src = source.encode()
    code = marshal.dumps(compile(src, f"/app/{name}.py", "exec", dont_inherit=True))
    return CompiledModule.build(name, f"/app/{name}.py", src, code, dependencies=deps)


def run(m: CompiledModule | ModuleVersion) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    code = m.code_object() if isinstance(m, CompiledModule) else marshal.loads(m.code)
    exec(code, ns)
    return ns


@pytest.fixture
def start_versions() -> Iterator[Callable[..., ComponentRef]]:
    """Starts version managers; stops them all and checks nothing leaked."""
    before = snapshot()
    refs: list[ComponentRef] = []

    def start(**options: Any) -> ComponentRef:
        ref = VersionManagerActor.start(**options)
        refs.append(ref)
        return ref  # type: ignore[return-value]

    try:
        yield start
    finally:
        for ref in refs:
            ref.stop()
    assert leaks(before) == []


@pytest.fixture
def versions(start_versions: Callable[..., ComponentRef]) -> ComponentRef:
    return start_versions()


def test_record_numbers_versions_per_module_from_one(versions: ComponentRef) -> None:
    assert versions.invoke("record", "sb", [mod("a", "X = 1"), mod("b", "Y = 1")]) == {
        "a": 1, "b": 1}
    assert versions.invoke("record", "sb", {"a": mod("a", "X = 2")}) == {"a": 2}
    cur = versions.invoke("get_current_version", "sb", "a")
    assert (cur.module, cur.version) == ("a", 2)
    assert cur.source_sha256 == mod("a", "X = 2").source_sha256
    assert cur.size == len(b"X = 2") and cur.loaded_at > 0 and cur.file == "/app/a.py"
    assert versions.invoke("get_current_version", "sb", "b").version == 1


def test_identical_source_makes_no_new_version(versions: ComponentRef) -> None:
    events: list[Any] = []
    telemetry.attach("t-versions", "versions.record", lambda e, m, md: events.append(m))
    try:
        versions.invoke("record", "sb", [mod("a", "X = 1")])
        assert versions.invoke("record", "sb", [mod("a", "X = 1")]) == {"a": 1}
    finally:
        telemetry.detach("t-versions")
    assert [v.version for v in versions.invoke("list_module_versions", "sb", "a")] == [1]
    assert [e["new_versions"] for e in events] == [1, 0]
    assert versions.invoke("changed_modules", "sb", [mod("a", "X = 1"), mod("b", "")]) == ["b"]


def test_history_is_capped_and_evicted_versions_say_what_is_kept(
    start_versions: Callable[..., ComponentRef],
) -> None:
    versions = start_versions(history=3)
    for i in range(1, 6):
        versions.invoke("record", "sb", [mod("a", f"X = {i}")])
    kept = versions.invoke("list_module_versions", "sb", "a")
    assert [v.version for v in kept] == [3, 4, 5]
    with pytest.raises(VersionNotFound) as info:
        versions.invoke("get_version", "sb", "a", 1)
    assert info.value.kept == [3, 4, 5] and info.value.version == 1
    assert "version 1 was evicted" in str(info.value)
    assert "last 3 versions" in str(info.value) and "3..5" in str(info.value)
    with pytest.raises(VersionNotFound, match="no version 9"):
        versions.invoke("get_version", "sb", "a", 9)
    # numbers are never reused after eviction
    assert versions.invoke("record", "sb", [mod("a", "X = 6")]) == {"a": 6}
    assert versions.invoke("get_current_version", "sb", "a").version == 6  # still alive


def test_rollback_lookup_and_set_current(versions: ComponentRef) -> None:
    for i in (1, 2, 3):
        versions.invoke("record", "sb", [mod("a", f"X = {i}\n")])
    v1 = versions.invoke("get_version", "sb", "a", 1)
    assert run(v1)["X"] == 1 and v1.source == b"X = 1\n"
    assert run(v1.to_compiled())["X"] == 1  # validated again on the way back
    assert versions.invoke("set_current", "sb", "a", 1).version == 1
    assert versions.invoke("get_current_version", "sb", "a").version == 1
    # reloading the rolled-back source again is not a new version ...
    assert versions.invoke("record", "sb", [mod("a", "X = 1\n")]) == {"a": 1}
    # ... but the source of version 3 now is (it differs from the current one)
    assert versions.invoke("record", "sb", [mod("a", "X = 3\n")]) == {"a": 4}
    log = versions.invoke("get_version_history", "sb", "a")
    assert [(e.action, e.version, e.previous) for e in log] == [
        ("recorded", 1, None), ("recorded", 2, 1), ("recorded", 3, 2),
        ("current", 1, 3), ("recorded", 4, 1)]


def test_dry_run_changes_nothing(versions: ComponentRef) -> None:
    versions.invoke("record", "sb", [mod("a", "X = 1")])
    assert versions.invoke("record", "sb", [mod("a", "X = 2"), mod("n", "")], dry_run=True) == {
        "a": 2, "n": 1}
    assert versions.invoke("get_current_version", "sb", "a").version == 1
    assert versions.invoke("get_dependency_graph", "sb") == {"a": []}
    assert versions.invoke("record", "new-sb", [mod("a", "")], dry_run=True) == {"a": 1}
    assert versions.invoke("sandboxes") == ["sb"]


def test_unknown_names_are_clear_errors_and_the_actor_survives(versions: ComponentRef) -> None:
    with pytest.raises(SandboxNotFound, match="nope"):
        versions.invoke("get_current_version", "nope", "a")
    versions.invoke("record", "sb", [mod("a", "")])
    with pytest.raises(VersionNotFound, match="no recorded versions of module 'zz'"):
        versions.invoke("list_module_versions", "sb", "zz")
    with pytest.raises(SandboxError, match="CompiledModule"):
        versions.invoke("record", "sb", ["not a module"])
    assert versions.is_alive()
    with pytest.raises(ConfigError):
        VersionManagerActor.start(history=0)


def test_reload_order_chain_a_imports_b_imports_c(versions: ComponentRef) -> None:
    versions.invoke("record", "sb", [
        mod("a", "from b import f", ("b",)), mod("b", "from c import g", ("c",)),
        mod("c", "def g(): pass"), mod("x", "")])
    assert versions.invoke("get_dependency_graph", "sb") == {
        "a": ["b"], "b": ["c"], "c": [], "x": []}
    assert versions.invoke("calculate_reload_order", "sb", ["c"]).units == [["c"], ["b"], ["a"]]
    plan = versions.invoke("calculate_reload_order", "sb", ["b"])
    assert plan.units == [["b"], ["a"]] and plan.dependents == ["a"] and plan.cycles == []


def test_reload_order_cycle_a_b_is_one_unit(versions: ComponentRef) -> None:
    versions.invoke("record", "sb", [
        mod("a", "import b", ("b",)), mod("b", "import a", ("a",)),
        mod("main", "import a", ("a",))])
    plan = versions.invoke("calculate_reload_order", "sb", ["a"])
    assert plan.units == [["a", "b"], ["main"]]
    assert plan.cycles == [["a", "b"]]


def test_reload_order_uses_pending_imports(versions: ComponentRef) -> None:
    versions.invoke("record", "sb", [mod("a", ""), mod("b", "")])
    # a now imports a brand-new module d; neither is recorded yet
    pending = {"a": mod("a", "import d", ("d",)), "d": mod("d", "")}
    plan = versions.invoke("calculate_reload_order", "sb", ["a", "d"], pending=pending)
    assert plan.units == [["d"], ["a"]]
    with pytest.raises(VersionNotFound, match="no module 'd'"):
        versions.invoke("calculate_reload_order", "sb", ["d"])


def test_forget(versions: ComponentRef) -> None:
    versions.invoke("record", "sb", [mod("a", "")])
    assert versions.invoke("forget", "sb") is True
    assert versions.invoke("forget", "sb") is False
    with pytest.raises(SandboxNotFound):
        versions.invoke("get_dependency_graph", "sb")


def test_records_a_real_compile_and_its_graph(
    versions: ComponentRef, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "pkg" / "__init__.py").write_text("from .core import run\n")
    (app / "pkg" / "core.py").write_text("from . import util\ndef run(): return util.X\n")
    (app / "pkg" / "util.py").write_text("X = 1\n")
    (app / "main.py").write_text("import pkg\n")
    compiler = CompilerActor.start(cache_dir=tmp_path / "cache")
    try:
        result = compiler.invoke("compile_sandbox", app, timeout=30).raise_for_errors()
    finally:
        compiler.stop()
    assert versions.invoke("record", "sb", result) == {
        "main": 1, "pkg": 1, "pkg.core": 1, "pkg.util": 1}
    assert versions.invoke("get_dependency_graph", "sb") == {
        "main": ["pkg"], "pkg": ["pkg.core"], "pkg.core": ["pkg", "pkg.util"], "pkg.util": []}
    plan = versions.invoke("calculate_reload_order", "sb", ["pkg.util"])
    assert plan.units == [["pkg.util"], ["pkg", "pkg.core"], ["main"]]
    assert plan.cycles == [["pkg", "pkg.core"]]


def test_plan_reload_answers_what_four_operations_would(versions: ComponentRef) -> None:
    versions.invoke("record", "sb", [mod("main", "import b", ("b",)), mod("b", "x = 1")])
    compiled = {"main": mod("main", "import b", ("b",)), "b": mod("b", "x = 2")}
    proposal = versions.invoke("plan_reload", "sb", compiled)
    assert proposal.wanted == versions.invoke("changed_modules", "sb", compiled) == ["b"]
    assert proposal.graph == versions.invoke("get_dependency_graph", "sb")
    assert proposal.plan == versions.invoke("calculate_reload_order", "sb", ["b"],
                                            pending=compiled)
    assert proposal.plan.units == [["b"], ["main"]]
    assert proposal.versions == {"b": 2}  # a dry run: nothing recorded
    assert versions.invoke("get_current_version", "sb", "b").version == 1
    asked = versions.invoke("plan_reload", "sb", compiled, modules=["main"])
    assert asked.wanted == ["main"] and asked.versions == {"main": 1}
    same = {"b": mod("b", "x = 1")}
    assert versions.invoke("plan_reload", "sb", same).plan is None  # nothing to do
