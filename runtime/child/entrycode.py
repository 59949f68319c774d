"""The entry module's code, compiled once by the host instead of by every child.

A child started from source (``start_process`` with ``app_path`` and no host-compiled
``modules``) imports its entry module from disk. Its fork server runs with ``-B``
and an app directory usually has no ``.pyc``, so each child compiled that source
again: 0.5-0.7 ms of a ~5 ms boot (the first compile in a fresh fork touches the
compiler's pages; measured, docs/benchmarks.md "start6").

The host compiles the entry's source file once per content (:func:`for_entry`) and
hands the child the marshalled code with the SHA-256 of the source it came from.
The child imports as before, through the path finder, reading the file from its own
view (mounts, permissions, the guard's checks on opening it are unchanged); only the
compile step is skipped, and only when the bytes it read hash to that digest
(:func:`install`). Any other source, a changed file, a ``.pyc`` found first, or an
optimisation level other than the child's default compile as before. Not used with
a runtime guard: the guard also judges ``compile`` events.

>>> import os, tempfile
>>> d = tempfile.mkdtemp(); p = os.path.join(d, "entrycode_demo.py")
>>> with open(p, "w") as fh: _ = fh.write("X = 1\\n")
>>> table = for_entry("entrycode_demo", [d])
>>> list(table) == [p] and for_entry("entrycode_demo", [d]) is table
True
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import marshal
import os
import sys
import threading
from typing import Any

__all__ = ["for_entry", "install"]

#: ``{source path: (sha256 of its bytes, marshalled code)}`` as it crosses to the child.
EntryCode = dict[str, tuple[bytes, bytes]]

_lock = threading.Lock()
#: (module, search path) -> (the file's (mtime_ns, size, inode), the table for it).
_cache: dict[tuple[str, tuple[str, ...]], tuple[tuple[int, int, int], EntryCode]] = {}
_MAX_CACHED = 256


def for_entry(module: str, paths: list[str]) -> EntryCode:
    """The code of ``module`` found as a source file in ``paths`` (host side), or {}.

    Compiled as the child's import would (``dont_inherit``, optimisation level 0:
    the fork server runs without ``-O``), once per file content: a later call
    only stats the file. A file that changed between this stat and the child's
    read is simply compiled by the child (its digest no longer matches).
    """
    if not paths or "." in module:  # a submodule: left to the child's import
        return {}
    key = (module, tuple(paths))
    try:
        spec = importlib.machinery.PathFinder.find_spec(module, list(paths))
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return {}
        origin = spec.origin
        if origin is None or not origin.endswith(".py"):
            return {}
        st = os.stat(origin)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with _lock:
            hit = _cache.get(key)
        if hit is not None and hit[0] == stamp and origin in hit[1]:
            return hit[1]
        with open(origin, "rb") as fh:
            source = fh.read()
        code = compile(source, origin, "exec", dont_inherit=True, optimize=0)
        table = {origin: (hashlib.sha256(source).digest(), marshal.dumps(code))}
    except (ImportError, OSError, SyntaxError, ValueError):
        return {}  # the child compiles (and reports) it as before
    with _lock:
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()
        _cache[key] = (stamp, table)
    return table


def install(table: EntryCode) -> None:
    """Let this process's source imports use ``table``'s code for identical sources
    (child side, at boot, before the entry is imported)."""
    if not table or sys.flags.optimize:  # compiled for optimisation level 0
        return
    loader = importlib.machinery.SourceFileLoader
    compile_source = loader.source_to_code
    sha256, loads = hashlib.sha256, marshal.loads

    def source_to_code(self: Any, data: Any, path: Any, *, _optimize: int = -1) -> Any:
        known = table.get(path)
        if (known is not None and _optimize == -1 and type(data) is bytes
                and sha256(data).digest() == known[0]):
            return loads(known[1])
        return compile_source(self, data, path, _optimize=_optimize)

    loader.source_to_code = source_to_code  # type: ignore[method-assign]
