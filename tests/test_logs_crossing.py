"""Logging as a library should: silent unless configured; each failure logged once,
with its traceback in the ``exc`` field; a sandbox's records reach the host's handlers."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

import sandbox
from runtime import logs

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
COUNTER = str(ROOT / "examples" / "counter")

BAD_INIT = '''
from runtime.genserver import GenServer


class Bad(GenServer):
    def init(self):
        raise RuntimeError("init broke")


def children():
    return [Bad.child_spec(name="bad")]
'''

CHATTY = '''
import logging

from runtime.genserver import GenServer

log = logging.getLogger("chatty")


class Chatty(GenServer):
    def init(self):
        return 0

    def handle_call(self, request, state):
        log.warning("hello from %s", request)
        return request, state


def children():
    return [Chatty.child_spec(name="chatty")]
'''


def app(tmp_path: Path, name: str, source: str) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "app.py").write_text(source)
    return str(d)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    # INFO: what a sandbox writes to its stderr is relayed at INFO (runtime.output),
    # so a crash it printed there as plain text would show up here too
    out = io.StringIO()
    logs.configure(json=True, level="INFO", stream=out)
    try:
        yield out
    finally:
        logs.unconfigure()


def records(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_nothing_is_printed_unless_logging_is_configured(tmp_path):
    bad = app(tmp_path, "bad", BAD_INIT)
    script = (
        "import sandbox\n"
        "with sandbox.start() as rt:\n"
        "    try:\n"
        f"        rt.create_sandbox('bad', {bad!r})\n"
        "    except sandbox.SandboxError as exc:\n"
        "        print('caught', type(exc).__name__)\n"
        f"    sb = rt.create_sandbox('c', {COUNTER!r})\n"
        "    try:\n"
        "        sb.call('counter', 'crash')\n"
        "    except sandbox.ActorFailed:\n"
        "        print('caught ActorFailed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["caught SandboxBootError", "caught ActorFailed"]
    assert done.stderr == "", f"{len(done.stderr.splitlines())} lines on stderr"


def test_a_crash_is_logged_once_with_its_traceback_in_exc(json_lines):
    with sandbox.start() as rt:
        sb = rt.create_sandbox("logs-c", COUNTER)
        with pytest.raises(sandbox.ActorFailed) as failed:
            sb.call("counter", "crash")  # a plain call: no operation, no id of its own
        wait_for(lambda: any("restarting" in r["message"] for r in records(json_lines)),
                 timeout=30)
    about = [r for r in records(json_lines)
             if "asked to crash" in r["message"] + (r["exc"] or "")]
    assert len(about) == 1, [r["message"] for r in about]
    (record,) = about
    assert record["logger"] == "runtime.supervisor" and record["level"] == "ERROR"
    assert record["sandbox"] == "logs-c" and record["runtime"] == rt.name
    assert record["actor"] == "counter"
    # made when the failure was recorded, and shared with the caller's exception
    assert record["correlation_id"] and record["correlation_id"] == failed.value.correlation_id
    assert "Traceback (most recent call last)" in record["exc"]
    assert "counter.py" in record["exc"], "the traceback from inside the sandbox"
    assert "Traceback" not in record["message"] and "\n" not in record["message"]


def test_a_killed_sandbox_process_is_logged_with_its_sandbox_and_runtime(json_lines):
    # A real SIGKILL: the host's supervisor of the sandbox handles (and logs) the
    # death of its process actor, in its own thread, outside any operation.
    with sandbox.start() as rt:
        sb = rt.create_sandbox("logs-k", COUNTER)
        pid = sb.info()["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: sb.info()["pid"] not in (None, pid) and sb.call("counter", "get") == 0,
                 timeout=60)
    about = [r for r in records(json_lines) if "SIGKILL" in r["message"]]
    assert len(about) == 1, [r["message"] for r in about]
    (record,) = about
    assert record["logger"] == "runtime.supervisor" and record["level"] == "ERROR"
    assert (record["sandbox"], record["runtime"]) == ("logs-k", rt.name)
    assert record["actor"] and record["correlation_id"]


def test_a_failed_operation_is_logged_once_with_fields(json_lines, tmp_path):
    bad = app(tmp_path, "bad", BAD_INIT)
    with sandbox.start() as rt:
        with pytest.raises(sandbox.SandboxError):
            rt.create_sandbox("logs-bad", bad)
    about = [r for r in records(json_lines) if "init broke" in r["message"] + (r["exc"] or "")]
    assert len(about) == 1, [r["message"] for r in about]
    (record,) = about
    assert record["logger"] == "runtime.ops" and record["operation"] == "create"
    assert record["sandbox"] == "logs-bad" and record["runtime"] == rt.name
    assert record["correlation_id"] and "init broke" in record["exc"]


def test_a_sandboxs_own_logging_reaches_the_hosts_handlers(json_lines, tmp_path):
    chatty = app(tmp_path, "chatty", CHATTY)
    with sandbox.start() as rt:
        sb = rt.create_sandbox("logs-chatty", chatty)
        assert sb.call("chatty", "inside") == "inside"
        found = wait_for(lambda: [r for r in records(json_lines) if r["logger"] == "chatty"],
                         timeout=30)
    (record,) = found
    assert record["message"] == "hello from inside" and record["level"] == "WARNING"
    assert record["sandbox"] == "logs-chatty" and record["runtime"] == rt.name
    assert record["pid"] != __import__("os").getpid(), "the sandbox process's pid"


FLOOD = CHATTY.replace('log.warning("hello from %s", request)',
                       'for i in range(request):\n            log.warning("line %d", i)')


def test_a_sandbox_logging_in_a_loop_does_not_flood_the_host(json_lines, tmp_path):
    flood = app(tmp_path, "flood", FLOOD)
    with sandbox.start() as rt:
        sb = rt.create_sandbox("logs-flood", flood)
        sb.call("chatty", 20_000, timeout=60)
        # the next record that passes (once the bucket refills) brings the drop count
        dropped = wait_for(lambda: sb.call("chatty", 1) and [
            r for r in records(json_lines) if "log records dropped" in r["message"]],
            timeout=30)
    lines = [r for r in records(json_lines) if r["logger"] == "chatty"]
    assert 1000 <= len(lines) < 20_000
    assert dropped[0]["sandbox"] == "logs-flood"
