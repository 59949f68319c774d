"""No test sleeps: waits are event-driven (sandbox.testing.wait_for, Events, joins).

Greps every Python file under tests/ (this one excepted) for sleep calls
(``time.sleep``, ``asyncio.sleep``, a bare imported ``sleep``) and for importing
``sleep`` from ``time``, and fails listing each one with its file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SLEEP_CALL = re.compile(r"\bsleep\s*\(")
SLEEP_IMPORT = re.compile(r"\bfrom\s+time\s+import\b.*\bsleep\b")


def sleeps_in(root: Path, exclude: Path | None = None) -> list[str]:
    """``path:line: text`` of every sleep call or import under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if exclude is not None and path.resolve() == exclude.resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if SLEEP_CALL.search(line) or SLEEP_IMPORT.search(line):
                found.append(f"{path.relative_to(root.parent)}:{n}: {line.strip()}")
    return found


def test_no_sleep_under_tests():
    found = sleeps_in(TESTS, exclude=Path(__file__))
    assert not found, (
        "tests must not sleep; wait for what you mean (sandbox.testing.wait_for, "
        "threading.Event.wait, Thread.join, psutil.wait_procs):\n  " + "\n  ".join(found)
    )


def test_the_grep_finds_sleeps(tmp_path):
    root = tmp_path / "tests"
    root.mkdir()
    pause = "sle" + "ep"  # spelled apart so this file stays clean for the check above
    (root / "test_a.py").write_text(f"import time\n\ndef test():\n    time.{pause}(0.1)\n")
    (root / "sub").mkdir()
    (root / "sub" / "b.py").write_text(f"from time import {pause} as nap\nawait asyncio.{pause} (1)\n")
    (root / "ok.py").write_text("# waits, never naps\nevent.wait(1)\n")
    found = sleeps_in(root)
    assert found == [
        f"tests/sub/b.py:1: from time import {pause} as nap",
        f"tests/sub/b.py:2: await asyncio.{pause} (1)",
        f"tests/test_a.py:4: time.{pause}(0.1)",
    ]
