"""``sandbox check`` reports an entry that ``sandbox run`` would fail on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.entrycheck import entry_diagnostics

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "files, entry, code",
    [
        ({"other.py": "x = 1\n"}, "app:children", "entry-missing"),
        ({"app.py": "def main():\n    return []\n"}, "app:children", "entry-missing"),
        ({"app.py": "children = [1, 2]\n"}, "app:children", "entry-not-callable"),
        ({"app.py": "children = 'x'\n"}, "app:children", "entry-not-callable"),
        ({"app.py": "def children():\n    return []\n"}, "app", "entry-invalid"),
        ({"app.py": "def children():\n    return []\n"}, "app:children", None),
        ({"app.py": "from pkg.mod import children\n", "pkg/__init__.py": "",
          "pkg/mod.py": "def children():\n    return []\n"}, "app:children", None),
        ({"pkg/__init__.py": "children = lambda: []\n"}, "pkg:children", None),
    ],
    ids=["no-module", "no-name", "list", "str", "no-colon", "ok", "imported", "package"],
)
def test_entry_diagnostics(tmp_path, files, entry, code):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = entry_diagnostics(tmp_path, entry)
    assert [d.code for d in found] == ([code] if code else [])
    assert all(d.is_error for d in found)


def test_check_fails_on_a_missing_entry(tmp_path):
    (tmp_path / "other.py").write_text("x = 1\n")
    done = subprocess.run([sys.executable, "-m", "sandbox.cli", "check", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 1, done.stdout
    assert "entry-missing the entry module 'app' does not exist" in done.stdout
    assert "1 error" in done.stdout
