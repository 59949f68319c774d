"""How ``pytest -n N`` spreads the suite over xdist workers (used by tests/conftest.py).

A module apart from conftest.py so that a test can import it: the name ``conftest``
is taken by whichever conftest.py was imported last (tests/security has one too).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["SHARED_SCOPE", "shared_fixture_files", "xdist_scope"]

#: A fixture of one of these scopes ties the tests of its file together.
SHARED_SCOPE = re.compile(r"""scope\s*=\s*["'](module|class|package)["']""")


def shared_fixture_files(root: Path) -> set[str]:
    """Test files (relative to ``root``, as in node ids) with a module-, class- or
    package-scoped fixture: their tests must run on one xdist worker, in order.

    >>> "tests/test_cluster.py" in shared_fixture_files(Path(__file__).parent.parent)
    True
    """
    return {
        path.relative_to(root).as_posix()
        for path in (root / "tests").rglob("test_*.py")
        if SHARED_SCOPE.search(path.read_text(encoding="utf-8"))
    }


def xdist_scope(nodeid: str, grouped: set[str]) -> str:
    """The unit of work a test belongs to: its file if the file is in ``grouped``, else
    the test alone.

    >>> xdist_scope("tests/test_a.py::test_x", {"tests/test_a.py"})
    'tests/test_a.py'
    """
    path = nodeid.split("::", 1)[0]
    return path if path in grouped else nodeid
