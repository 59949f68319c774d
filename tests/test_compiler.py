"""The compiler actor: isolated worker, cache, diagnostics, scanner hook, dependencies."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import marshal
import os
import py_compile
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors.compilation import MAGIC, CompilationResult, CompiledModule, Diagnostic
from actors.compile_cache import FORMAT, CacheEntry, CompileCache
from actors.compiler import CompilerActor
from runtime import telemetry
from runtime.component import Component, ComponentRef
from runtime.errors import CompileError, ConfigError
from sandbox.testing import leaks, process_alive, snapshot, wait_for

pytestmark = pytest.mark.timeout(60)

# CPython 3.11 parses f-string replacement fields in quadratic time: ~500 kB of
# this takes ~25 s and little memory: a runaway compile for the timeout tests.
SLOW_SOURCE = "a = 1\ns = f'" + "{a}" * 160_000 + "'\n"
# ~2 MB of list literal needs ~650 MB to parse: over a 256 MiB RLIMIT_AS.
HUGE_SOURCE = "x = [" + "1," * 1_000_000 + "]\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def run(m: CompiledModule) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": m.name}
    exec(m.code_object(), ns)
    return ns


@pytest.fixture
def start_compiler(tmp_path: Path) -> Iterator[Callable[..., ComponentRef]]:
    """Starts compilers (cache under tmp_path unless given); stops them; checks for leaks."""
    before = snapshot()
    refs: list[ComponentRef] = []

    def start(**options: Any) -> ComponentRef:
        options.setdefault("cache_dir", tmp_path / "cache")
        ref = CompilerActor.start(**options)
        refs.append(ref)
        return ref  # type: ignore[return-value]

    try:
        yield start
    finally:
        for ref in refs:
            ref.stop()
    assert leaks(before) == []


@pytest.fixture
def compiler(start_compiler: Callable[..., ComponentRef]) -> ComponentRef:
    return start_compiler()


def compile_app(ref: ComponentRef, root: Path, **kw: Any) -> CompilationResult:
    return ref.invoke("compile_sandbox", root, timeout=50, **kw)


# -- module discovery and basic results ------------------------------------------------

def test_module_names_come_from_paths_relative_to_the_app(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {
        "app.py": "X = 1\n",
        "pkg/__init__.py": "",
        "pkg/mod.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "",
        "ns/plain.py": "",                    # namespace package: no __init__.py
        "pkg/__pycache__/junk.py": "",
        ".hidden/x.py": "",
        "pkg/.secret.py": "",
        "my-script.py": "",                   # not importable
        "README.txt": "",
        "venv/pyvenv.cfg": "",
        "venv/lib.py": "",
        ".sandbox_cache/x.py": "",
    })
    r = compile_app(compiler, app, cache_dir=app / ".sandbox_cache")
    assert sorted(r.modules) == ["app", "ns.plain", "pkg", "pkg.mod", "pkg.sub", "pkg.sub.deep"]
    assert r.modules["pkg"].is_package and not r.modules["pkg.mod"].is_package
    m = r.modules["app"]
    assert m.file == str(app / "app.py") and m.size == len(b"X = 1\n")
    assert m.source_sha256 == hashlib.sha256(b"X = 1\n").hexdigest()
    assert m.code_sha256 == hashlib.sha256(m.code).hexdigest()
    assert m.magic == MAGIC and run(m)["X"] == 1
    assert r.ok and r.duration > 0 and r.errors == [] and r.profile == "medium"


def test_hundred_module_app_cold_then_cached_then_one_edit(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    files = {}
    for i in range(100):
        # imported inside the function, so the test can run a module on its own
        dep = f"    from m{i - 1:02d} import f{i - 1}\n" if i else ""
        files[f"m{i:02d}.py"] = f"def f{i}(x):\n{dep}    return x + {i}\nVALUE = {i}\n"
    app = write(tmp_path / "app", files)

    cold = compile_app(compiler, app)
    assert cold.ok and len(cold.modules) == 100 and len(cold.recompiled) == 100
    assert cold.modules["m05"].dependencies == ("m04",)

    warm = compile_app(compiler, app)
    assert warm.recompiled == [] and len(warm.cached) == 100
    assert all(m.from_cache for m in warm.modules.values())
    assert warm.modules["m42"].code == cold.modules["m42"].code

    (app / "m42.py").write_text(files["m42.py"].replace("VALUE = 42", "VALUE = -42"))
    edited = compile_app(compiler, app)
    assert edited.recompiled == ["m42"] and len(edited.cached) == 99
    assert run(edited.modules["m42"])["VALUE"] == -42

    inc = compiler.invoke("incremental_compile", app, ["m42.py", str(app / "m07.py")])
    assert sorted(inc.modules) == ["m07", "m42"] and inc.recompiled == []
    assert inc.modules["m42"].dependencies == ("m41",)
    assert compiler.invoke("status")["workers_started"] == 1  # one worker, reused


def test_incremental_compile_reports_removed_and_new_files(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {"a.py": "import b\n", "b.py": "", "gone.py": ""})
    compile_app(compiler, app)
    (app / "gone.py").unlink()
    write(app, {"new.py": "import a\n", "notes.md": "x"})
    r = compiler.invoke("incremental_compile", app, ["gone.py", "new.py", "notes.md", "b.py"])
    assert r.removed == ["gone"]
    assert sorted(r.modules) == ["b", "new"] and r.recompiled == ["new"]
    assert r.modules["new"].dependencies == ("a",)


def test_compile_sandbox_given_what_runs_compiles_only_what_differs(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    """Compared byte for byte with what runs, whatever the files' times: an edited
    module, a new one and one whose file moved are compiled, the rest is not."""
    app = write(tmp_path / "app", {"a.py": "import b\n", "b.py": "X = 1\n", "c.py": ""})
    running = {"a": (str(app / "a.py"), "import b\n"), "b": (str(app / "b.py"), "X = 0\n"),
               "c": (str(tmp_path / "elsewhere" / "c.py"), "")}
    write(app, {"new.py": "import a\n"})
    r = compiler.invoke("compile_sandbox", app, running=running)
    assert sorted(r.modules) == ["b", "c", "new"] and r.ok
    assert r.modules["new"].dependencies == ("a",)
    assert compiler.invoke("compile_sandbox", app, running={
        n: (str(app / f"{n}.py"), (app / f"{n}.py").read_text()) for n in ("a", "b", "c", "new")
    }).modules == {}


def test_compile_file_names_the_module_from_the_app_root(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {
        "pkg/__init__.py": "", "pkg/mod.py": "from . import helper\n", "pkg/helper.py": ""})
    r = compiler.invoke("compile_file", app / "pkg" / "mod.py", app_root=app)
    assert list(r.modules) == ["pkg.mod"]
    assert r.modules["pkg.mod"].dependencies == ("pkg", "pkg.helper")
    alone = compiler.invoke("compile_file", app / "pkg" / "helper.py")
    assert list(alone.modules) == ["helper"]
    with pytest.raises(CompileError, match="not a module file"):
        compiler.invoke("compile_file", app / "pkg" / "missing.py", app_root=app)
    with pytest.raises(CompileError, match="does not exist"):
        compile_app(compiler, tmp_path / "nowhere")
    assert compiler.is_alive()


# -- cache -----------------------------------------------------------------------------

def test_tampered_and_damaged_cache_entries_are_rebuilt_never_loaded(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {f"m{i}.py": f"VALUE = {i}\n" for i in range(5)})
    compile_app(compiler, app)
    compiler.invoke("status")  # entries are written after the answer, before the next one
    entries = sorted((tmp_path / "cache").glob("*.sbxc"))
    assert len(entries) == 5
    by_file = {}
    for p in entries:
        data = p.read_bytes()
        hlen = int.from_bytes(data[len(FORMAT) + 32: len(FORMAT) + 36], "big")
        header = json.loads(data[len(FORMAT) + 36: len(FORMAT) + 36 + hlen])
        by_file[Path(header["filename"]).stem] = p

    # m0: one byte of the code flipped, same size
    data = bytearray(by_file["m0"].read_bytes())
    data[-3] ^= 0xFF
    by_file["m0"].write_bytes(bytes(data))
    # m1: truncated
    by_file["m1"].write_bytes(by_file["m1"].read_bytes()[:40])
    # m2: garbage
    by_file["m2"].write_bytes(b"not a cache entry at all")
    # m3: code of another module swapped in with a recomputed checksum: the
    # checksum passes, but the source checksum and filename in the header do not
    other = CompileCache(tmp_path / "cache")
    payload = by_file["m4"].read_bytes()[len(FORMAT) + 32:]
    by_file["m3"].write_bytes(FORMAT + hashlib.sha256(payload).digest() + payload)

    seen: list[dict[str, Any]] = []
    telemetry.attach("t-corrupt", "compile.cache_corrupt", lambda e, m, md: seen.append(dict(md)))
    try:
        r = compile_app(compiler, app)
    finally:
        telemetry.detach("t-corrupt")
    assert r.recompiled == ["m0", "m1", "m2", "m3"] and r.cached == ["m4"]
    assert [run(r.modules[f"m{i}"])["VALUE"] for i in range(5)] == [0, 1, 2, 3, 4]
    assert len(seen) == 4 and compiler.invoke("status")["corrupt_entries"] == 4
    again = compile_app(compiler, app)
    assert len(again.cached) == 5  # the rebuilt entries are good
    assert other.corrupt == 0


def test_entry_for_another_python_is_refused(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    src, fn = b"X = 1\n", "/app/m.py"
    key = cache.key(source=src, filename=fn, profile="medium")

    cache.store(key, CacheEntry("ok", [], [], marshal.dumps(compile(src, fn, "exec"))),
                source=src, filename=fn)
    assert cache.load(key, source=src, filename=fn) is not None
    data = cache.path(key).read_bytes()
    payload = data[len(FORMAT) + 32:]
    forged = payload.replace(MAGIC.hex().encode(), b"0000" + MAGIC.hex().encode()[4:])
    assert forged != payload
    cache.path(key).write_bytes(FORMAT + hashlib.sha256(forged).digest() + forged)
    # read by a cache that has not validated it before (another process's, say): one
    # that has may keep its own validated entry while the file keeps its identity
    fresh = CompileCache(tmp_path)
    assert fresh.load(key, source=src, filename=fn) is None  # magic mismatch
    assert not cache.path(key).exists() and fresh.corrupt == 1


def test_a_validated_entry_is_kept_in_memory_while_its_file_stays(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    src, fn = b"X = 1\n", "/app/m.py"
    key = cache.key(source=src, filename=fn, profile="medium")
    entry = CacheEntry("ok", [], [], marshal.dumps(compile(src, fn, "exec")))
    cache.store(key, entry, source=src, filename=fn)
    first = cache.load(key, source=src, filename=fn)
    assert first is not None and cache.load(key, source=src, filename=fn) is first
    cache.path(key).write_bytes(b"damaged")  # rewritten: read and validated again
    assert cache.load(key, source=src, filename=fn) is None and cache.corrupt == 1
    cache.store(key, entry, source=src, filename=fn)  # a new file: read again
    second = cache.load(key, source=src, filename=fn)
    assert second is not None and second is not first
    cache.path(key).unlink()
    assert cache.load(key, source=src, filename=fn) is None  # gone: gone from memory too


def test_a_compile_run_in_place_leaves_its_cache_writes_to_the_next_operation(
    compiler: ComponentRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hot reload compiles on its own thread (invoke_here): waking the compiler's
    thread to write the cache entries would compete with what the reload does next,
    so no message is sent for them; ``write_cache`` (or the next operation) writes
    them."""
    handled: list[Any] = []
    on_info = CompilerActor.on_info

    def counted(self: CompilerActor, message: Any) -> None:
        handled.append(message)
        on_info(self, message)

    monkeypatch.setattr(CompilerActor, "on_info", counted)
    app = write(tmp_path / "app", {"m.py": "VALUE = 1\n"})
    result = compiler.invoke_here("compile_sandbox", app, timeout=50)
    assert result.recompiled == ["m"]
    compiler.invoke("status")  # queued behind a write message, were there one
    assert handled == []
    assert len(list((tmp_path / "cache").glob("*.sbxc"))) == 1  # written by status
    (app / "m.py").write_text("VALUE = 2\n")
    assert compiler.invoke_here("compile_sandbox", app, timeout=50).recompiled == ["m"]
    compiler.invoke("write_cache")
    assert len(list((tmp_path / "cache").glob("*.sbxc"))) == 2
    compile_app(compiler, app)  # through the mailbox: written after, on its message
    assert compiler.invoke_here("compile_sandbox", app, timeout=50).cached == ["m"]


