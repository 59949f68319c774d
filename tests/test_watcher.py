"""The file watcher and auto-reload (issue 5): save a file, the running sandbox has the new code.

Real inotify, real files, real sandboxes (``examples/counter`` copied to a temporary
directory). Nothing sleeps: every wait is on telemetry (``helpers.Recorder.wait``,
``sandbox.testing.wait_for``), a queue or an event.

A few tests drive the watcher actor alone with an injected reload callback, for
what a real sandbox cannot show on demand (a transient failure, no inotify, the
watch limit).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import Recorder, wait_for

import runtime
from actors.watcher import WatcherActor, WatchError, WatchSpec
from runtime.errors import CompileError, SandboxNotFound

pytestmark = pytest.mark.timeout(90)

#: Seconds to wait for the watcher's events (a cold compile worker on a loaded machine).
WAIT = 20.0
REPO = Path(__file__).resolve().parent.parent
COUNTER = REPO / "examples" / "counter"

COUNTER_SOURCE = """\
from runtime.genserver import GenServer


class Counter(GenServer):
    vsn = {vsn}

    def init(self, start=0):
        return start

    def handle_call(self, request, state):
        if request == "get":
            return state, state
        if request == "which":
            return {tag!r}, state
        if request == "incr":
            return state + {step}, state + {step}
        if isinstance(request, (list, tuple)) and request and request[0] == "add":
            return state + request[1], state + request[1]
        raise ValueError(f"unknown request {{request!r}}")

    def handle_cast(self, request, state):
        return state
