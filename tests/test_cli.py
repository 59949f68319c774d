"""The ``sandbox`` command, driven through real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def sandbox_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sandbox.cli", *args]


def run(*args: str, cwd: Path = ROOT, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sandbox_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_demo_tells_the_story_and_exits_0():
    done = run("demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in (
        "created sandbox 'counter'",
        "call counter 'incr' -> 3",
        "with SIGKILL",
        "from the restarted process",
        "ActorFailed",
        "destroyed sandbox 'counter'",
        "Demo finished",
    ):
        assert line in out, f"{line!r} missing from demo output:\n{out}"
    assert "Traceback" not in done.stderr and "Traceback" not in out  # no crash printed twice
    assert out.count("asked to crash") == 1, out


def test_run_shows_the_sandboxs_output_attributed_and_neutralised(tmp_path):
    assert run("new", "chatty", "--parent", str(tmp_path)).returncode == 0
    app = tmp_path / "chatty"
    entry = app / "app.py"
    entry.write_text(entry.read_text() + "\nprint('\\x1b[2Jhello from the app', flush=True)\n")
    proc = subprocess.Popen(
        sandbox_cmd("run", str(app)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines = []
        for line in proc.stdout:  # blocks on the child's output, no sleeping
            lines.append(line)
            if b"press Ctrl-C to stop" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
        out = b"".join(lines) + rest
        assert b"[chatty stdout] \\x1b[2Jhello from the app" in out, out
        assert b"\x1b" not in out and b"\x1b" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_new_then_run_until_sigint(tmp_path):
    made = run("new", "myapp", "--parent", str(tmp_path))
    assert made.returncode == 0, made.stderr
    app = tmp_path / "myapp"
    assert (app / "app.py").is_file()
    proc = subprocess.Popen(
        sandbox_cmd("run", str(app)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL,
    )
    try:
        lines = []
        for line in proc.stdout:  # blocks on the child's output, no sleeping
            lines.append(line)
            if "press Ctrl-C to stop" in line:
                break
        assert any("running myapp" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("run", "/no/such/app"), 1, "invalid path='/no/such/app'"),
        (("frobnicate",), 2, "invalid choice"),
        (("run",), 2, "the following arguments are required"),
    ],
)
def test_errors_have_exit_codes_and_no_traceback(args, code, message):
    done = run(*args)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback():
    done = run("--debug", "run", "/no/such/app")
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_new_refuses_an_existing_directory(tmp_path):
    (tmp_path / "taken").mkdir()
    done = run("new", "taken", "--parent", str(tmp_path))
    assert done.returncode == 1
    assert "already exists" in done.stderr
    assert os.listdir(tmp_path / "taken") == []
