"""``ast.parse`` that is safe to call from many threads of one process.

CPython before 3.11.8 and 3.12.0 (gh-106905) keeps the depth counter of its
C-to-Python AST conversion in state shared by the process's threads; two threads
building trees at once can raise ``SystemError: AST constructor recursion depth
mismatch``. The host parses app sources on several threads at once (a batch of
creates checks each entry module on its own worker thread; the security
controller scans on its actor's thread), so every host-side parse goes through
:func:`parse`, which holds one lock while the tree is built. The compile worker
is single-threaded: the lock costs it an uncontended acquire.

>>> parse("x = 1", "m.py").body[0].targets[0].id
'x'
"""

from __future__ import annotations

import ast
import threading

__all__ = ["parse"]

_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)``, one thread at a time (see the module's docstring).

    >>> type(parse(b"import os", "app.py").body[0]).__name__
    'Import'
    """
    with _LOCK:
        return ast.parse(source, filename)
