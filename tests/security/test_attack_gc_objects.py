"""Digging through the object graph with gc."""

from __future__ import annotations

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _objects() -> int:
    import gc

    return len(gc.get_objects())


def _referrers() -> int:
    import sys

    gc = sys.modules["gc"]  # already loaded by the runtime: no import event
    return len(gc.get_referrers(sys))


def test_gc_introspection_is_refused(world):
    sb = world.sandbox()
    for fn in (_objects, _referrers):
        got = attempt(sb, fn)
        assert isinstance(got, Exception) and "refused" in str(got), (fn.__name__, got)
    assert world.events(sb.id, "gc.get_referrers")
