"""Host-side parsing, one thread at a time (actors/astparse.py): CPython 3.11.7's AST
conversion keeps shared state that threads building trees at once can corrupt."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from actors import astparse

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent


def test_a_parse_waits_while_another_holds_the_lock() -> None:
    parsed = threading.Event()
    with astparse._LOCK:  # as a parse in another thread would hold it
        t = threading.Thread(target=lambda: (astparse.parse("x = 1"), parsed.set()))
        t.start()
        assert not parsed.wait(0.2), "parse ran while another parse held the lock"
    assert parsed.wait(10)
    t.join()


def test_the_host_parses_only_through_astparse() -> None:
    """Every host-side module parses with astparse.parse; the compile worker, a
    single-threaded process of its own, is the one exception."""
    direct = []
    for d in ("actors", "runtime", "sandbox"):
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ("actors/astparse.py", "actors/compile_worker.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "parse" and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "ast"):
                    direct.append(f"{rel}:{node.lineno}")
    assert direct == [], f"ast.parse called directly (use actors.astparse.parse): {direct}"


def test_parse_gives_the_tree_and_its_syntax_errors() -> None:
    assert isinstance(astparse.parse(b"import os", "m.py").body[0], ast.Import)
    with pytest.raises(SyntaxError) as info:
        astparse.parse("def (", "m.py")
    assert info.value.filename == "m.py"
