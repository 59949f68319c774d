"""runtime.telemetry: execute/attach/detach/span, failing handlers, correlation ids."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from helpers import Recorder

import sandbox
from runtime import logs, telemetry
from runtime.errors import CompileError

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "examples" / "counter"


def test_prefixes_match_at_segment_boundaries():
    with Recorder("demo.a") as rec:
        telemetry.execute("demo.a", {"n": 1}, {})
        telemetry.execute("demo.a.b", {"n": 2}, {})
        telemetry.execute("demo.ab", {"n": 3}, {})
    assert [e.measurements["n"] for e in rec.events] == [1, 2]


def test_attach_twice_raises_and_detach_reports():
    telemetry.attach("t-twice", "x", lambda *a: None)
    try:
        with pytest.raises(ValueError, match="already attached"):
            telemetry.attach("t-twice", "x", lambda *a: None)
        assert telemetry.handlers()["t-twice"] == "x"
    finally:
        assert telemetry.detach("t-twice") is True
    assert telemetry.detach("t-twice") is False


def test_span_emits_start_stop_with_duration_and_extra_metadata():
    with Recorder("demo.span") as rec:
        with telemetry.span("demo.span", {"job": 1}) as extra:
            extra["result"] = "ok"
    start, stop = rec.events
    assert (start.name, stop.name) == ("demo.span.start", "demo.span.stop")
    assert start.measurements["system_time"] > 0 and start.metadata["job"] == 1
    assert stop.measurements["duration"] >= 0
    assert stop.metadata["job"] == 1 and stop.metadata["result"] == "ok"
    # a span is an operation: both carry the same, fresh correlation id
    assert start.metadata["correlation_id"] == stop.metadata["correlation_id"]


def test_span_exception_has_kind_reason_and_category_and_reraises():
    with Recorder("demo.fail") as rec:
        with pytest.raises(CompileError):
            with telemetry.span("demo.fail", {"job": 2}):
                raise CompileError("app.py:1:1: invalid syntax")
    start, exc = rec.events
    assert exc.name == "demo.fail.exception"
    assert exc.measurements["duration"] >= 0
    assert exc.metadata["kind"] == "CompileError"
    assert exc.metadata["reason"] == "app.py:1:1: invalid syntax"
    assert exc.metadata["category"] == "compilation"
    assert exc.metadata["job"] == 2


def test_a_raising_handler_is_detached_and_logged_and_others_still_run(caplog):
    calls = []

    def bad(event, m, md):
        raise RuntimeError("handler bug")

    telemetry.attach("t-bad", "demo", bad)
    with Recorder("demo") as rec, caplog.at_level(logging.ERROR, logger="runtime.telemetry"):
        telemetry.execute("demo.one", {}, {})  # must not raise
        telemetry.execute("demo.two", {}, {})
        calls.append(1)
    assert "t-bad" not in telemetry.handlers()
    assert [e.name for e in rec.events] == ["demo.one", "demo.two"]
    assert "'t-bad' raised on demo.one; detaching it" in caplog.text
    assert "handler bug" in caplog.text
    assert caplog.text.count("t-bad") == 1, "detached after the first failure"


def test_a_raising_handler_never_breaks_a_runtime_operation():
    def bad(event, m, md):
        raise RuntimeError("handler bug")

    telemetry.attach("t-bad-rt", "sandbox", bad)
    try:
        with sandbox.start(name=f"t-tel-bad{os.getpid()}") as rt:
            sb = rt.create_sandbox("t-bad", COUNTER)
            assert sb.call("counter", "incr") == 1
    finally:
        telemetry.detach("t-bad-rt")


def test_events_inside_an_operation_carry_its_correlation_id():
    with Recorder("demo") as rec:
        with logs.correlation("cid-123"):
            telemetry.execute("demo.inside", {}, {"a": 1})
        telemetry.execute("demo.outside", {}, {"a": 1})
        with logs.correlation("cid-456"):
            telemetry.execute("demo.explicit", {}, {"correlation_id": "mine"})
    inside, outside, explicit = rec.events
    assert inside.metadata == {"a": 1, "correlation_id": "cid-123"}
    assert "correlation_id" not in outside.metadata
    assert explicit.metadata["correlation_id"] == "mine"


def test_the_context_is_per_thread():
    seen = {}

    def other():
        seen["other"] = logs.current_id()

    with logs.correlation("main-op"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        seen["main"] = logs.current_id()
    assert seen == {"other": None, "main": "main-op"}


def test_one_reload_shares_one_correlation_id_across_components(sandbox_runtime, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    for f in COUNTER.glob("*.py"):
        (app / f.name).write_text(f.read_text())
    sb = sandbox_runtime.create_sandbox("t-cid", app)
    (app / "counter.py").write_text((app / "counter.py").read_text() + "\n# v2\n")
    with Recorder("") as rec:
        sb.hot_reload()
    start = rec.named("sandbox.reload.start", sandbox="t-cid")[0]
    cid = start.metadata["correlation_id"]
    # The compiler and the version manager ran the reload's work in their own threads.
    assert rec.named("compile.start", correlation_id=cid)
    assert rec.named("compile.stop", correlation_id=cid)
    assert rec.named("versions.record", correlation_id=cid, sandbox="t-cid")
    assert rec.named("sandbox.status", correlation_id=cid, to="reloading")
    assert rec.named("sandbox.reload.stop", correlation_id=cid)
    # and another operation gets another id
    with Recorder("sandbox.restart") as rec2:
        sb.restart()
    assert rec2.events[0].metadata["correlation_id"] != cid


@pytest.mark.parametrize("module", ["runtime.telemetry", "runtime.logs", "sandbox.metrics",
                                    "sandbox.health", "runtime.recovery", "sandbox.http",
                                    "sandbox.patterns", "sandbox.alerts", "sandbox.capacity",
                                    "actors.config"])
def test_docstring_examples_of_the_observability_modules(module, monkeypatch):
    import doctest
    import importlib

    monkeypatch.chdir(ROOT)  # examples name apps by their path from the repo root
    mod = importlib.import_module(module)
    globs = {**vars(mod), "sandbox": importlib.import_module("sandbox")}
    failed, _attempted = doctest.testmod(mod, globs=globs, optionflags=doctest.ELLIPSIS)
    assert failed == 0
