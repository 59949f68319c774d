"""Native code through ctypes."""

from __future__ import annotations

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _ctypes(marker: str) -> int:
    import ctypes

    libc = ctypes.CDLL(None)
    return libc.system(f"touch {marker}".encode())


def test_ctypes_is_refused(world):
    sb = world.sandbox()
    marker = world.marker()
    got = attempt(sb, _ctypes, str(marker))
    assert isinstance(got, Exception) and "refused" in str(got), got
    assert not marker.exists()
    assert [e for e in world.events(sb.id) if "ctypes" in e["detail"] or "ctypes" in e["event"]]
