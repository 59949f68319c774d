"""Every telemetry event documented in docs/telemetry.md is emitted, with its keys.

One module-scoped scenario drives real operations on a real runtime (create,
call, reload, rollback, failed reload and create, restart, crash, escalation,
protocol error, boot failure, security scan and violations, resource limits,
auto-reload) and records every event. Then, per row of the table in
docs/telemetry.md:

- the event was emitted, and every emission carries the documented measurement
  and metadata keys (keys marked ``?`` are optional and not checked);
- rows whose emitting module (the table's last column) does not contain the
  emitting code yet are skipped, saying so (events of work still in progress).

And the other way round: every event name the source code emits is documented.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Event, Recorder, wait_for

import sandbox
from runtime import IGNORE, ChildSpec, Supervisor
from runtime.actor import Actor, ExitReason
from runtime.errors import ActorFailed, CompileError, SandboxError, SecurityViolation

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "telemetry.md"
#: Seconds any one step of the scenario may take (waits end as soon as it happened).
WAIT = 30.0

WORKER_V1 = '''
    import os

    from runtime.genserver import GenServer


    class Worker(GenServer):
        vsn = 1

        def init(self):
            return {"n": 0, "fds": []}

        def handle_call(self, request, state):
            op = request[0] if isinstance(request, (list, tuple)) else request
            if op == "incr":
                state["n"] += 1
                return state["n"], state
            if op == "version":
                return self.vsn, state
            if op == "open":
                for _ in range(request[1]):
                    state["fds"].append(os.open(os.devnull, os.O_RDONLY))
                return len(state["fds"]), state
            if op == "read":
                with open(request[1]) as f:
                    return f.read(1), state
            if op == "read_many":
                refused = 0
                for _ in range(request[2]):
                    try:
                        open(request[1]).close()
                    except PermissionError:
                        refused += 1
                return refused, state
            if op == "die":
                os._exit(3)
            if op == "garbage":
                from runtime.child.boot import current_channel
                current_channel().send_raw(b"\\x00\\x00\\x00\\x04\\xc1\\xc1\\xc1\\xc1")
                return "sent", state
            if op == "notice":
                from runtime.child.boot import current_channel
                from runtime.wire.mailbox import SYSTEM, Codec
                current_channel().send_raw(Codec().frame(SYSTEM, None, "custom", {"x": 1}))
                return "sent", state
            raise ValueError(f"unknown request {request!r}")
'''

APP = '''
    from worker import Worker


    def children():
        return [Worker.child_spec(name="worker")]
'''

BOOM_APP = '''
    def children():
        raise RuntimeError("the app refuses to boot")
'''

# CPython 3.11 parses f-string replacement fields in quadratic time: a runaway compile.
SLOW_SOURCE = "a = 1\ns = f'" + "{a}" * 160_000 + "'\n"


def write_app(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def worker_app(directory: Path, version: int = 1) -> Path:
    return write_app(directory, {
        "app.py": APP, "worker.py": WORKER_V1.replace("vsn = 1", f"vsn = {version}"),
    })


class _Boom(Actor):
    def on_call(self, request: Any) -> Any:
        raise ValueError("the host actor fails on purpose")


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except SandboxError as exc:
        return exc


class Scenario:
    """The operations, in phases sharing one runtime. A phase that fails is recorded
    and the next ones still run, so one failure does not hide every other event."""

    def __init__(self, tmp: Path, rec: Recorder) -> None:
        self.tmp, self.rec = tmp, rec
        self.failures: list[str] = []
        self.rt: Any = None
        self.a: Any = None
        self.v2 = textwrap.dedent(WORKER_V1.replace("vsn = 1", "vsn = 2"))

    def run(self) -> None:
        # Runtime names are cgroup names too: unique, so parallel sessions never share one.
        with sandbox.start(name=f"tel{os.getpid()}", monitor_interval=0.05) as self.rt:
            for phase in (self.lifecycle, self.compiles, self.process_events, self.output,
                          self.protocol,
                          self.escalation, self.failed_creates, self.security, self.flood,
                          self.limits, self.auto_reload, self.recovery, self.host_actor,
                          self.webhook):
                self._run(phase)
        self._run(self.watcher_standalone)

    def _run(self, phase: Any) -> None:
        try:
            phase()
        except Exception as exc:  # reported by test_the_scenario_ran_cleanly
            self.failures.append(f"{phase.__name__}: {type(exc).__name__}: {exc}")

    def lifecycle(self) -> None:  # create, call, reload, rollback, failed rollback,
        # snapshot and restore, unload
        a = self.a = self.rt.create_sandbox("tel-a", worker_app(self.tmp / "a"), profile="low")
        assert a.call("worker", "incr") == 1
        a.hot_reload(source={"worker": self.v2})
        assert a.call("worker", "version") == 2
        a.rollback_module("worker", 1)
        assert a.call("worker", "version") == 1
        with pytest.raises(SandboxError):
            a.rollback_module("worker", 99)  # no such version
        a.restore(a.snapshot())
        (self.tmp / "a" / "extra.py").write_text("X = 1\n")
        a.hot_reload()
        a.unload_module("extra")

    def compiles(self) -> None:  # a failed reload, a damaged cache, a runaway compile
        a = self.a
        with pytest.raises(CompileError):
            a.hot_reload(source={"worker": "def broken(:\n"})
        cache = Path(self.rt._manager("cache_dir", "tel-a"))
        self.rt.component("compiler").invoke("status")  # its entries are written by now
        damaged = [e for e in cache.rglob("*.sbxc") if e.is_file()]
        assert damaged
        for entry in damaged:
            entry.write_bytes(b"damaged")
        # what create and check do: compile the whole app (hot_reload compiles only
        # what changed), reading the damaged entries
        self.rt.component("compiler").invoke(
            "compile_sandbox", self.tmp / "a", profile="low", cache_dir=cache, timeout=WAIT)
        with pytest.raises(CompileError):
            a.hot_reload(source={"worker": self.v2 + "\n" + SLOW_SOURCE}, compile_timeout=0.5)

    def process_events(self) -> None:  # casts to nobody, a notice, a restart, a crash
        a, rec = self.a, self.rec
        a.cast("nobody", 1)
        rec.wait("process.cast_dropped", timeout=WAIT)
        assert a.call("worker", "notice") == "sent"
        rec.wait("process.system", timeout=WAIT)
        a.restart()
        pid = a.info()["pid"]
        with pytest.raises(SandboxError):
            a.call("worker", "die")
        wait_for(lambda: a.info()["status"] == "running" and a.info()["pid"] not in (None, pid),
                 WAIT)
        a.destroy()

    def webhook(self) -> None:  # one alert delivered, one that cannot be
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from actors.config import AlertThresholds
        from sandbox.alerts import AlertManager, WebhookConfig

        class Ok(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        served = threading.Thread(target=server.serve_forever, daemon=True)
        served.start()
        closed = ThreadingHTTPServer(("127.0.0.1", 0), Ok)  # bound, never served, then closed
        nobody = f"http://127.0.0.1:{closed.server_address[1]}/"
        closed.server_close()
        try:
            for url in (f"http://127.0.0.1:{server.server_address[1]}/", nobody):
                manager = AlertManager(self.rt.name, AlertThresholds(),
                                       WebhookConfig.build({"url": url, "retries": 0}))
                manager.start()
                try:
                    manager.fire("SandboxDown", "critical", "tel-hook", "scenario", 1, 1)
                finally:
                    manager.stop()
        finally:
            server.shutdown()
            server.server_close()
            served.join(WAIT)

    def output(self) -> None:  # 2 MiB at once: over the output burst
        o = self.rt.create_sandbox("tel-o", worker_app(self.tmp / "o"), profile="low")
        o.run(exec, "import os\nfor _ in range(32): os.write(1, b'x' * 65535 + b'\\n')")
        self.rec.wait("process.output_dropped", timeout=WAIT)
        o.destroy()

    def protocol(self) -> None:
        p = self.rt.create_sandbox("tel-p", worker_app(self.tmp / "p"), profile="low")
        _quiet(p.call, "worker", "garbage", timeout=2)
        self.rec.wait("process.protocol_error", timeout=WAIT)

    def escalation(self) -> None:  # no restart allowed; then a restart that cannot work
        e = self.rt.create_sandbox("tel-e", worker_app(self.tmp / "e"), profile="low",
                                   max_restarts=0)
        _quiet(e.call, "worker", "die", timeout=2)
        self.rec.wait("supervisor.escalation", timeout=WAIT)
        wait_for(lambda: e.info()["status"] == "error", WAIT)
        with pytest.raises(SandboxError):
            e.restart(preserve_state=True)  # no process to take the state from

    def failed_creates(self) -> None:  # at boot, at compile, at the security scan
        rt, tmp = self.rt, self.tmp
        with pytest.raises(SandboxError):
            rt.create_sandbox("tel-boot", write_app(tmp / "boom", {"app.py": BOOM_APP}))
        with pytest.raises(CompileError):
            rt.create_sandbox("tel-bad", write_app(tmp / "bad", {"app.py": "def broken(:\n"}))
        with pytest.raises(SecurityViolation):
            rt.create_sandbox("tel-sec", write_app(tmp / "sec", {
                "app.py": "import socket\n\ndef children():\n    return []\n"}), profile="high")

    def security(self) -> None:  # violations until quarantine (threshold 3 under 'high')
        v = self.rt.create_sandbox("tel-v", worker_app(self.tmp / "v"), profile="high")
        _quiet(v.call, "worker", ("read_many", "/etc/hostname", 3), timeout=5)
        self.rec.wait("security.quarantine", timeout=WAIT)
        self.rec.wait("sandbox.terminated", timeout=WAIT)

    def flood(self) -> None:  # reports past MAX_VIOLATION_REPORTS are dropped
        from actors.profiles import custom_profile
        from runtime.host import process

        self.rt.register_profile(
            custom_profile("tel-flood", base="medium", violation_threshold=None))
        f = self.rt.create_sandbox("tel-f", worker_app(self.tmp / "f"), profile="tel-flood")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(process, "MAX_VIOLATION_REPORTS", 3)  # the host's cap: 10,000
            f.call("worker", ("read_many", "/etc/hostname", 5), timeout=30)
            self.rec.wait("process.violations_dropped", timeout=WAIT)

    def limits(self) -> None:  # a warning at 80 %, then over the limit
        lim = self.rt.create_sandbox("tel-l", worker_app(self.tmp / "l"), profile="low",
                                     limits={"open_files": 40})
        lim.call("worker", ("open", 30))
        self.rec.wait("limit.warning", timeout=WAIT)
        _quiet(lim.call, "worker", ("open", 20))
        self.rec.wait("limit.exceeded", timeout=WAIT)

    def auto_reload(self) -> None:  # watch, change, unchanged save, too many files, failure
        rec, wdir = self.rec, worker_app(self.tmp / "w")
        w = self.rt.create_sandbox("tel-w", wdir, profile="low", auto_reload=True,
                                   watch={"max_files": 2})
        (wdir / "worker.py").write_text(self.v2)
        rec.wait("watcher.reload.stop", sandbox="tel-w", timeout=WAIT)
        (wdir / "worker.py").write_text(self.v2)
        rec.wait("watcher.unchanged", sandbox="tel-w", timeout=WAIT)
        (wdir / "extra.py").write_text("X = 1\n")  # a third file: over max_files
        rec.wait("watcher.error", sandbox="tel-w", timeout=WAIT)
        rec.wait("watcher.reload.stop", 2, sandbox="tel-w", timeout=WAIT)
        (wdir / "worker.py").write_text("def broken(:\n")
        rec.wait("watcher.reload.failed", sandbox="tel-w", timeout=WAIT)
        w.destroy()

    def recovery(self) -> None:  # a manager restart adopts the running sandboxes
        manager = self.rt.component("manager")
        manager.kill(ExitReason("exception", "killed by the test"))
        wait_for(lambda: self.rt.component("manager", timeout=10) != manager, WAIT)
        listed = self.rt.list_sandboxes()
        assert {s["recovered"] for s in listed if s["status"] == "running"} == {"adopted"}

    def host_actor(self) -> None:  # a host actor that fails
        boom = _Boom.start(name="tel-boom")
        with pytest.raises(ActorFailed):
            boom.call("anything")
        wait_for(lambda: not boom.is_alive(), WAIT)
        # a start function with nothing to start (OTP's ignore)
        Supervisor.start([ChildSpec("tel-off", start=lambda: IGNORE)]).stop()

    def watcher_standalone(self) -> None:
        _watcher_standalone(self.tmp, self.rec)


def _watcher_standalone(tmp: Path, rec: Recorder) -> None:
    """The watcher's fallback to polling and its retries, with an injected observer
    and reload function (as in tests/test_watcher.py)."""
    from actors.watcher import WatcherActor, _default_observer

    class NoWatches:
        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

        def join(self, timeout: float | None = None) -> None:
            pass

        def schedule(self, *args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def factory(kind: str, interval: float) -> Any:
        return NoWatches() if kind == "inotify" else _default_observer("polling", interval)

    failures = [FileNotFoundError("m.py vanished")]

    def reload(sandbox_id: str, files: list[str]) -> dict[str, Any]:
        if failures:
            raise failures.pop()
        return {"ok": True}

    d = write_app(tmp / "watched", {"m.py": "x = 1\n"})
    ref = WatcherActor.start(runtime_id="tel", name="tel-watcher", reload=reload,
                             retry_base=0.001, poll_interval=0.05, observer_factory=factory)
    try:
        ref.invoke("watch", "tel-x", d)
        (d / "m.py").write_text("x = 2\n")
        rec.wait("watcher.reload.stop", sandbox="tel-x", timeout=WAIT)
        ref.invoke("unwatch", "tel-x")
    finally:
        ref.stop()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    tmp = tmp_path_factory.mktemp("telemetry-events")
    with Recorder("") as rec:
        sc = Scenario(tmp, rec)
        sc.run()
    shutil.rmtree(tmp, ignore_errors=True)
    return sc


@pytest.fixture(scope="module")
def emitted(scenario: Scenario) -> dict[str, list[Event]]:
    """Every event of the scenario, by name."""
    by_name: dict[str, list[Event]] = {}
    for e in scenario.rec.events:
        by_name.setdefault(e.name, []).append(e)
    return by_name


def test_the_scenario_ran_cleanly(scenario: Scenario):
    assert not scenario.failures, "phases of the scenario failed:\n  " + "\n  ".join(
        scenario.failures)


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    event: str
    measurements: tuple[str, ...]
    metadata: tuple[str, ...]
    source: str
    line: int

    @staticmethod
    def keys(cell: str) -> tuple[str, ...]:
        return tuple(re.findall(r"`([\w?]+)`", cell))

    def required(self, keys: tuple[str, ...]) -> set[str]:
        return {k for k in keys if not k.endswith("?")}


def parse_table(text: str) -> list[Row]:
    """Rows ``| `event` | `m`, ... | `k`, `k?`, ... | description | `module.py` |``."""
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not re.fullmatch(r"`(\*|[a-z_]+)(\.[a-z_]+)+`", cells[0]):
            continue
        source = re.findall(r"`([\w/]+\.py)`", cells[-1])
        rows.append(Row(cells[0].strip("`"), Row.keys(cells[1]), Row.keys(cells[2]),
                        source[0] if source else "", i))
    return rows


ROWS = parse_table(DOC.read_text())


def test_the_table_has_every_operation():
    names = {r.event for r in ROWS}
    for needed in (
        "sandbox.create.stop", "sandbox.destroy.stop", "sandbox.restart.stop", "sandbox.status",
        "compile.stop", "sandbox.reload.stop", "sandbox.rollback.stop", "watcher.change",
        "limit.warning", "limit.exceeded", "security.violation", "supervisor.restart",
        "supervisor.escalation", "process.protocol_error",
    ):
        assert needed in names, needed
    assert len(names) == len(ROWS), "an event is documented twice"
    for row in ROWS:
        assert row.source and (ROOT / row.source).is_file(), (
            f"docs/telemetry.md:{row.line}: {row.event} names no existing module ({row.source!r})"
        )


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.event)
def test_documented_event_is_emitted_with_its_keys(
    row: Row, emitted: dict[str, list[Event]], scenario: Scenario
):
    if row.event == "*.exception":
        # The span machinery's: every span's exception event, however it was driven.
        events = [e for name, es in emitted.items() if name.endswith(".exception") for e in es]
        spans = {e.name for e in events}
        for needed in ("sandbox.create", "sandbox.reload", "sandbox.rollback",
                       "sandbox.restart", "watcher.reload"):
            assert f"{needed}.exception" in spans, f"{needed}.exception not driven"
    else:
        events = emitted.get(row.event, [])
    assert events, (f"{row.event} (docs/telemetry.md:{row.line}) was not emitted by the scenario"
                    + "".join(f"\n  failed phase {f}" for f in scenario.failures))
    for e in events:
        missing_m = row.required(row.measurements) - set(e.measurements)
        missing_md = row.required(row.metadata) - set(e.metadata)
        assert not missing_m, f"{row.event}: measurements {sorted(missing_m)} missing in {e}"
        assert not missing_md, f"{row.event}: metadata {sorted(missing_md)} missing in {e}"


# -- every emitted event is documented ------------------------------------------------------

_EMIT = re.compile(
    r"(?:telemetry\.execute|self\._event|self\._emit|self\._on_event)"
    r"\(\s*\"([a-z_]+(?:\.[a-z_]+)+)\"",
)
_SPAN = re.compile(r"telemetry\.span\(\s*\"([a-z_]+(?:\.[a-z_]+)*)\"")


def events_in_source() -> dict[str, str]:
    """Event names emitted with a literal name under runtime/, actors/ and sandbox/ -> file
    (docstring examples left out); a span counts as its ``.start`` and ``.stop``
    (its ``.exception`` is the table's ``*.exception`` row)."""
    found: dict[str, str] = {}
    for path in sorted([*ROOT.glob("runtime/**/*.py"), *ROOT.glob("actors/*.py"),
                        *ROOT.glob("sandbox/*.py")]):
        rel = str(path.relative_to(ROOT))
        text = "\n".join(line for line in path.read_text().splitlines()
                         if not line.lstrip().startswith((">>>", "...")))
        for m in _EMIT.finditer(text):
            found.setdefault(m.group(1), rel)
        for m in _SPAN.finditer(text):
            for suffix in ("start", "stop"):
                found.setdefault(f"{m.group(1)}.{suffix}", rel)
    return found


def test_every_event_in_the_source_is_documented():
    documented = {r.event for r in ROWS}
    found = events_in_source()
    assert "sandbox.reload.stop" in found and "supervisor.restart" in found  # the scan works
    missing = {e: f for e, f in found.items() if e not in documented}
    assert not missing, "undocumented events (add rows to docs/telemetry.md): " + ", ".join(
        f"{e} ({f})" for e, f in sorted(missing.items())
    )


def test_parse_table_reads_rows_and_optional_keys():
    rows = parse_table(
        "| Event | Measurements | Metadata | When | Emitted by |\n"
        "|---|---|---|---|---|\n"
        "| `a.b` | `count` | `sandbox`, `extra?` | it happens | `sandbox/api.py` |\n"
        "| not a row | | | | |\n"
    )
    assert rows == [Row("a.b", ("count",), ("sandbox", "extra?"), "sandbox/api.py", 3)]
    assert rows[0].required(rows[0].metadata) == {"sandbox"}