"""

BROKEN = COUNTER_SOURCE.format(vsn=9, tag="broken", step=0).replace(
    "    def handle_cast(self, request, state):", "    def handle_cast(self, request, state:"
)


def counter_v(n: int, *, step: int = 10) -> str:
    return COUNTER_SOURCE.format(vsn=n + 1, tag=f"v{n}", step=step)


@pytest.fixture
def counter_app(tmp_path) -> Path:
    """A fresh copy of examples/counter (no __pycache__)."""
    target = tmp_path / "counter"
    shutil.copytree(COUNTER, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def reload_events(rec: Recorder, sandbox_id: str) -> list[str]:
    names = ("watcher.reload.start", "watcher.reload.stop", "watcher.reload.exception",
             "sandbox.reload.start", "sandbox.reload.stop", "sandbox.reload.exception")
    with rec._lock:
        events = list(rec.events)
    return [e.name for e in events if e.name in names and e.metadata.get("sandbox") == sandbox_id]


def assert_serial(names: list[str], prefix: str) -> None:
    """Spans under ``prefix`` strictly alternate start, end, start, end: never two at once."""
    seq = [n for n in names if n.startswith(prefix + ".")]
    for i, name in enumerate(seq):
        expect_start = i % 2 == 0
        assert name.endswith(".start") is expect_start, f"overlapping reloads: {seq}"
    assert len(seq) % 2 == 0, f"unfinished reload: {seq}"


# -- saving a module -------------------------------------------------------------------


def save_plain(path: Path, text: str) -> None:
    path.write_text(text)


def save_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside it, then rename it over the original (most editors)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_atomic_from_outside(path: Path, text: str) -> None:
    """The temporary file lives in another (unwatched) directory of the same filesystem."""
    outside = path.parent.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    tmp = outside / path.name
    tmp.write_text(text)
    os.replace(tmp, path)


def save_vim_style(path: Path, text: str) -> None:
    """vim with backupcopy=no: rename the original to a backup, write anew, drop the backup."""
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(text)
    backup.unlink()


@pytest.mark.parametrize(
    "save", [save_plain, save_atomic, save_atomic_from_outside, save_vim_style],
    ids=["plain-write", "atomic-rename", "rename-from-outside", "vim-backup"],
)
def test_a_save_reloads_the_running_sandbox_keeping_its_state(
    sandbox_factory, counter_app, save
):
    sb = sandbox_factory(counter_app, auto_reload=True)
    assert sb.info()["auto_reload"] is True
    assert sb.call("counter", ("add", 5)) == 5
    assert sb.call("counter", "incr") == 6  # old code: +1
    with Recorder("") as rec:
        save(counter_app / "counter.py", counter_v(2))
        change, = rec.wait("watcher.change", sandbox=sb.id, timeout=WAIT)
        assert change.metadata["files"] == ["counter.py"]
        stop, = rec.wait("watcher.reload.stop", sandbox=sb.id, timeout=WAIT)
    assert stop.metadata["changed"] == ["counter"] and stop.metadata["versions"] == {"counter": 2}
    assert sb.call("counter", "which") == "v2"
    assert sb.call("counter", "get") == 6, "the state came through the reload"
    assert sb.call("counter", "incr") == 16  # new code: +10
    status = sb.runtime.reload_status(sb.id)
    assert status["ok"] and status["changed"] == ["counter"]
    assert status["versions"] == {"counter": 2}
    assert status["at"] > 0 and status["duration"] > 0
    watch = sb.watch_status()
    assert watch["auto_reload"] and watch["watching"]
    assert watch["watch"]["reloads"] == 1 and watch["watch"]["failures"] == 0
    assert watch["last_reload"]["versions"] == {"counter": 2}


def test_a_touch_or_same_bytes_causes_no_new_version(sandbox_factory, counter_app):
    sb = sandbox_factory(counter_app, auto_reload=True)
    sb.call("counter", ("add", 3))
    source = counter_app / "counter.py"
    before = sb.module_versions()
    with Recorder("watcher") as rec:
        # GNU touch opens the file for writing and closes it: an IN_CLOSE_WRITE
        subprocess.run(["touch", str(source)], check=True)
        rec.wait("watcher.unchanged", 1, sandbox=sb.id, timeout=WAIT)
        source.write_bytes(source.read_bytes())  # an editor saving without a change
        rec.wait("watcher.unchanged", 2, sandbox=sb.id, timeout=WAIT)
        assert not rec.named("watcher.change") and not rec.named("watcher.reload.start")
    assert sb.module_versions() == before
    assert sb.runtime.reload_status(sb.id) is None, "no reload happened"
    assert sb.call("counter", "get") == 3
    assert sb.watch_status()["watch"]["unchanged"] == 2


def test_a_burst_of_50_saves_is_one_or_two_reloads_never_concurrent(sandbox_factory, counter_app):
    sb = sandbox_factory(counter_app)
    # The writer's pace is the scheduler's: on a loaded machine it pauses for more
    # than the default 20 ms between saves, and each pause is a legitimate reload.
    # A debounce well above such pauses keeps the 50 saves one burst.
    sb.enable_auto_reload(debounce=0.5)
    sb.call("counter", ("add", 7))
    source = counter_app / "counter.py"
    with Recorder("") as rec:
        for i in range(1, 51):
            source.write_text(counter_v(i))

        def final_code_live():
            if not rec.named("watcher.reload.stop", sandbox=sb.id):
                return False
            if reload_events(rec, sb.id)[-1] != "watcher.reload.stop":
                return False  # a follow-up is running: wait for it
            return sb.call("counter", "which") == "v50"

        wait_for(final_code_live, 30, message="the 50th save never went live")
        names = reload_events(rec, sb.id)
    reloads = names.count("watcher.reload.start")
    assert 1 <= reloads <= 2, names
    assert_serial(names, "watcher.reload")
    assert_serial(names, "sandbox.reload")
    assert not rec.named("watcher.reload.failed")
    assert sb.call("counter", "get") == 7
    assert sb.call("counter", "incr") == 17


def test_broken_save_keeps_the_old_code_then_the_fix_goes_live(
    sandbox_factory, counter_app, caplog
):
    sb = sandbox_factory(counter_app, auto_reload=True)
    sb.call("counter", ("add", 40))
    source = counter_app / "counter.py"
    with Recorder("") as rec, caplog.at_level(logging.WARNING, logger="runtime.watcher"):
        source.write_text(BROKEN)
        failed, = rec.wait("watcher.reload.failed", sandbox=sb.id, timeout=WAIT)
        assert failed.metadata["kind"] == "CompileError"
        line = BROKEN.splitlines().index("    def handle_cast(self, request, state:") + 1
        diag = failed.metadata["diagnostics"]
        assert any(f"{source}:{line}:" in d for d in diag), diag
        assert f"{source}:{line}:" in caplog.text, "a log line names file:line"
        assert failed.metadata["attempts"] == 1, "no retry for a compile error"

        # In between, the old code serves with its state.
        assert sb.call("counter", "incr") == 41
        status = sb.runtime.reload_status(sb.id)
        assert status["ok"] is False and "CompileError" in status["error"]
        assert any(f"{line}:" in d for d in status["diagnostics"])
        assert sb.watch_status()["watch"]["failures"] == 1

        source.write_text(counter_v(2))
        rec.wait("watcher.reload.stop", sandbox=sb.id, timeout=WAIT)
    assert sb.call("counter", "which") == "v2"
    assert sb.call("counter", "incr") == 51
    assert sb.runtime.reload_status(sb.id)["ok"] is True


def test_two_sandboxes_from_two_directories_reload_independently(sandbox_factory, tmp_path):
    dirs = []
    for name in ("one", "two"):
        d = tmp_path / name
        shutil.copytree(COUNTER, d, ignore=shutil.ignore_patterns("__pycache__"))
        dirs.append(d)
    a = sandbox_factory(dirs[0], auto_reload=True)
    b = sandbox_factory(dirs[1], auto_reload=True)
    a.call("counter", ("add", 1))
    b.call("counter", ("add", 2))
    with Recorder("") as rec:
        (dirs[0] / "counter.py").write_text(counter_v(2))
        rec.wait("watcher.reload.stop", sandbox=a.id, timeout=WAIT)
        (dirs[1] / "counter.py").write_text(counter_v(3))
        rec.wait("watcher.reload.stop", sandbox=b.id, timeout=WAIT)
        # b's own reload came after a's: had a's change reached b, it would show by now.
        assert len(rec.named("watcher.change", sandbox=a.id)) == 1
        assert len(rec.named("watcher.change", sandbox=b.id)) == 1
        assert len(rec.named("sandbox.reload.start", sandbox=a.id)) == 1
        assert len(rec.named("sandbox.reload.start", sandbox=b.id)) == 1
    assert (a.call("counter", "which"), a.call("counter", "get")) == ("v2", 1)
    assert (b.call("counter", "which"), b.call("counter", "get")) == ("v3", 2)


def test_two_sandboxes_of_one_directory_both_reload(sandbox_factory, counter_app):
    a = sandbox_factory(counter_app, auto_reload=True)
    b = sandbox_factory(counter_app, auto_reload=True)
    with Recorder("watcher") as rec:
        (counter_app / "counter.py").write_text(counter_v(2))
        rec.wait("watcher.reload.stop", sandbox=a.id, timeout=WAIT)
        rec.wait("watcher.reload.stop", sandbox=b.id, timeout=WAIT)
    assert a.call("counter", "which") == b.call("counter", "which") == "v2"
    a.destroy()  # b keeps its watch of the shared directory
    with Recorder("watcher") as rec:
        (counter_app / "counter.py").write_text(counter_v(3))
        rec.wait("watcher.reload.stop", sandbox=b.id, timeout=WAIT)
    assert b.call("counter", "which") == "v3"


def test_the_watcher_killed_is_restarted_and_the_next_save_reloads(
    sandbox_runtime, sandbox_factory, counter_app
):
    rt = sandbox_runtime
    sb = sandbox_factory(counter_app, auto_reload=True)
    sb.call("counter", ("add", 11))
    watcher = rt.component("watcher")
    assert watcher.invoke("watched") == [sb.id]
    watcher.kill(runtime.ExitReason("exception", "killed by the test"))
    wait_for(lambda: rt.component("watcher") != watcher, 10, message="watcher not restarted")
    new = rt.component("watcher")
    assert new.invoke("watched") == [sb.id], "the watch was re-established from the slot"
    with Recorder("watcher") as rec:
        (counter_app / "counter.py").write_text(counter_v(2))
        rec.wait("watcher.reload.stop", sandbox=sb.id, timeout=WAIT)
    assert sb.call("counter", "which") == "v2" and sb.call("counter", "get") == 11
    assert rt.list_sandboxes()[0]["status"] == "running"


def test_destroying_a_sandbox_removes_its_watch(sandbox_runtime, sandbox_factory, counter_app):
    sb = sandbox_factory(counter_app, auto_reload=True)
    watcher = sandbox_runtime.component("watcher")
    assert watcher.invoke("watched") == [sb.id]
    with Recorder("watcher.unwatch") as rec:
        sb.destroy()
        assert rec.named("watcher.unwatch", sandbox=sb.id)
    assert watcher.invoke("watched") == []
    assert watcher.invoke("status")["watched"] == []


def test_enable_and_disable_auto_reload(sandbox_runtime, sandbox_factory, counter_app):
    sb = sandbox_factory(counter_app)
    assert sb.info()["auto_reload"] is False and sb.watch_status()["watching"] is False
    status = sb.enable_auto_reload(debounce=0.01)
    assert status["watching"] and status["files"] == 2 and status["debounce"] == 0.01
    assert sb.info()["auto_reload"] is True and sb.info()["watch"]["debounce"] == 0.01
    with Recorder("watcher") as rec:
        (counter_app / "counter.py").write_text(counter_v(2))
        rec.wait("watcher.reload.stop", sandbox=sb.id, timeout=WAIT)
    assert sb.call("counter", "which") == "v2"
    assert sb.disable_auto_reload() is True
    assert sb.info()["auto_reload"] is False
    assert sandbox_runtime.component("watcher").invoke("watched") == []
    assert sb.disable_auto_reload() is False


def test_the_file_cap_gives_a_clear_error(sandbox_runtime, counter_app):
    rt = sandbox_runtime
    with pytest.raises(WatchError, match=r"more than 1 files matching \*\.py.*max_files"):
        rt.create_sandbox("capped", counter_app, auto_reload=True, watch={"max_files": 1})
    assert rt.list_sandboxes() == [], "a failed creation leaves nothing behind"
    sb = rt.create_sandbox("uncapped", counter_app)
    with pytest.raises(WatchError, match="max_files=1"):
        sb.enable_auto_reload(max_files=1)
    assert sb.info()["auto_reload"] is False
    assert rt.component("watcher").invoke("watched") == []
    with pytest.raises(runtime.ConfigError, match="watch.debounce"):
        sb.enable_auto_reload(debounce=-1)
    sb.destroy()


def test_new_and_deleted_modules_are_part_of_the_batch(sandbox_factory, counter_app):
    sb = sandbox_factory(counter_app, auto_reload=True)
    with Recorder("watcher") as rec:
        (counter_app / "helper.py").write_text("VALUE = 1\n")
        change, = rec.wait("watcher.change", sandbox=sb.id, timeout=WAIT)
        assert change.metadata["files"] == ["helper.py"]
        rec.wait("watcher.reload.stop", sandbox=sb.id, timeout=WAIT)
        (counter_app / "helper.py").unlink()
        changes = rec.wait("watcher.change", 2, sandbox=sb.id, timeout=WAIT)
        assert changes[1].metadata["files"] == ["helper.py"]
        rec.wait("watcher.reload.stop", 2, sandbox=sb.id, timeout=WAIT)
        # Swap files, backups and __pycache__ never start anything.
        (counter_app / ".counter.py.swp").write_text("swap")
        (counter_app / "counter.py~").write_text("backup")
        (counter_app / "__pycache__").mkdir(exist_ok=True)
        (counter_app / "__pycache__" / "x.py").write_text("x = 1\n")
        (counter_app / "counter.py").write_text(counter_v(2))  # the marker that all was seen
        changes = rec.wait("watcher.change", 3, sandbox=sb.id, timeout=WAIT)
        assert changes[2].metadata["files"] == ["counter.py"]
        rec.wait("watcher.reload.stop", 3, sandbox=sb.id, timeout=WAIT)
    assert sb.call("counter", "which") == "v2"


# -- the watcher actor alone, with an injected reload ------------------------------------


class Reloads:
    """An injected reload callback: records calls, can fail or block on demand."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.failures = list(failures or [])
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def __call__(self, sandbox_id: str, files: list[str]) -> dict:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append((sandbox_id, sorted(os.path.basename(f) for f in files)))
        try:
            self.entered.set()
            if self.gate is not None:
                assert self.gate.wait(20)
            if self.failures:
                raise self.failures.pop(0)
            return {"ok": True}
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def watched_dir(tmp_path) -> Path:
    d = tmp_path / "app"
    d.mkdir()
    (d / "m.py").write_text("x = 1\n")
    (d / "n.py").write_text("y = 1\n")
    return d


