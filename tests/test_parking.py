"""The host's parked sandbox readers (runtime.host.parking): one thread looks after
them all, so a reader parked behind callers that read their own answers does not
wake up by itself, and still takes the reading back once they go quiet."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import wait_for

from runtime.host import parking
from runtime.host.process import start_process

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent


def _voluntary_switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError("no switch count")


def test_a_reader_parked_behind_callers_sleeps_until_they_are_quiet(monkeypatch):
    monkeypatch.setattr(parking, "PERIOD", 0.005)
    ref = start_process("apps.echo:children", app_path=str(TESTS), name="parked-reader")
    try:
        conn = ref._conn
        reader = conn._reader
        # A call or two until the reader, woken by a reply, parks behind the caller.
        wait_for(lambda: ref.call("echo", 0) == 0 and bool(conn._cv._waiters),
                 message="the reader parks")
        before = _voluntary_switches(reader.native_id)
        start = parking.looks
        calls = 0
        while parking.looks < start + 40 or calls < 200:  # 40 looks: 40 periods of calls
            assert ref.call("echo", calls) == calls
            calls += 1
        # Each look found a call since the last one: the reader was never woken.
        assert _voluntary_switches(reader.native_id) - before <= 1
        assert conn._cv._waiters
        # Quiet now: the next looks hand the reading back to the reader.
        wait_for(lambda: not conn._cv._waiters, message="the quiet reader is woken")
        assert ref.call("echo", "after") == "after"
    finally:
        ref.stop()
    wait_for(lambda: parking._thread is None, message="the parking thread ends with no reader parked")
