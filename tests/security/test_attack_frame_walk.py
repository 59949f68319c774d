"""Walking frames up to the runtime's (and the host's) globals."""

from __future__ import annotations

import pytest
from conftest import attempt

#: Lives in the host process only; the sandbox must never see it.
HOST_SECRET = "host-secret-3f1a"

pytestmark = pytest.mark.timeout(60)


def _getframe() -> list[str]:
    import sys

    f = sys._getframe()
    found = []
    while f is not None:
        found.extend(k for k, v in f.f_globals.items() if v == "host-secret-3f1a")
        f = f.f_back
    return found


def _via_traceback() -> list[str]:
    try:
        raise ValueError
    except ValueError as exc:
        f = exc.__traceback__.tb_frame
    names = []
    while f is not None:
        names.append(sorted(f.f_globals)[:3])
        f = f.f_back
    return names


def test_frame_access_is_refused(world):
    sb = world.sandbox()
    for fn in (_getframe, _via_traceback):
        got = attempt(sb, fn)
        assert isinstance(got, Exception) and "refused" in str(got), (fn.__name__, got)
        assert HOST_SECRET not in str(got)
    events = world.events(sb.id)
    assert {"sys._getframe", "object.__getattr__"} & {e["event"] for e in events}, events
