"""The watcher's debounce and coalescing (actors/debounce.py), on an injected clock."""

from __future__ import annotations

import threading

import pytest

from actors.debounce import CHANGED, CREATED, DELETED, Debouncer, DebounceTimer, merge

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_batch_is_due_after_the_quiet_time(clock):
    d = Debouncer(0.02, clock=clock)
    assert d.add("a", "/x/m.py") is True
    assert d.next_deadline() == pytest.approx(100.02)
    clock.now = 100.019
    assert d.due() == []
    clock.now = 100.02
    assert d.due() == [("a", {"/x/m.py": CHANGED})]
    assert d.due() == [] and len(d) == 0 and d.next_deadline() is None


def test_each_event_pushes_the_deadline_back_trailing_edge(clock):
    d = Debouncer(0.02, clock=clock)
    d.add("a", "/x/m.py")
    for _ in range(5):
        clock.now += 0.015
        d.add("a", "/x/m.py")
        assert d.due() == []
    clock.now += 0.02
    assert d.due() == [("a", {"/x/m.py": CHANGED})]


def test_a_steady_stream_still_flushes_at_max_wait(clock):
    d = Debouncer(0.02, max_wait=0.1, clock=clock)
    d.add("a", "/x/m.py")
    flushed_at = None
    for _ in range(20):
        clock.now += 0.01
        d.add("a", "/x/m.py")
        if d.due():
            flushed_at = clock.now
            break
    assert flushed_at == pytest.approx(100.1)


def test_fifty_saves_coalesce_into_one_batch(clock):
    d = Debouncer(0.02, clock=clock)
    pokes = 0
    for i in range(50):
        clock.now += 0.0001
        pokes += d.add("a", f"/x/m{i % 3}.py")
    assert pokes == 1  # the timer is woken once, not per event
    assert len(d._heap) == 1  # one heap entry, not one timer per event
    clock.now += 0.05
    (key, items), = d.due()
    assert key == "a" and sorted(items) == ["/x/m0.py", "/x/m1.py", "/x/m2.py"]


def test_keys_are_independent_and_due_earliest_first(clock):
    d = Debouncer(0.02, clock=clock)
    d.add("late", "/b/m.py", delay=0.5)
    assert d.add("early", "/a/m.py") is True  # earlier deadline than the head: poke
    clock.now += 0.03
    assert d.due() == [("early", {"/a/m.py": CHANGED})]
    clock.now += 0.5
    assert d.due() == [("late", {"/b/m.py": CHANGED})]


def test_discard_drops_a_pending_batch(clock):
    d = Debouncer(0.02, clock=clock)
    d.add("a", "/x/m.py")
    assert d.pending("a") == {"/x/m.py": CHANGED}
    assert d.discard("a") == {"/x/m.py": CHANGED}
    clock.now += 1
    assert d.due() == [] and d.pending("a") is None


def test_a_shorter_delay_rearms_earlier(clock):
    d = Debouncer(0.02, clock=clock)
    d.add("a", "/x/m.py", delay=0.5)
    # The cap of the shorter delay (0.1 s after the first event) pulls the batch in.
    d.add("a", "/x/n.py", delay=0.0)
    clock.now += 0.099
    assert d.due() == []
    clock.now += 0.002
    assert d.due() == [("a", {"/x/m.py": CHANGED, "/x/n.py": CHANGED})]
    clock.now += 1
    assert d.due() == []  # the stale entry of the longer delay is skipped


def test_kinds_coalesce():
    assert merge(None, CREATED) == CREATED
    assert merge(CREATED, CHANGED) == CHANGED
    assert merge(CHANGED, CREATED) == CHANGED  # vim: rename away, create, write
    assert merge(CHANGED, DELETED) == DELETED
    assert merge(DELETED, CHANGED) == CHANGED


def test_atomic_save_sequence_ends_changed(clock):
    d = Debouncer(0.02, clock=clock)
    for path, kind in [("/x/m.py", DELETED), ("/x/m.py", CREATED), ("/x/m.py", CHANGED)]:
        d.add("a", path, kind)
    clock.now += 1
    assert d.due() == [("a", {"/x/m.py": CHANGED})]


def test_negative_delay_is_refused():
    with pytest.raises(ValueError, match="delay"):
        Debouncer(-1)


def test_timer_thread_delivers_batches_and_stops():
    got: list = []
    ready = threading.Event()
    d = Debouncer(0.0)

    def on_due(key, items):
        got.append((key, items))
        ready.set()

    timer = DebounceTimer(d, on_due, name="test-debounce")
    timer.start()
    try:
        if d.add("k", "/p.py"):
            timer.poke()
        assert ready.wait(5)
        assert got == [("k", {"/p.py": CHANGED})]
    finally:
        timer.stop()
    assert not timer.alive


def test_timer_survives_a_failing_callback():
    errors: list = []
    second = threading.Event()
    calls = []
    d = Debouncer(0.0)

    def on_due(key, items):
        calls.append(key)
        if key == "bad":
            raise RuntimeError("boom")
        second.set()

    timer = DebounceTimer(d, on_due, on_error=errors.append)
    timer.start()
    try:
        d.add("bad", "/p.py")
        timer.poke()
        d.add("good", "/q.py")
        timer.poke()
        assert second.wait(5)
    finally:
        timer.stop()
    assert "bad" in calls and [type(e) for e in errors] == [RuntimeError]
