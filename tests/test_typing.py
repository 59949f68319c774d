"""The type hints hold: mypy over runtime/, actors/ and sandbox/ at the project's
setting ([tool.mypy] in pyproject.toml, explained in docs/architecture.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_mypy_finds_no_errors(tmp_path):
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    assert mypy, "mypy is part of the test extra: pip install -e '.[test]'"
    proc = subprocess.run(
        [mypy, "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
