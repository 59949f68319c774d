"""The C library, through ctypes, for the isolation layers' system calls that
Python 3.11's ``os`` lacks (``unshare``, ``setns``, ``prctl``, ``seccomp``, ...).

>>> check(0, "nothing")
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["check", "forget", "libc", "prepare"]

#: The functions the isolation layers call through :func:`libc`, looked up when the
#: handle is made (each first lookup builds a function pointer object).
_CALLS = ("unshare", "setns", "prctl", "mount", "syscall", "mallopt")
_handle: Any = None


def libc() -> Any:
    """The process's C library (``errno`` kept for :func:`check`): one handle per
    process, made at the first call with :data:`_CALLS` looked up.

    The fork server makes it before its first fork (:func:`prepare`), so a sandbox's
    layers use the server's: a sandbox made two (a ctypes class per handle, a function
    pointer per name), ~0.2 ms in the steps that made them (measured: entering the
    pool's network namespace 0.41 -> 0.25 ms) and ~0.05-0.1 MiB of its memory
    (``high`` at N = 1,000: 4.39 -> 4.27 MiB USS). A sandbox with
    a guard drops it (:func:`forget`) before any of its own code runs: a call through
    a function pointer already looked up raises no audit event (only ``dlopen`` and
    ``dlsym`` do), so such code must not find one lying around; a handle it makes
    itself is a ``dlopen`` its guard judges, as its ``import ctypes`` is.
    """
    global _handle
    if _handle is None:
        import ctypes

        handle = ctypes.CDLL(None, use_errno=True)
        for name in _CALLS:
            getattr(handle, name)
        _handle = handle
    return _handle


def prepare() -> None:
    """Make this process's handle now (the fork server, before it forks)."""
    libc()


def forget() -> None:
    """Drop this process's handle (a sandbox, once its layers are applied)."""
    global _handle
    _handle = None


def check(rc: int, what: str) -> None:
    """Raise OSError (with ``errno``) when a C call returned other than 0."""
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
