"""``sandbox run --listen`` in one process, the client commands from others (real
subprocesses, as from a second terminal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent


def sandbox_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sandbox.cli", *args]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sandbox_cmd(*args), cwd=ROOT, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`sandbox run examples/counter --listen unix:S`; yields the address."""
    address = f"unix:{tmp_path_factory.mktemp('cli') / 's.sock'}"
    proc = subprocess.Popen(
        sandbox_cmd("run", "examples/counter", "--listen", address), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        for line in proc.stdout:  # blocks on the server's output, no sleeping
            if "press Ctrl-C to stop" in line:
                assert f"control endpoint {address}" in line, line
                break
        else:
            pytest.fail(f"sandbox run ended early: {proc.communicate()[1]}")
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def test_call_prints_the_reply_as_json(server):
    done = run("--connect", server, "call", "counter", "counter", '"incr"')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1\n"
    # a Python literal, the address from the environment
    done = run("call", "counter", "counter", "('add', 10)", env={"SANDBOX_ADDRESS": server})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "11\n"


def test_ps_info_cast_reload(server):
    done = run("--connect", server, "ps")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split()[:3] == ["ID", "STATUS", "PID"]
    assert row.split()[:2] == ["counter", "running"]
    info = json.loads(run("--connect", server, "info", "counter").stdout)
    assert info["id"] == "counter" and info["status"] == "running"
    before = int(run("--connect", server, "call", "counter", "counter", '"get"').stdout)
    assert run("--connect", server, "cast", "counter", "counter", '"incr"').returncode == 0
    after = run("--connect", server, "call", "counter", "counter", '"get"').stdout
    assert int(after) in (before, before + 1)  # the cast may still be on its way
    done = run("--connect", server, "reload", "counter")
    assert done.returncode == 0 and done.stdout == "no module changed\n", done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("call", "nope", "counter", '"get"'), "sandbox: error: no sandbox with id 'nope'"),
        (("call", "counter", "counter", '"crash"'), "sandbox: error: actor '"),
        (("call", "counter", "counter", "not json ("), "sandbox: error: cannot read the request"),
    ],
    ids=["not-found", "actor-failed", "bad-request"],
)
def test_errors_are_one_line(server, args, message):
    done = run("--connect", server, *args)
    assert done.returncode == 1
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_debug_is_accepted_after_the_subcommand(server):
    done = run("--connect", server, "call", "nope", "counter", '"get"', "--debug")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "SandboxNotFound" in done.stderr