def test_keyed_cache_rejects_entries_it_did_not_sign(tmp_path: Path) -> None:
    src, fn = b"X = 1\n", "/app/m.py"
    plain, signed = CompileCache(tmp_path), CompileCache(tmp_path, secret=b"k" * 32)
    key = plain.key(source=src, filename=fn, profile="medium")
    plain.store(key, CacheEntry("ok", [], [], marshal.dumps(compile(src, fn, "exec"))),
                source=src, filename=fn)
    assert signed.load(key, source=src, filename=fn) is None


def test_same_size_edit_in_the_same_second_is_recompiled(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    """Stale bytecode: content-hashed, so neither mtime nor __pycache__ can fool it."""
    app = write(tmp_path / "app", {"m.py": "VALUE = 1\n"})
    path = app / "m.py"
    first = compile_app(compiler, app)
    st = path.stat()
    py_compile.compile(str(path), doraise=True)  # a __pycache__ .pyc of the old source
    path.write_text("VALUE = 2\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    second = compile_app(compiler, app)
    assert second.recompiled == ["m"]
    assert run(first.modules["m"])["VALUE"] == 1 and run(second.modules["m"])["VALUE"] == 2


def test_profile_is_part_of_the_cache_key(compiler: ComponentRef, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"m.py": "X = 1\n"})
    assert compile_app(compiler, app, profile="medium").recompiled == ["m"]
    assert compile_app(compiler, app, profile="high").recompiled == ["m"]
    assert compile_app(compiler, app, profile="high").cached == ["m"]


def test_owned_cache_dir_is_removed_on_stop(tmp_path: Path) -> None:
    before = snapshot()
    ref = CompilerActor.start()
    try:
        write(tmp_path / "app", {"m.py": ""})
        compile_app(ref, tmp_path / "app")
        cache_dir = Path(ref.invoke("status")["cache_dir"])
        assert list(cache_dir.glob("*.sbxc"))
        assert not cache_dir.is_relative_to(tmp_path)
    finally:
        ref.stop()
    assert not cache_dir.exists()
    assert leaks(before) == []


# -- diagnostics -----------------------------------------------------------------------

def test_syntax_error_has_exact_position_and_blocks_only_its_module(
    compiler: ComponentRef, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {
        "good.py": "X = 1\n",
        "bad.py": "x = 1\ndef f(:\n    pass\n",
        "colon.py": "if True\n    pass\n",
        "uni.py": 's = "éé"; x = 1 $ 2\n',
    })
    r = compile_app(compiler, app)
    assert sorted(r.modules) == ["good"] and sorted(r.failed) == ["bad", "colon", "uni"]
    by = {Path(d.file).stem: d for d in r.errors}
    assert (by["bad"].line, by["bad"].col, by["bad"].code) == (2, 7, "syntax-error")
    assert by["bad"].file == str(app / "bad.py") and by["bad"].severity == "error"
    assert (by["colon"].line, by["colon"].col) == (1, 8)
    assert by["colon"].message == "expected ':'" and "':'" in (by["colon"].hint or "")
    assert (by["uni"].line, by["uni"].col) == (1, 17)  # characters, not UTF-8 bytes
    assert str(by["bad"]) == f"{app / 'bad.py'}:2:7: syntax-error invalid syntax"
    with pytest.raises(CompileError) as info:
        r.raise_for_errors()
    assert f"{app / 'bad.py'}:2:7: syntax-error" in str(info.value)
    assert "3 errors" in str(info.value) and len(info.value.diagnostics) == 3


def test_indentation_and_tab_errors(compiler: ComponentRef, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {
        "noblock.py": "def f():\nreturn 1\n",
        "unindent.py": "def f():\n    x = 1\n  y = 2\n",
        "extra.py": "x = 1\n    y = 2\n",
        "tabs.py": "def f():\n\tx = 1\n        y = 2\n",
    })
    r = compile_app(compiler, app)
    by = {Path(d.file).stem: d for d in r.errors}
    assert (by["noblock"].line, by["noblock"].col, by["noblock"].code) == (
        2, 1, "indentation-error")
    assert by["noblock"].message.startswith("expected an indented block after function")
    assert "indent" in (by["noblock"].hint or "")
    assert (by["unindent"].line, by["unindent"].code) == (3, "indentation-error")
    assert "tabs and spaces" in (by["unindent"].hint or "")
    assert (by["extra"].line, by["extra"].message) == (2, "unexpected indent")
    assert (by["tabs"].line, by["tabs"].code) == (3, "tab-error")
    assert by["tabs"].hint == "indent with spaces only (4 per level)"


def test_other_compile_errors(compiler: ComponentRef, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "ret.py").write_text("x = 1\nreturn x\n")  # a symbol-table error
    (app / "nul.py").write_bytes(b"x = 1\x00\n")
    (app / "enc.py").write_bytes(b"x = 1\ny = '\xff\xfe'\n")
    r = compile_app(compiler, app)
    by = {Path(d.file).stem: d for d in r.errors}
    assert (by["ret"].line, by["ret"].message) == (2, "'return' outside function")
    assert by["nul"].code == "syntax-error" and "null bytes" in by["nul"].message
    assert (by["enc"].line, by["enc"].col, by["enc"].code) == (2, 6, "encoding-error")


def test_unknown_import_is_a_warning_with_a_hint(compiler: ComponentRef, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {
        "m.py": (
            "import os, json\n"
            "import helper\n"
            "import jsonn\n"
            "from totally_missing_pkg import thing\n"
            "try:\n    import optional_missing_pkg\nexcept ImportError:\n    pass\n"
            "import pytest\n"                       # installed in this environment
            "import importlib\nimportlib.import_module('dyn_missing')\n"
            "import helper.nothere\n"
        ),
        "helper.py": "",
    })
    r = compile_app(compiler, app)
    assert r.ok and sorted(r.modules) == ["helper", "m"]  # warnings do not block
    got = {(w.line, w.col, w.code, w.message) for w in r.warnings}
    assert got == {
        (3, 1, "unknown-import", "no module named 'jsonn' in the app or installed"),
        (4, 1, "unknown-import", "no module named 'totally_missing_pkg' in the app or installed"),
        (11, 1, "unknown-import", "no module named 'dyn_missing' in the app or installed"),
        (12, 1, "unknown-import", "no module named 'helper.nothere' in the app or installed"),
    }
    jsonn = next(w for w in r.warnings if "jsonn" in w.message)
    assert jsonn.severity == "warning" and "did you mean 'json'" in (jsonn.hint or "")
    assert "install" in (jsonn.hint or "")


def test_dependency_analysis_of_every_import_form(compiler: ComponentRef, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {
        "main.py": (
            "import os\n"
            "import plain\n"
            "import pkg.sub.deep as deep\n"
            "from pkg import mod\n"                  # a submodule by from-import
            "from pkg.util import helper_fn\n"
            "import importlib\n"
            "def later():\n"
            "    return importlib.import_module('lazy')\n"
            "x = __import__('dunder')\n"
        ),
        "plain.py": "",
        "lazy.py": "from importlib import import_module\nm = import_module('.mod', 'pkg')\n",
        "dunder.py": "",
        "pkg/__init__.py": "from . import mod\nfrom .util import helper_fn\n",
        "pkg/mod.py": "from . import util\n",
        "pkg/util.py": "import importlib\nimportlib.import_module('.sub', __package__)\n"
                       "def helper_fn(): pass\n",
        "pkg/sub/__init__.py": "from ..mod import *\n",
        "pkg/sub/deep.py": "from ... import nothing\nfrom .. import util\n",
    })
    r = compile_app(compiler, app)
    deps = {name: m.dependencies for name, m in r.modules.items()}
    assert deps == {
        "main": ("dunder", "lazy", "pkg", "pkg.mod", "pkg.sub", "pkg.sub.deep", "pkg.util",
                 "plain"),
        "plain": (),
        "lazy": ("pkg", "pkg.mod"),
        "dunder": (),
        "pkg": ("pkg.mod", "pkg.util"),
        "pkg.mod": ("pkg", "pkg.util"),
        "pkg.util": ("pkg", "pkg.sub"),
        "pkg.sub": ("pkg", "pkg.mod"),
        "pkg.sub.deep": ("pkg", "pkg.util"),
    }
    # "from ... import nothing" in pkg.sub.deep climbs above the top-level package
    (bad,) = [w for w in r.warnings if w.code == "bad-relative-import"]
    assert (Path(bad.file).name, bad.line) == ("deep.py", 1)


# -- isolation: timeouts and limits ----------------------------------------------------

class Pinger(Component):
    def op_ping(self) -> str:
        return "pong"


def test_runaway_compile_is_killed_within_its_timeout(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    compiler = start_compiler(timeout=1.0)
    # modules compile in name order: z_fine after slow, on the replacement worker
    app = write(tmp_path / "app", {"slow.py": SLOW_SOURCE, "z_fine.py": "X = 1\n"})
    compile_app(compiler, write(tmp_path / "warm", {"w.py": ""}))  # worker up
    first_pid = compiler.invoke("status")["worker_pid"]
    started = threading.Event()
    telemetry.attach("t-start", "compile.start", lambda e, m, md: started.set())
    out: dict[str, Any] = {}

    def compile_in_background() -> None:
        out["result"] = compile_app(compiler, app)

    worker = threading.Thread(target=compile_in_background)
    pinger = Pinger.start()
    try:
        worker.start()
        wait_for(started, timeout=10)
        # the host stays responsive while the worker grinds: the ping is answered
        # before the compile ends (its order, not a clock, is the check)
        assert pinger.invoke("ping") == "pong"
        assert worker.is_alive() and "result" not in out
        worker.join(30)
    finally:
        telemetry.detach("t-start")
        pinger.stop()
    assert not worker.is_alive()  # ended by the 1 s timeout, not by the ~25 s compile
    r = out["result"]
    (err,) = r.errors
    assert (err.code, err.file, r.failed) == ("timeout", str(app / "slow.py"), ["slow"])
    assert "1s" in err.message and err.hint
    assert sorted(r.modules) == ["z_fine"]  # the next module compiled on a new worker
    status = compiler.invoke("status")
    assert status["worker_pid"] not in (None, first_pid) and status["workers_started"] == 2
    assert not process_alive(first_pid)
    nxt = compiler.invoke("compile_file", app / "z_fine.py")
    assert nxt.ok and nxt.cached == ["z_fine"]


def test_stop_during_a_long_compile_kills_the_worker_promptly(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    compiler = start_compiler(timeout=40)  # longer than stop()'s 5 s grace period
    app = write(tmp_path / "app", {"slow.py": SLOW_SOURCE})
    started = threading.Event()
    telemetry.attach("t-start2", "compile.start", lambda e, m, md: started.set())
    out: dict[str, Any] = {}

    def compile_in_background() -> None:
        try:
            compile_app(compiler, app)
        except Exception as exc:
            out["error"] = exc

    caller = threading.Thread(target=compile_in_background)
    try:
        caller.start()
        wait_for(started, timeout=10)
        # "shutdown", not "killed": it stopped within stop()'s grace period, its
        # thread was not abandoned mid-compile
        reason = compiler.stop()
        assert reason.kind == "shutdown"
        caller.join(10)
    finally:
        telemetry.detach("t-start2")
    assert not caller.is_alive()
    assert isinstance(out["error"], CompileError) and "stopping" in str(out["error"])
    # the fixture's leak check proves the worker process is gone


def test_memory_limit_is_reported_and_the_worker_replaced(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    compiler = start_compiler(memory_limit=256 << 20, timeout=30)
    app = write(tmp_path / "app", {"huge.py": HUGE_SOURCE})
    r = compile_app(compiler, app)
    (err,) = r.errors
    assert err.code == "limit" and r.failed == ["huge"]
    ok = compile_app(compiler, write(tmp_path / "app2", {"m.py": "X = 1\n"}))
    assert ok.ok and run(ok.modules["m"])["X"] == 1
    assert compiler.invoke("status")["workers_started"] == 2


def test_cpu_limit_kills_the_worker(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    compiler = start_compiler(cpu_limit=1, timeout=30)
    app = write(tmp_path / "app", {"slow.py": SLOW_SOURCE})
    r = compile_app(compiler, app)
    (err,) = r.errors
    assert err.code == "limit" and "CPU" in err.message  # not "timeout": the 1 s CPU limit
    assert compile_app(compiler, write(tmp_path / "app2", {"m.py": ""})).ok


def test_a_worker_killed_from_outside_is_replaced(compiler: ComponentRef, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"m.py": "X = 1\n"})
    compile_app(compiler, app)
    pid = compiler.invoke("status")["worker_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=10)
    (app / "m.py").write_text("X = 2\n")
    r = compile_app(compiler, app)
    assert r.ok and run(r.modules["m"])["X"] == 2
    assert compiler.invoke("status")["workers_started"] == 2


# -- the security hook -----------------------------------------------------------------

class RecordingScanner:
    """Appends every call to a file: the scanner runs in the worker process."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, source: bytes, filename: str, profile: str) -> list[Diagnostic]:
        with open(self.log, "a") as f:
            f.write(json.dumps([filename, profile, hashlib.sha256(source).hexdigest()]) + "\n")
        out = []
        for n, line in enumerate(source.decode().splitlines(), 1):
            if "eval(" in line:
                out.append(Diagnostic(filename, n, line.index("eval(") + 1, "error", "S101",
                                      "call to eval() is forbidden", "don't"))
            if "# todo" in line:
                out.append({"file": filename, "lineno": n, "severity": "warning",
                            "rule_id": "S900", "message": "todo left"})
        return out

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines()]


def test_scanner_is_called_for_every_module_and_its_errors_block(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    scanner = RecordingScanner(tmp_path / "scans.log")
    compiler = start_compiler(scanner=scanner)
    files = {f"m{i}.py": f"X = {i}\n" for i in range(20)}
    files["pkg/__init__.py"] = ""
    files["pkg/evil.py"] = "X = 1\nY = eval('2')\n"
    files["noted.py"] = "X = 1  # todo\n"
    app = write(tmp_path / "app", files)
    r = compile_app(compiler, app, profile="high")
    calls = scanner.calls()
    assert sorted(c[0] for c in calls) == sorted(str(app / f) for f in files)
    assert {c[1] for c in calls} == {"high"}
    for c in calls:
        assert c[2] == hashlib.sha256((app / Path(c[0]).relative_to(app)).read_bytes()).hexdigest()
    assert r.failed == ["pkg.evil"] and "pkg.evil" not in r.modules
    (err,) = r.errors
    assert (err.file, err.line, err.col, err.code) == (str(app / "pkg/evil.py"), 2, 5, "S101")
    (warn,) = r.warnings
    assert (warn.code, warn.line, warn.severity) == ("S900", 1, "warning")
    assert "noted" in r.modules
    # unchanged modules are not rescanned (nor recompiled); the blocked one stays blocked
    again = compile_app(compiler, app, profile="high")
    assert len(scanner.calls()) == len(calls)
    assert again.failed == ["pkg.evil"] and len(again.cached) == len(files) - 1


@dataclasses.dataclass(frozen=True)
class StrictProfile:
    """Stands in for a custom security profile object."""

    name: str
    banned: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "banned": list(self.banned)}


def _profile_scanner(source: bytes, filename: str, profile: Any) -> list[dict[str, Any]]:
    banned = profile.banned if isinstance(profile, StrictProfile) else ()
    return [{"line": 1, "col": 1, "code": "S200", "message": f"{word} is banned"}
            for word in banned if word.encode() in source]


def test_a_profile_object_reaches_the_scanner_and_keys_the_cache(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    compiler = start_compiler(scanner=_profile_scanner)
    app = write(tmp_path / "app", {"m.py": "import socket\n"})
    assert compile_app(compiler, app, profile="medium").ok
    strict = StrictProfile("strict", ("socket",))
    r = compile_app(compiler, app, profile=strict)
    assert r.profile == "strict" and [e.code for e in r.errors] == ["S200"]
    looser = StrictProfile("strict", ("ctypes",))  # same name, other rules: other key
    assert compile_app(compiler, app, profile=looser).recompiled == ["m"]
    assert compile_app(compiler, app, profile=strict).failed == ["m"]


class TreeScanner(RecordingScanner):
    """Takes the worker's parsed tree (``accepts_tree``) and logs what it was given."""

    accepts_tree = True

    def __call__(self, source: bytes, filename: str, profile: str,
                 tree: Any = None) -> list[Diagnostic]:
        with open(self.log, "a") as f:
            f.write(json.dumps([filename, type(tree).__name__,
                                ast.dump(tree) == ast.dump(ast.parse(source))]) + "\n")
        return [Diagnostic(filename, n.lineno, n.col_offset + 1, "error", "S101", "eval", None)
                for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "eval"]


def test_a_scanner_that_accepts_the_tree_is_given_the_parsed_module(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    scanner = TreeScanner(tmp_path / "scans.log")
    compiler = start_compiler(scanner=scanner)
    app = write(tmp_path / "app", {"ok.py": "X = 1\n", "bad.py": "X = 1\nY = eval('2')\n"})
    r = compile_app(compiler, app, profile="high")
    assert sorted(scanner.calls()) == sorted(
        [[str(app / "ok.py"), "Module", True], [str(app / "bad.py"), "Module", True]])
    assert r.failed == ["bad"] and [(e.line, e.col) for e in r.errors] == [(2, 5)]
    assert list(r.modules) == ["ok"]


def _crashing_scanner(source: bytes, filename: str, profile: str) -> list[Any]:
    raise RuntimeError("rule table missing")


def test_a_crashing_scanner_fails_closed(
    start_compiler: Callable[..., ComponentRef], tmp_path: Path
) -> None:
    compiler = start_compiler(scanner=_crashing_scanner)
    r = compile_app(compiler, write(tmp_path / "app", {"m.py": "X = 1\n"}))
    (err,) = r.errors
    assert err.code == "scanner-error" and "rule table missing" in err.message
    assert r.modules == {}


def test_an_unpicklable_scanner_is_refused_at_start() -> None:
    lock = threading.Lock()
    with pytest.raises(ConfigError, match="picklable"):
        CompilerActor.start(scanner=lambda s, f, p: [lock])
    with pytest.raises(ConfigError):
        CompilerActor.start(timeout=0)


# -- validation, telemetry -------------------------------------------------------------

def test_compiled_module_validates_magic_checksum_and_type() -> None:
    code = marshal.dumps(compile("X = 1", "m.py", "exec"))
    good = CompiledModule.build("m", "m.py", b"X = 1", code)
    assert good.code_object().co_filename == "m.py"
    with pytest.raises(CompileError, match="another Python"):
        dataclasses.replace(good, magic=b"\x00\x00\r\n").code_object()
    with pytest.raises(CompileError, match="checksum"):
        dataclasses.replace(good, code=good.code[:-1] + bytes([good.code[-1] ^ 1])).code_object()
    not_code = marshal.dumps({"a": 1})
    with pytest.raises(CompileError, match="not code"):
        CompiledModule.build("m", "m.py", b"", not_code).code_object()


def test_compile_emits_a_span_with_counts(compiler: ComponentRef, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"a.py": "", "b.py": ""})
    events: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    telemetry.attach("t-span", "compile", lambda e, m, md: events.append((e, dict(m), dict(md))))
    try:
        compile_app(compiler, app)
        compile_app(compiler, app)
    finally:
        telemetry.detach("t-span")
    stops = [(m, md) for e, m, md in events if e == "compile.stop"]
    assert [md["cached"] for _, md in stops] == [0, 2]
    assert all(md["path"] == str(app) and md["modules"] == 2 for _, md in stops)
    assert all(m["duration"] > 0 for m, _ in stops)
    assert [e for e, _, _ in events].count("compile.start") == 2


def test_diagnostic_round_trip_and_format() -> None:
    d = Diagnostic("a.py", 3, 4, "warning", "unknown-import", "no module", "install it")
    assert Diagnostic.from_dict(d.to_dict()) == d
    assert d.format() == "a.py:3:4: unknown-import no module\n    hint: install it"
    odd = Diagnostic.coerce({"message": "x", "severity": "catastrophic"}, "f.py")
    assert odd.severity == "error" and odd.file == "f.py"


def test_imports_found_by_walking_statements_only_are_those_of_the_whole_tree() -> None:
    """A module naming neither import_module nor __import__ has only import statements:
    walking statements (not expressions) finds the same records, in the same order."""
    import ast

    from actors.importscan import extract_imports

    source = (
        "import a\n"
        "try:\n    import b\nexcept ImportError:\n    from c import d\n"
        "def f():\n    class K:\n        from .e import g\n    return [x for x in (1, 2)]\n"
        "match f():\n    case 1:\n        import h\n"
        "with open('x') as fh:\n    if fh:\n        import i.j as k\n"
    )
    tree = ast.parse(source)
    found = extract_imports(tree, source)
    assert found == extract_imports(tree)
    assert [r["module"] for r in found] == ["a", "b", "c", "e", "h", "i.j"]
    assert [r["guarded"] for r in found][:3] == [False, True, False]
    dynamic = "import importlib\nm = importlib.import_module('x')\n"
    assert [r["kind"] for r in extract_imports(ast.parse(dynamic), dynamic)] == ["import", "dynamic"]
