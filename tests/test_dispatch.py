"""Calls to idle actors run on the sandbox's reading thread (runtime.child.relay).

Real child processes running ``tests/apps/relay_app.py``. What must hold whichever
thread runs a handler: one message at a time per actor, order per sender, no
head-of-line blocking of other actors by a long handler, failures, stops from
inside a handler, timeouts, and many concurrent callers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers import wait_for

from runtime.actor import Reply
from runtime.errors import ActorDead, ActorFailed, CallTimeout
from runtime.host.process import ProcessRef, start_process

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent
APP = "apps.relay_app:children"


@pytest.fixture
def ref():
    r = start_process(APP, app_path=str(TESTS), name="relay-test")
    try:
        yield r
    finally:
        r.stop()


def _in_thread(fn) -> tuple[threading.Thread, Reply]:
    out = Reply()

    def run() -> None:
        try:
            out.set_result(fn())
        except BaseException as exc:
            out.set_exception(exc)

    t = threading.Thread(target=run, name="test-caller")
    t.start()
    return t, out


def test_a_call_to_an_idle_actor_runs_on_the_reading_thread(ref: ProcessRef):
    assert ref.call("where", "x") == "MainThread"


def test_run_in_place_off_sends_every_call_through_the_mailbox():
    r = start_process(APP, app_path=str(TESTS), name="relay-off", run_in_place=False)
    try:
        assert r.call("where", "x").startswith("ServerActor")
    finally:
        r.stop()


def test_a_long_handler_does_not_hold_up_other_actors(ref: ProcessRef):
    # gate blocks in place on the reading thread until opener is called: if
    # nobody took the reading over, the open call would never be read.
    t, blocked = _in_thread(lambda: ref.call("gate", "block", timeout=30))
    assert ref.call("where", "x", timeout=10)  # not blocked either
    ref.call("opener", "open", timeout=10)
    assert blocked.wait(10), "the blocked handler never ended"
    t.join()
    assert blocked.result()[0] == "opened"
    # The reading comes back (once the helper's read returns): idle actors run in
    # place again.
    wait_for(lambda: ref.call("where", "x") == "MainThread", timeout=10)


def test_order_per_sender_holds_across_casts_and_calls(ref: ProcessRef):
    sent: list[int] = []
    for i in range(300):
        ref.cast("log", i)
        sent.append(i)
        if i % 7 == 0:  # a call after casts sees every one of them, in order
            assert ref.call("log", "get") == sent
    assert ref.call("log", "get") == sent


def test_one_message_at_a_time_under_concurrent_callers(ref: ProcessRef):
    n, threads = 250, 4
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(n):
                ref.call("where", "x", timeout=30)
        except BaseException as exc:  # reported below
            errors.append(exc)

    ts = [threading.Thread(target=hammer) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    # Every call was counted once: no two handlers ran on one state at once.
    assert ref.call("where", "count") == n * threads


def test_a_failure_in_place_fails_the_caller_and_the_actor_restarts(ref: ProcessRef):
    with pytest.raises(ActorFailed, match="asked to fail"):
        ref.call("gate", "fail")
    assert ref.call("gate", "after", timeout=10) == "after"  # restarted by its supervisor
    assert ref.call("where", "x") == "MainThread"


def test_an_actor_stopping_itself_in_place_ends_and_restarts(ref: ProcessRef):
    assert ref.call("gate", "stop", timeout=10) == "stopping"

    def served_again() -> bool:  # a call racing the stop hears ActorDead, as in a mailbox
        try:
            return ref.call("gate", "again", timeout=10) == "again"
        except ActorDead:
            return False

    wait_for(served_again, timeout=10)


def test_a_timed_out_call_leaves_the_sandbox_serving(ref: ProcessRef):
    with pytest.raises(CallTimeout):
        ref.call("gate", "block", timeout=0.2)
    assert ref.call("opener", "open", timeout=10)  # ends the abandoned handler
    assert ref.call("gate", "next", timeout=10) == "next"


def test_call_wait_reads_its_own_answer_and_leaves_a_late_one_to_the_reader(ref: ProcessRef):
    # ProcessRef.call_wait (a call under a handler deadline): True once answered;
    # on False the call stays pending and its late answer still reaches the reply.
    answered = Reply()
    assert ref.call_wait("where", "x", answered, 10) and answered.result() == "MainThread"
    late = Reply()
    assert ref.call_wait("gate", "block", late, 0.2) is False
    ref.call("opener", "open", timeout=10)
    assert late.wait(10) and late.result()[0] == "opened"


def test_deferred_replies_work_in_place(ref: ProcessRef):
    # Answered inside the handler, which then returns NOREPLY (run in place).
    assert ref.call("gate", "answer-early") == ("early", "MainThread")
    # Answered by the handle_continue the handler asked for (NOREPLY + Continue).
    assert ref.call("gate", "continue-reply", timeout=10) == ("continued", "MainThread")
    # Kept by one call (run in place), answered by the next.
    t, deferred = _in_thread(lambda: ref.call("gate", "defer", timeout=30))
    wait_for(lambda: ref.call("gate", "release") == "done", timeout=10)
    assert deferred.wait(10) and deferred.result() == "released"
    t.join()


def test_a_lone_caller_reads_its_own_answer_and_routes_a_second_callers(ref: ProcessRef):
    # A lone call takes the read token and leaves no entry in the pending table
    # (ProcessRef.call's short way, runtime.host.process._Connection.call).
    conn = ref._conn
    assert ref.call("where", "x") == "MainThread"
    assert not conn.pending and not conn._token.locked()
    # A caller arriving while another reads its own answer falls back to a reply
    # slot: the first caller routes the second's answer while it waits for its own.
    t, blocked = _in_thread(lambda: ref.call("gate", "block", timeout=30))
    wait_for(lambda: conn._token.locked(), timeout=10)
    # Still the call in flight for the resource monitor (cpu_seconds charges it).
    assert ref.oldest_request() == conn.leading is not None
    assert ref.call("where", "x", timeout=10).startswith("ServerActor")  # posted by the helper
    assert not conn.pending
    ref.call("opener", "open", timeout=10)
    assert blocked.wait(10) and blocked.result()[0] == "opened"
    t.join()
    assert not conn.pending and not conn._token.locked()


def test_a_call_timing_out_on_the_short_way_drops_its_late_answer_and_keeps_order(ref: ProcessRef):
    with pytest.raises(CallTimeout):
        ref.call("gate", "block", timeout=0.2)
    assert not ref._conn._token.locked()  # the timed out caller gave the reading back
    sent: list[int] = []
    ref.cast("log", -1)  # queued behind nothing: the log actor is idle
    sent.append(-1)
    ref.call("opener", "open", timeout=10)  # the late answer of "block" comes back now
    for i in range(20):  # interleaved casts and calls: each call's own answer, in order
        ref.cast("log", i)
        sent.append(i)
        assert ref.call("gate", i, timeout=10) == i
        assert ref.call("log", "get", timeout=10) == sent
