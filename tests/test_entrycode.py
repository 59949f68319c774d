"""runtime.child.entrycode: the host compiles an entry once; a child uses that code
only for a byte-identical source, and compiles anything else itself."""

from __future__ import annotations

import hashlib
import marshal
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.child import entrycode
from runtime.host.process import start_process

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))


def test_for_entry_compiles_once_per_content(tmp_path: Path) -> None:
    src = tmp_path / "ec_once.py"
    _write(src, "X = 1\n")
    first = entrycode.for_entry("ec_once", [str(tmp_path)])
    assert list(first) == [str(src)]
    assert entrycode.for_entry("ec_once", [str(tmp_path)]) is first  # only a stat
    _write(src, "X = 22\n")  # new content: compiled again
    second = entrycode.for_entry("ec_once", [str(tmp_path)])
    digest, code = second[str(src)]
    assert digest == hashlib.sha256(b"X = 22\n").digest()
    ns: dict[str, object] = {}
    exec(marshal.loads(code), ns)
    assert ns["X"] == 22


def test_for_entry_leaves_what_it_cannot_compile_to_the_child(tmp_path: Path) -> None:
    (tmp_path / "ec_bad.py").write_text("def (:\n")
    assert entrycode.for_entry("ec_bad", [str(tmp_path)]) == {}
    assert entrycode.for_entry("ec_missing", [str(tmp_path)]) == {}
    assert entrycode.for_entry("pkg.mod", [str(tmp_path)]) == {}
    assert entrycode.for_entry("ec_bad", []) == {}


_IMPORT = """
import pickle, sys
from runtime.child import entrycode
entrycode.install(pickle.loads(sys.stdin.buffer.read()))
sys.path.insert(0, sys.argv[1])
import ec_child
print(ec_child.X)
"""


def _import_with(table: dict[str, tuple[bytes, bytes]], where: Path) -> str:
    """Import ``ec_child`` from ``where`` in a fresh interpreter that installed ``table``."""
    out = subprocess.run(
        [sys.executable, "-B", "-c", _IMPORT, str(where)], input=pickle.dumps(table),
        capture_output=True, check=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return out.stdout.decode().strip()


def test_child_uses_the_code_only_for_the_same_source(tmp_path: Path) -> None:
    src = tmp_path / "ec_child.py"
    src.write_text("X = 'from disk'\n")
    other = marshal.dumps(compile("X = 'from the host'\n", str(src), "exec", dont_inherit=True))
    same = hashlib.sha256(src.read_bytes()).digest()
    # The table's code is used when the bytes read hash to its digest (here the code
    # is deliberately another source's, to tell the two apart) ...
    assert _import_with({str(src): (same, other)}, tmp_path) == "from the host"
    # ... and never for a file whose bytes differ: the child compiles what it read.
    stale = hashlib.sha256(b"X = 'older'\n").digest()
    assert _import_with({str(src): (stale, other)}, tmp_path) == "from disk"
    assert _import_with({}, tmp_path) == "from disk"


def test_started_child_imports_its_entry(tmp_path: Path) -> None:
    (tmp_path / "ec_app.py").write_text(
        "from runtime.genserver import GenServer\n"
        "class Echo(GenServer):\n"
        "    def init(self):\n        return None\n"
        "    def handle_call(self, request, state):\n        return [request, __file__], state\n"
        "def children():\n    return [Echo.child_spec(name='echo')]\n"
    )
    ref = start_process("ec_app:children", app_path=str(tmp_path), name="entrycode-test")
    try:
        assert ref.call("echo", "hi", timeout=30) == ["hi", str(tmp_path / "ec_app.py")]
    finally:
        ref.stop()
