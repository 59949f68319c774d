"""Structured logs: the JSON formatter, correlation ids through components, the
watcher and into the sandbox process."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import Recorder

from runtime import logs, telemetry
from runtime.errors import CompileError

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "examples" / "counter"


@pytest.fixture
def json_lines():
    """Configure JSON logging into a buffer; yields a function returning the parsed lines."""
    out = io.StringIO()
    logs.configure(json=True, level="INFO", stream=out)
    try:
        yield lambda: [json.loads(line) for line in out.getvalue().splitlines() if line]
    finally:
        logs.unconfigure()


def copy_counter(tmp_path: Path) -> Path:
    app = tmp_path / "counter"
    shutil.copytree(COUNTER, app, ignore=shutil.ignore_patterns("__pycache__"))
    return app


def test_json_lines_have_every_field(json_lines):
    log = logging.getLogger("tests.logging")
    with logs.correlation("abc123", sandbox="s1", runtime="rt-x"):
        log.info("hello %s", "there", extra={"step": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = json_lines()
    assert set(first) >= {"ts", "level", "logger", "message", "correlation_id", "sandbox",
                          "runtime", "exc", "pid"}
    assert (first["level"], first["logger"], first["message"]) == ("INFO", "tests.logging",
                                                                    "hello there")
    assert (first["correlation_id"], first["sandbox"], first["runtime"]) == ("abc123", "s1", "rt-x")
    assert first["step"] == 3 and first["exc"] is None and first["pid"] == os.getpid()
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["correlation_id"] is None and second["level"] == "ERROR"
    assert "ValueError: boom" in second["exc"] and "Traceback" in second["exc"]


def test_text_format_and_reconfiguring():
    out = io.StringIO()
    logs.configure(json=False, level="WARNING", stream=out)
    try:
        with logs.correlation("cid-t"):
            logging.getLogger("tests.text").warning("careful")
            logging.getLogger("tests.text").info("not shown")
        assert logs.settings() == {"json": False, "level": "WARNING"}
        out2 = io.StringIO()
        logs.configure(json=True, level="DEBUG", stream=out2)  # replaces the first handler
        logging.getLogger("tests.text").debug("now json")
    finally:
        logs.unconfigure()
    assert logs.settings() is None
    line, = out.getvalue().splitlines()
    assert "WARNING tests.text [cid-t] careful" in line
    assert json.loads(out2.getvalue())["message"] == "now json"
    with pytest.raises(ValueError, match="level"):
        logs.configure(level="LOUD")


def test_correlation_nests_joins_and_restores():
    assert logs.current_id() is None
    with logs.correlation(runtime="r") as outer:
        with logs.correlation(sandbox="s") as inner:
            assert inner == outer and logs.context() == {
                "correlation_id": outer, "runtime": "r", "sandbox": "s"}
        with logs.correlation("other") as other:
            assert other == "other" and logs.context()["runtime"] == "r"
        assert logs.context() == {"correlation_id": outer, "runtime": "r"}
    assert logs.current_id() is None and logs.context() == {}


def test_operations_log_start_end_and_failure_with_category(sandbox_runtime, tmp_path, json_lines):
    rt = sandbox_runtime
    app = copy_counter(tmp_path)
    sb = rt.create_sandbox("lg1", app)
    with pytest.raises(CompileError):
        sb.hot_reload(source={"counter": "def broken(:\n"})
    lines = [ln for ln in json_lines() if ln["logger"] == "runtime.ops"]
    create = [ln for ln in lines if ln.get("operation") == "create"]
    reload = [ln for ln in lines if ln.get("operation") == "hot_reload"]
    assert [ln["message"].split(": ")[1].split(" ")[0] for ln in create] == ["started", "done"]
    assert len({ln["correlation_id"] for ln in create}) == 1
    assert create[0]["sandbox"] == "lg1" and create[0]["runtime"] == rt.name
    failed = reload[-1]
    assert failed["level"] == "WARNING" and "CompileError" in failed["message"]
    assert "category compilation" in failed["message"]
    assert reload[0]["correlation_id"] == failed["correlation_id"] != create[0]["correlation_id"]


def test_a_batch_destroy_logs_each_sandbox_as_its_own_operation(
        sandbox_runtime, tmp_path, json_lines):
    sandbox_runtime.create_sandbox("lgb", copy_counter(tmp_path))
    results = sandbox_runtime.batch_destroy(["lgb", "lg-missing"])
    assert [r.ok for r in results] == [True, False]
    lines = [ln for ln in json_lines()
             if ln["logger"] == "runtime.ops" and ln.get("operation") == "destroy"]
    by_id = {sid: [ln for ln in lines if ln["sandbox"] == sid] for sid in ("lgb", "lg-missing")}
    assert [ln["message"].split(": ")[1].split(" ")[0] for ln in by_id["lgb"]] == [
        "started", "done"]
    missing = by_id["lg-missing"]
    assert [ln["level"] for ln in missing] == ["INFO", "WARNING"]
    assert "SandboxNotFound" in missing[1]["message"]
    cids = [{ln["correlation_id"] for ln in group} for group in by_id.values()]
    assert all(len(c) == 1 for c in cids) and cids[0] != cids[1]


def test_the_correlation_id_reaches_the_compiler_thread(sandbox_runtime, tmp_path, json_lines):
    # A handler of compile.start runs in the compiler actor's thread: what it logs
    # carries the id of the reload that asked for the compile.
    probe = logging.getLogger("tests.probe")
    telemetry.attach("t-probe", "compile.start", lambda e, m, md: probe.info("compiling"))
    try:
        sb = sandbox_runtime.create_sandbox("lg2", copy_counter(tmp_path))
        with Recorder("sandbox.reload.start") as rec:
            sb.hot_reload()
    finally:
        telemetry.detach("t-probe")
    cid = rec.events[0].metadata["correlation_id"]
    probes = [ln for ln in json_lines() if ln["logger"] == "tests.probe"]
    assert probes[-1]["correlation_id"] == cid and probes[-1]["sandbox"] == "lg2"


def test_the_watchers_reload_runs_under_one_id(sandbox_runtime, tmp_path):
    app = copy_counter(tmp_path)
    sb = sandbox_runtime.create_sandbox("lg3", app, auto_reload=True)
    with Recorder("") as rec:
        source = (app / "counter.py").read_text()
        (app / "counter.py").write_text(source.replace("vsn = 1", "vsn = 2"))
        stop, = rec.wait("watcher.reload.stop", sandbox="lg3", timeout=30)
    cid = stop.metadata["correlation_id"]
    assert rec.named("watcher.reload.start", sandbox="lg3")[0].metadata["correlation_id"] == cid
    assert rec.named("sandbox.reload.stop", sandbox="lg3")[0].metadata["correlation_id"] == cid
    assert rec.named("compile.stop", correlation_id=cid)
    assert sb.call("counter", "get") == 0


HOST = textwrap.dedent(
    """
    import json, os, sys
    import sandbox
    from runtime import logs
    from runtime import telemetry

    logs.configure(json=True, level="INFO")  # JSON lines on stderr, host and sandboxes
    seen = []
    telemetry.attach("cid", "sandbox.reload.stop", lambda e, m, md: seen.append(md))
    with sandbox.start(name=f"logdemo{os.getpid()}") as rt:
        sb = rt.create_sandbox("logged", sys.argv[1])
        source = open(sys.argv[1] + "/counter.py").read().replace("vsn = 1", "vsn = 2")
        sb.hot_reload(source={"counter": source})
        pid = sb.info()["pid"]
    print(json.dumps({"cid": seen[0]["correlation_id"], "child": pid, "runtime": rt.name}))
    """
)


def test_a_reloads_id_is_in_the_host_and_the_sandbox_log_lines(tmp_path):
    # A fresh host process. A sandbox's log records cross its channel and reach the
    # host's handlers (formatted by the host, marked from_sandbox, with the child's
    # pid); anything else it writes to stderr is a pipe its host reads (runtime.output).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", HOST, str(copy_counter(tmp_path))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    assert all(ln.get("from_sandbox") for ln in lines if ln["pid"] == result["child"]), \
        "a sandbox wrote to the host's stderr"
    ours = [ln for ln in lines if ln["correlation_id"] == result["cid"]]
    host = [ln for ln in ours if not ln.get("from_sandbox")]
    child = [ln for ln in ours if ln.get("from_sandbox")]
    assert any(ln["logger"] == "runtime.ops" and "hot_reload logged: done" in ln["message"]
               for ln in host), host
    assert [ln["message"] for ln in child] == [
        "reload: swapping counter", child[-1]["message"]], child
    assert child[-1]["message"].startswith("reload: done in ")
    assert all(ln["logger"] == "runtime.child" and ln["sandbox"] == "logged"
               and ln["runtime"] == result["runtime"] and ln["pid"] == result["child"]
               for ln in child)
    relayed = [ln for ln in lines if ln["logger"] == "runtime.output"]
    assert all(ln["sandbox"] == "logged" and ln["runtime"] == result["runtime"]
               for ln in relayed), relayed
    # and a grep for the id finds exactly these lines
    grepped = [ln for ln in proc.stderr.splitlines() if result["cid"] in ln]
    assert len(grepped) == len(host) + len(child)


def test_sandbox_op_applies_settings_and_the_id(capsys: Any):
    # The child side, in-process: what runtime.child.boot's reload op runs.
    calls = []

    @logs.sandbox_op
    def _op_demo(server, payload):
        calls.append(logs.context())
        return {"ok": True}

    class Boot:
        name = "rt-demo/sb-demo"

    class Server:
        boot = Boot()

    try:
        _op_demo(Server(), {"correlation_id": "from-host", "changed": ["m"],
                            "log": {"json": True, "level": "INFO"}})
        assert logs.settings() == {"json": True, "level": "INFO"}
    finally:
        logs.unconfigure()
    assert calls == [{"correlation_id": "from-host", "runtime": "rt-demo", "sandbox": "sb-demo"}]
    err = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()]
    assert [ln["message"] for ln in err][0] == "demo: swapping m"
    assert {ln["correlation_id"] for ln in err} == {"from-host"}


def test_fill_level_caches_memoises_answers_a_level_change_still_clears() -> None:
    import logging

    from runtime.logs import fill_level_caches

    logger = logging.getLogger("tests.fill_level_caches")
    logger.setLevel(logging.WARNING)
    fill_level_caches()
    assert logger._cache == {10: False, 20: False, 30: True, 40: True, 50: True}  # type: ignore[attr-defined]
    logger.setLevel(logging.DEBUG)
    assert logger.isEnabledFor(logging.DEBUG)
