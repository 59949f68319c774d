"""The C library through ctypes, loaded once per process.

Loaded when this module is imported, so in the fork server (which preloads it
through the boot module): a sandbox calls functions resolved there, instead of
loading the library and making a function type and each function object again,
in pages of its own. A sandbox's code cannot call them: every ctypes call raises
an audit event its guard refuses, and ctypes leaves ``sys.modules`` before the
sandbox's code runs (:func:`runtime.child.isolation.apply`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FUNCTIONS", "libc"]

#: The functions the isolation layers call, resolved when the library is loaded.
FUNCTIONS = ("unshare", "mount", "syscall", "prctl", "mallopt")

_libc: Any = None


def libc() -> Any:
    """The process's C library handle (``use_errno``), with :data:`FUNCTIONS` resolved.

    >>> libc() is libc()
    True
    """
    global _libc
    if _libc is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        for name in FUNCTIONS:
            getattr(lib, name)  # cached on the handle from now on
        _libc = lib
    return _libc


try:
    libc()
except (OSError, AttributeError):  # not a C library with these functions: fail on use
    pass
