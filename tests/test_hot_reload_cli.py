"""``sandbox check PATH``: the compile and security scan of a reload, as a linter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<code>\S+) (?P<msg>.+)$")


def sandbox(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL,
    )


def test_check_prints_linter_lines_and_exits_1_on_errors(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "good.py").write_text("import jsn\n\nX = 1\n")
    (app / "bad.py").write_text("x = 1\ndef f(:\n    pass\n")
    (app / "unsafe.py").write_text("import os\n\nos.system('ls')\n")
    (app / "app.py").write_text("def children():\n    return []\n")  # the entry
    proc = sandbox("check", "app", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line)
        if m:
            found[m["file"]] = (int(m["line"]), int(m["col"]), m["code"], m["msg"])
    assert found[os.path.join("app", "bad.py")][:3] == (2, 7, "syntax-error")
    assert found[os.path.join("app", "good.py")][:3] == (1, 1, "unknown-import")
    line, _col, code, msg = found[os.path.join("app", "unsafe.py")]
    assert (line, code) == (3, "SBX205") and "os.system" in msg
    assert "hint: did you mean 'json'?" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1] == (
        "app: 4 modules checked (profile medium): 2 errors, 1 warning")


def test_check_of_a_clean_app_exits_0():
    proc = sandbox("check", "examples/counter")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == (
        "examples/counter: 2 modules checked (profile medium): 0 errors, 0 warnings")


def test_check_applies_the_profile_given(tmp_path):
    (tmp_path / "net.py").write_text("import socket\n")
    (tmp_path / "app.py").write_text("def children():\n    return []\n")
    assert sandbox("check", str(tmp_path), "--profile", "low").returncode == 0
    proc = sandbox("check", str(tmp_path), "--profile", "high")
    assert proc.returncode == 1 and "SBX101" in proc.stdout


def test_check_of_a_missing_directory_is_an_error_line(tmp_path):
    proc = sandbox("check", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("sandbox: error:") and "not a directory" in proc.stderr
