"""The C library, through ctypes, for the isolation layers' system calls that
Python 3.11's ``os`` lacks (``unshare``, ``setns``, ``prctl``, ``seccomp``, ...).

>>> check(0, "nothing")
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["check", "libc"]

def libc() -> Any:
    """The process's C library (``errno`` kept for :func:`check`). A new handle each
    time, kept by no module: a sandbox's own code must not find one lying around
    (its ``import ctypes`` is what its guard judges)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    """Raise OSError (with ``errno``) when a C call returned other than 0."""
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
