"""Native code through ctypes."""

from __future__ import annotations

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _ctypes(marker: str) -> int:
    import ctypes

    libc = ctypes.CDLL(None)
    return libc.system(f"touch {marker}".encode())


def _runtime_libc(marker: str) -> int:
    # The layers' C library handle, asked of runtime.child.libc: the fork server's
    # is gone, and making one is an import or a dlopen the guard refuses.
    import sys

    handle = sys.modules["runtime.child.libc"].libc()
    return handle.system(f"touch {marker}".encode())


def _runtime_libc_looked_up(_marker: str) -> int:
    import sys

    # The fork server's handle, its functions looked up there: a call through one
    # raises no audit event, so the sandbox must have dropped it before its code ran.
    handle = sys.modules["runtime.child.libc"]._handle
    if handle is None:
        raise LookupError("no handle left")
    return handle.syscall(39)  # getpid


@pytest.mark.parametrize("attack", [_ctypes, _runtime_libc])
def test_ctypes_is_refused(world, attack):
    sb = world.sandbox()
    marker = world.marker()
    got = attempt(sb, attack, str(marker))
    assert isinstance(got, Exception) and "refused" in str(got), got
    assert not marker.exists()
    assert [e for e in world.events(sb.id) if "ctypes" in e["detail"] or "ctypes" in e["event"]]


def test_the_layers_libc_handle_is_dropped(world):
    got = attempt(world.sandbox(), _runtime_libc_looked_up, "")
    assert isinstance(got, Exception) and "no handle left" in str(got), got