@pytest.fixture
def start_watcher():
    refs = []

    def start(**options):
        ref = WatcherActor.start(runtime_id="unit", name="unit-watcher", **options)
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        ref.stop()


def test_transient_failures_are_retried_with_backoff(start_watcher, watched_dir):
    reloads = Reloads([FileNotFoundError("m.py vanished"), FileNotFoundError("m.py vanished")])
    ref = start_watcher(reload=reloads, retry_base=0.001)
    ref.invoke("watch", "sb", watched_dir)
    with Recorder("watcher") as rec:
        (watched_dir / "m.py").write_text("x = 2\n")
        stop, = rec.wait("watcher.reload.stop", sandbox="sb", timeout=WAIT)
        retries = rec.named("watcher.reload.retry", sandbox="sb")
    assert [r.measurements["attempt"] for r in retries] == [1, 2]
    assert [r.measurements["delay"] for r in retries] == [0.001, 0.002]
    assert stop.metadata["attempts"] == 3 and len(reloads.calls) == 3


def test_a_compile_error_is_not_retried_and_the_next_save_reloads(start_watcher, watched_dir):
    reloads = Reloads([CompileError("bad", [])])
    ref = start_watcher(reload=reloads)
    ref.invoke("watch", "sb", watched_dir)
    with Recorder("watcher") as rec:
        (watched_dir / "m.py").write_text("x = (\n")
        failed, = rec.wait("watcher.reload.failed", sandbox="sb", timeout=WAIT)
        assert failed.metadata["attempts"] == 1 and not rec.named("watcher.reload.retry")
        # The same bytes again: after a failure that counts as a change (try again).
        (watched_dir / "m.py").write_text("x = (\n")
        rec.wait("watcher.reload.stop", sandbox="sb", timeout=WAIT)
    assert len(reloads.calls) == 2


