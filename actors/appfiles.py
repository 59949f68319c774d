"""Which files of an app directory are its modules, and under which names.

``pkg/__init__.py`` is module ``pkg``, ``pkg/mod.py`` is ``pkg.mod``, ``app.py`` is
``app``. Skipped: ``__pycache__``, hidden files and directories, virtualenvs
(a directory with ``pyvenv.cfg``), excluded directories (the compile cache), names
that are not identifiers (``my-script.py`` cannot be imported), and symlinked
directories (no loops, no escaping the app).

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     root = pathlib.Path(d)
...     (root / "pkg").mkdir(); _ = (root / "pkg" / "__init__.py").write_text("")
...     _ = (root / "pkg" / "mod.py").write_text(""); _ = (root / "app.py").write_text("")
...     sorted(discover_modules(root))
['app', 'pkg', 'pkg.mod']
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AppFile", "discover_modules", "module_name", "is_ignored"]


@dataclass(frozen=True)
class AppFile:
    """One module file: its module name, absolute path, and whether it is a package."""

    name: str
    path: Path
    is_package: bool


def module_name(root: Path, path: Path) -> tuple[str, bool] | None:
    """``(module name, is_package)`` for ``path`` under ``root``, or None if not a module.

    >>> from pathlib import Path
    >>> module_name(Path("/a"), Path("/a/pkg/__init__.py"))
    ('pkg', True)
    >>> module_name(Path("/a"), Path("/a/x-y.py")) is None
    True
    """
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    if rel.suffix != ".py":
        return None
    parts = list(rel.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts), is_package


def is_ignored(root: Path, path: Path, exclude: Iterable[Path] = ()) -> bool:
    """Whether a path under ``root`` is outside the app's modules (see module docs)."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return True
    for part in rel.parts:
        if part.startswith(".") or part == "__pycache__":
            return True
    for ex in exclude:
        if path == ex or ex in path.parents:
            return True
    return False


def discover_modules(root: Path, exclude: Iterable[Path] = ()) -> dict[str, AppFile]:
    """Every module of the app under ``root``, by name (package beats same-named module)."""
    root = Path(root)
    excluded = [Path(e) for e in exclude]
    found: dict[str, AppFile] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if "pyvenv.cfg" in filenames and here != root:
            dirnames[:] = []
            continue
        # Prune in place so os.walk never descends into what we skip.
        dirnames[:] = sorted(
            d for d in dirnames
            if d.isidentifier() and not is_ignored(root, here / d, excluded)
        )
        for fn in sorted(filenames):
            if not fn.endswith(".py") or fn.startswith("."):
                continue
            path = here / fn
            named = module_name(root, path)
            if named is None:
                continue
            name, is_package = named
            if name in found and found[name].is_package and not is_package:
                continue  # pkg/__init__.py shadows pkg.py, as the import system does
            found[name] = AppFile(name, path, is_package)
    return found
