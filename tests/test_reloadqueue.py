"""Serialised reload jobs with one follow-up, and retries (actors/reloadqueue.py)."""

from __future__ import annotations

import threading

import pytest

from actors.reloadqueue import SerialRunner, is_transient, retry
from runtime.errors import CompileError, ReloadFailed

pytestmark = pytest.mark.timeout(30)


class Gate:
    """A job that blocks until released, recording what ran and how many ran at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.ran: list[tuple[str, list[str]]] = []
        self.active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}
        self.threads: set[str] = set()

    def __call__(self, key, files):
        with self.lock:
            self.active[key] = self.active.get(key, 0) + 1
            self.max_active[key] = max(self.max_active.get(key, 0), self.active[key])
            self.threads.add(threading.current_thread().name)
        self.entered.release()
        self.release.wait(10)
        with self.lock:
            self.active[key] -= 1
            self.ran.append((key, files))


def test_jobs_of_one_key_never_overlap_and_merge_into_one_follow_up():
    gate = Gate()
    runner = SerialRunner(gate, name="t")
    assert runner.submit("a", ["1"]) == "started"
    assert gate.entered.acquire(timeout=5)
    assert runner.busy("a")
    assert runner.submit("a", ["2"]) == "queued"
    for i in range(3, 50):
        assert runner.submit("a", [str(i), "2"]) == "merged"
    assert runner.follow_up("a") == [str(i) for i in range(2, 50)]
    gate.release.set()
    assert runner.wait_idle(5)
    assert [files for _k, files in gate.ran] == [["1"], [str(i) for i in range(2, 50)]]
    assert gate.max_active["a"] == 1
    assert runner.stats()["ran"] == 2 and not runner.busy("a")


def test_keys_run_in_parallel_in_worker_threads():
    gate = Gate()
    runner = SerialRunner(gate, name="t")
    runner.submit("a", ["x"])
    runner.submit("b", ["y"])
    assert gate.entered.acquire(timeout=5) and gate.entered.acquire(timeout=5)  # both inside
    gate.release.set()
    assert runner.wait_idle(5)
    assert threading.current_thread().name not in gate.threads
    assert sorted(k for k, _ in gate.ran) == ["a", "b"]


def test_cancel_and_close_drop_the_follow_up():
    gate = Gate()
    runner = SerialRunner(gate)
    runner.submit("a", ["1"])
    assert gate.entered.acquire(timeout=5)
    runner.submit("a", ["2"])
    runner.cancel("a")
    assert runner.follow_up("a") is None
    runner.submit("a", ["3"])
    assert runner.close(timeout=0) is False  # still running, not interrupted
    assert runner.submit("b", ["4"]) == "closed"
    gate.release.set()
    assert runner.wait_idle(5)
    assert [f for _k, f in gate.ran] == [["1"]]


def test_an_exception_in_a_job_goes_to_on_error_and_the_chain_goes_on():
    errors = []
    done = threading.Event()
    entered = threading.Event()
    proceed = threading.Event()

    def job(key, files):
        if files == ["bad"]:
            entered.set()
            proceed.wait(5)
            raise RuntimeError("boom")
        done.set()

    runner = SerialRunner(job, on_error=lambda k, e: errors.append((k, str(e))))
    runner.submit("a", ["bad"])
    assert entered.wait(5)
    runner.submit("a", ["good"])
    proceed.set()
    assert done.wait(5) and runner.wait_idle(5)
    assert errors == [("a", "boom")]


def test_retry_backs_off_exponentially_on_transient_errors():
    waits = []

    class Stop(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return False

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise FileNotFoundError("m.py")
        return "ok"

    retried = []
    assert retry(flaky, attempts=4, base=0.01, stop=Stop(),
                 on_retry=lambda a, d, e: retried.append(a)) == "ok"
    assert waits == [0.01, 0.02, 0.04] and retried == [1, 2, 3]


def test_retry_gives_up_after_the_attempts():
    calls = []

    def always():
        calls.append(1)
        raise FileNotFoundError("m.py")

    with pytest.raises(FileNotFoundError):
        retry(always, attempts=3, base=0.0)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "error",
    [CompileError("m.py:1:1: syntax invalid syntax"), ReloadFailed("code_change raised"),
     ValueError("bad")],
)
def test_no_retry_for_compile_errors_and_failed_swaps(error):
    calls = []

    def fail():
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        retry(fail, attempts=5, base=0.0)
    assert len(calls) == 1


def test_a_set_stop_event_ends_the_retries():
    stop = threading.Event()
    stop.set()
    calls = []

    def fail():
        calls.append(1)
        raise FileNotFoundError("m.py")

    with pytest.raises(FileNotFoundError):
        retry(fail, attempts=5, base=10.0, stop=stop)
    assert len(calls) == 1


def test_is_transient():
    class Diag:
        def __init__(self, code):
            self.code = code

    assert is_transient(FileNotFoundError())
    assert is_transient(CompileError("gone", [Diag("read-error")]))
    assert not is_transient(CompileError("bad", [Diag("syntax"), Diag("read-error")]))
    assert not is_transient(CompileError("bad"))
    assert not is_transient(ReloadFailed("bad"))
    err = ReloadFailed("busy")
    err.transient = True
    assert is_transient(err)


def test_a_lingering_worker_takes_the_next_job_and_close_dismisses_it():
    threads = []
    done = threading.Semaphore(0)

    def job(key, files):
        threads.append(threading.current_thread())
        done.release()

    runner = SerialRunner(job, linger=30.0)
    runner.submit("a", ["1"])
    assert done.acquire(timeout=5)
    assert runner.wait_idle(5) and not runner.busy("a")
    assert runner.submit("a", ["2"]) == "started"
    assert done.acquire(timeout=5)
    assert threads[0] is threads[1], "the same worker thread ran both"
    assert runner.wait_idle(5)
    assert runner.close(timeout=5) is True  # lingering worker dismissed at once
    threads[0].join(5)
    assert not threads[0].is_alive()


def test_cancel_dismisses_a_lingering_worker():
    threads = []
    done = threading.Event()

    def job(key, files):
        threads.append(threading.current_thread())
        done.set()

    runner = SerialRunner(job, linger=30.0)
    runner.submit("a", ["1"])
    assert done.wait(5) and runner.wait_idle(5)
    runner.cancel("a")
    assert runner.wait_ended(5)
    threads[0].join(5)
    assert not threads[0].is_alive()
    runner.close()