def test_a_save_during_a_reload_queues_one_follow_up(start_watcher, watched_dir):
    reloads = Reloads()
    reloads.gate = threading.Event()
    ref = start_watcher(reload=reloads)
    ref.invoke("watch", "sb", watched_dir)
    with Recorder("watcher") as rec:
        (watched_dir / "m.py").write_text("x = 2\n")
        assert reloads.entered.wait(10)
        for i in range(3, 8):  # five more batches while the first reload runs
            (watched_dir / "n.py").write_text(f"y = {i}\n")
            rec.wait("watcher.change", i - 1, sandbox="sb", timeout=WAIT)
        assert ref.invoke("status", "sb")["follow_up"] == [str(watched_dir / "n.py")]
        reloads.gate.set()
        rec.wait("watcher.reload.stop", 2, sandbox="sb", timeout=WAIT)
    assert reloads.calls == [("sb", ["m.py"]), ("sb", ["n.py"])]
    assert reloads.max_active == 1


class FakeInotifyObserver:
    """An inotify observer out of watches: every schedule fails like inotify_add_watch."""

    def start(self):
        pass

    def stop(self):
        pass

    def join(self, timeout=None):
        pass

    def schedule(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


def _polling_or(fake):
    from actors.watcher import _default_observer

    def factory(kind, interval):
        if kind == "inotify":
            return fake()
        return _default_observer("polling", interval)

    return factory


def test_watch_limit_reached_falls_back_to_polling(start_watcher, watched_dir, caplog):
    reloads = Reloads()
    ref = start_watcher(reload=reloads, poll_interval=0.05,
                        observer_factory=_polling_or(FakeInotifyObserver))
    with Recorder("watcher") as rec, caplog.at_level(logging.WARNING, logger="runtime.watcher"):
        status = ref.invoke("watch", "sb", watched_dir)
        assert status["backend"] == "polling"
        assert rec.named("watcher.fallback", sandbox="sb")
        assert "inotify watch limit reached" in caplog.text and "max_user_watches" in caplog.text
        (watched_dir / "m.py").write_text("x = 22\n")
        rec.wait("watcher.reload.stop", sandbox="sb", timeout=WAIT)
    assert reloads.calls == [("sb", ["m.py"])]
    assert ref.invoke("status")["polling_fallback"] == [str(watched_dir)]


def test_no_inotify_at_all_falls_back_to_polling(start_watcher, watched_dir, caplog):
    def broken():
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    reloads = Reloads()
    with caplog.at_level(logging.WARNING, logger="runtime.watcher"):
        ref = start_watcher(reload=reloads, poll_interval=0.05,
                            observer_factory=_polling_or(broken))
    assert "inotify is unavailable" in caplog.text
    assert ref.invoke("status")["backend"] == "polling"
    ref.invoke("watch", "sb", watched_dir)
    with Recorder("watcher") as rec:
        (watched_dir / "n.py").write_text("y = 22\n")
        rec.wait("watcher.reload.stop", sandbox="sb", timeout=WAIT)
    assert reloads.calls == [("sb", ["n.py"])]


def test_watching_a_missing_directory_is_a_clear_error(start_watcher, tmp_path):
    ref = start_watcher(reload=Reloads())
    with pytest.raises(WatchError, match="is not a directory"):
        ref.invoke("watch", "sb", tmp_path / "nope")
    assert ref.is_alive()


def test_a_directory_moved_away_counts_its_modules_as_deleted(start_watcher, watched_dir):
    pkg = watched_dir / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("z = 1\n")
    reloads = Reloads()
    ref = start_watcher(reload=reloads)
    ref.invoke("watch", "sb", watched_dir)
    with Recorder("watcher") as rec:
        os.rename(pkg, watched_dir.parent / "pkg-away")
        rec.wait("watcher.reload.stop", sandbox="sb", timeout=WAIT)
    assert reloads.calls == [("sb", ["__init__.py", "mod.py"])]


def test_a_new_empty_file_waits_for_its_writer_to_close_it(start_watcher, watched_dir):
    reloads = Reloads()
    ref = start_watcher(reload=reloads, create_grace=30.0)  # no expiry on a loaded machine
    ref.invoke("watch", "sb", watched_dir)
    new = watched_dir / "new.py"
    with Recorder("watcher") as rec:
        with open(new, "w") as f:  # IN_CREATE now; IN_CLOSE_WRITE only when closed
            wait_for(lambda: ref.invoke("status", "sb")["held"] == [str(new)], WAIT,
                     message="the created file was not held")
            f.write("z = 1\n")
        rec.wait("watcher.reload.stop", sandbox="sb", timeout=WAIT)
    assert reloads.calls == [("sb", ["new.py"])], "one reload, of the finished file"
    assert ref.invoke("status", "sb")["held"] == []


def test_a_starting_watcher_watches_what_the_slots_say(start_watcher, watched_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.py").write_text("o = 1\n")
    listed = [WatchSpec("sb", str(watched_dir)), WatchSpec("sb2", str(other))]
    ref = start_watcher(reload=Reloads(), sandboxes=lambda: list(listed))
    assert ref.invoke("watched") == ["sb", "sb2"]
    assert ref.invoke("status", "sb2")["files"] == 1


def test_a_sandbox_found_gone_by_its_reload_is_unwatched(start_watcher, watched_dir):
    reloads = Reloads([SandboxNotFound("sb")])
    ref = start_watcher(reload=reloads)
    ref.invoke("watch", "sb", watched_dir)
    with Recorder("watcher") as rec:
        (watched_dir / "m.py").write_text("x = 2\n")
        rec.wait("watcher.unwatch", sandbox="sb", timeout=WAIT)
        assert not rec.named("watcher.reload.failed")
    assert ref.invoke("watched") == []


# -- sandbox run --watch -----------------------------------------------------------------


def test_cli_run_watch_prints_one_line_per_reload(counter_app):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.cli", "run", str(counter_app), "--watch", "--id", "cli"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
        stdin=subprocess.DEVNULL,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    seen: list[str] = []

    def expect(text: str, timeout: float = 30) -> str:
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                so_far = "".join(seen)
                raise AssertionError(f"no line with {text!r}; output so far:\n{so_far}") from None
            seen.append(line)
            if text in line:
                return line

    try:
        expect("press Ctrl-C")
        (counter_app / "counter.py").write_text(counter_v(2))
        line = expect("reloaded")
        assert "counter v2" in line and " ms (counter.py)" in line
        (counter_app / "counter.py").write_text(BROKEN)
        expect("failed (CompileError); still running the previous code")
        assert f"{counter_app / 'counter.py'}:" in expect("syntax")
        proc.send_signal(signal.SIGINT)
        expect("stopped")
        assert proc.wait(30) == 0
        reloads = [x for x in seen if "reloaded" in x]
        assert len(reloads) == 1, seen
        assert not any("-> reloading" in x for x in seen), "one line per reload, no status noise"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