def test_no_address_says_how_to_give_one():
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_ADDRESS"}
    done = subprocess.run(sandbox_cmd("ps"), cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "--connect ADDRESS or set SANDBOX_ADDRESS" in done.stderr


def test_top_piped_prints_plain_tables(server):
    done = run("--connect", server, "top", "-n", "2", "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    lines = done.stdout.splitlines()
    assert sum(line.startswith("--") for line in lines) == 2
    assert sum(line.split()[:1] == ["ID"] for line in lines) == 2
    assert any(line.startswith("counter") and "running" in line for line in lines)


def test_logs_follow_prints_new_records(server):
    # A failed operation is logged (runtime.ops, WARNING): the first one is in the
    # backlog the follower starts with, the second one reaches it as it happens.
    assert run("--connect", server, "reload", "ghost1").returncode == 1
    proc = subprocess.Popen(sandbox_cmd("--connect", server, "logs", "-f"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        for wanted in ("hot_reload ghost1: failed", "hot_reload ghost2: failed"):
            for line in iter(proc.stdout.readline, ""):
                if wanted in line:
                    assert " WARNING runtime.ops [" in line, line
                    break
            else:
                pytest.fail(proc.stderr.read())
            if "ghost1" in wanted:
                assert run("--connect", server, "reload", "ghost2").returncode == 1
    finally:
        proc.kill()
        proc.communicate()


def test_stop_ends_sandbox_run(tmp_path):
    address = f"unix:{tmp_path / 'stop.sock'}"
    proc = subprocess.Popen(
        sandbox_cmd("run", "examples/counter", "--id", "c2", "--listen", address), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            if "press Ctrl-C to stop" in line:
                break
        assert run("--connect", address, "call", "c2", "counter", '"incr"').stdout == "1\n"
        done = run("--connect", address, "stop")
        assert done.returncode == 0 and done.stdout.startswith("stopped runtime"), done.stderr
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()



def test_sandbox_run_prints_each_crash_once(tmp_path):
    address = f"unix:{tmp_path / 'crash.sock'}"
    proc = subprocess.Popen(
        sandbox_cmd("run", "examples/counter", "--id", "c3", "--listen", address), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            if "press Ctrl-C to stop" in line:
                break
        assert run("--connect", address, "call", "c3", "counter", '"crash"').returncode == 1
        assert run("--connect", address, "call", "c3", "counter", '"get"').stdout == "0\n"
        assert run("--connect", address, "stop").returncode == 0
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    crash = [line for line in out.splitlines() if "asked to crash" in line and line[:1] == "["]
    assert len(crash) == 1, out
    assert "sandbox c3: supervisor" in crash[0] and "restarting 'counter'" in crash[0]
    assert "    Traceback (most recent call last)" in out
    assert err == "", err


def test_top_on_a_terminal_redraws_in_place(server):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(sandbox_cmd("--connect", server, "top", "-n", "2", "--interval",
                                        "0.2"), cwd=ROOT, stdout=slave, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end closed (top exited)
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    text = out.decode()
    assert text.count("\x1b[H\x1b[2J") == 2, text
    assert "-- " not in text  # the piped form's separators


def test_sandbox_run_of_an_app_whose_init_raises_prints_one_error_line(tmp_path):
    app = tmp_path / "broken"
    app.mkdir()
    (app / "app.py").write_text(
        "from runtime.genserver import GenServer\n\n\n"
        "class Bad(GenServer):\n    def init(self):\n        raise RuntimeError('init broke')\n\n\n"
        "def children():\n    return [Bad.child_spec(name='bad')]\n")
    done = run("run", str(app))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sandbox: error:"), \
        done.stderr
    assert "init broke" in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert (done.stdout + done.stderr).count("init broke") == 1  # was 41 times in 457 lines


def test_reload_rollback_and_logs_of_operations(tmp_path):
    import shutil

    app = tmp_path / "counter"
    shutil.copytree(ROOT / "examples" / "counter", app)
    address = f"unix:{tmp_path / 'rr.sock'}"
    proc = subprocess.Popen(sandbox_cmd("run", str(app), "--listen", address), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            if "press Ctrl-C to stop" in line:
                break
        assert run("--connect", address, "call", "counter", "counter", '"incr"').stdout == "1\n"
        source = (app / "counter.py").read_text()
        (app / "counter.py").write_text(source.replace("vsn = 1", "vsn = 2"))
        done = run("--connect", address, "reload", "counter")
        assert done.returncode == 0 and done.stdout.startswith("reloaded counter v2"), \
            done.stdout + done.stderr
        done = run("--connect", address, "rollback", "counter", "counter", "1")
        assert done.returncode == 0 and done.stdout.startswith("rolled counter back to v1"), \
            done.stderr
        assert run("--connect", address, "call", "counter", "counter", '"get"').stdout == "1\n"
        logs = run("--connect", address, "logs").stdout
        for wanted in ("create counter: done", "hot_reload counter: done",
                       "rollback counter: done"):
            assert wanted in logs, logs
        assert run("--connect", address, "stop").returncode == 0
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_over_tcp_with_a_token_and_tls(tmp_path):
    import re

    key, crt, token = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "token"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen(
        sandbox_cmd("run", "examples/counter", "--id", "tls", "--listen", "tcp:127.0.0.1:0",
                    "--token-file", str(token), "--tls-cert", str(crt), "--tls-key", str(key)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            if "press Ctrl-C to stop" in line:
                address = re.search(r"control endpoint (tcp:\S+);", line)[1]
                break
        assert token.stat().st_mode & 0o777 == 0o600  # made by the server
        client = ("--connect", address, "--tls-ca", str(crt))
        done = run(*client, "--token-file", str(token), "call", "tls", "counter", '"incr"')
        assert done.stdout == "1\n", done.stderr
        done = run(*client, "call", "tls", "counter", '"incr"')  # no token
        assert done.returncode == 1 and "wrong or missing token" in done.stderr
        done = run(*client, "call", "tls", "counter", '"incr"',
                   env={"SANDBOX_TOKEN_FILE": str(token)})
        assert done.stdout == "2\n", done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


def test_tcp_without_a_token_file_is_refused():
    done = run("run", "examples/counter", "--listen", "tcp:127.0.0.1:0")
    assert done.returncode == 1 and "needs --token-file PATH" in done.stderr
