"""Creates and destroys under way outside the manager's turns, kept beyond a manager's life.

A create compiles and boots its sandbox on a thread of its own, and a destroy (or
a batch of destroys) stops its sandboxes on one (independent sandboxes start and
stop side by side, as children of a dynamic supervisor do). Each is a :class:`Job`; its caller waits on the job's
:class:`Ticket`, not on the manager's reply. The runtime keeps one :class:`InFlight`
table for all its managers, so a manager killed while jobs run does not lose them:
its successor finds them at start, keeps their ids reserved and finishes each job
(adopts the booted process, writes the store) when its thread is done. The caller
gets the sandbox as if nothing had happened. Only a runtime stopping ends jobs
unfinished: their callers get a clear :class:`~runtime.errors.SandboxError` and
nothing of those sandboxes is left.

>>> t = Ticket("create of sandbox 's1'")
>>> t.settle(value={"id": "s1"}), t.settle(error=SandboxError("late"))
(True, False)
>>> t.wait(1.0)
{'id': 's1'}
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import CallTimeout, SandboxError
from runtime.workshare import share_out

__all__ = ["InFlight", "JOB_THREADS", "Job", "Ticket"]

#: Jobs that run at once; more wait for a thread (each create or destroy is mostly
#: waiting for its child process, so this is far above the host's CPUs).
JOB_THREADS = 64


class Ticket:
    """What the caller of a create or destroy waits on: the first outcome settled.

    Settled once, by the job's thread, after whichever manager finished the job (or
    the runtime stopping) told it the outcome (:meth:`Job.finish`).
    """

    __slots__ = ("what", "_done", "_value", "_error")

    def __init__(self, what: str) -> None:
        self.what = what
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> bool:
        """Record the outcome; False (and nothing changes) if it was settled before."""
        if self._done.is_set():
            return False
        self._value, self._error = value, error
        self._done.set()
        return True

    @property
    def settled(self) -> bool:
        return self._done.is_set()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None) -> Any:
        """The outcome: the value, or the error raised; CallTimeout after ``timeout`` s."""
        if not self._done.wait(timeout):
            raise CallTimeout(self.what, timeout)
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(eq=False)
class Job:
    """One create (``kind`` "create") or destroy ("destroy") of a sandbox in flight."""

    kind: str
    #: The manager's record of the sandbox (a ``SandboxRecord``), handed to a successor.
    record: Any
    ticket: Ticket
    #: Its thread's part is done (``result`` holds what it produced): a manager may finish it.
    ready: bool = False
    #: Why its thread's part failed (an exception), else None.
    result: BaseException | None = None
    #: What its thread made that a failure must undo (a create's ``process``).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Set by :meth:`finish`: the outcome is known, the job's thread settles the ticket.
    finished: threading.Event = field(default_factory=threading.Event)
    outcome: tuple[Any, BaseException | None] = (None, None)

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome (first one counts); the job's thread reports it (its
        telemetry span ends) and then settles the ticket."""
        if not self.finished.is_set():
            self.outcome = (value, error)
            self.finished.set()


class InFlight:
    """The jobs in flight, by sandbox id, and the manager that finishes them.

    ``attach(ref)`` (a manager starting) and ``done(job)`` (a job's thread finishing)
    exchange under one lock, so a job that becomes ready while managers change hands
    is finished exactly once: either it sees the new manager and tells it, or the new
    manager sees it ready when it attaches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._manager: Any = None
        self._closed = False
        # Jobs run on reused threads: starting a thread waits for it to run, a
        # hand-off the manager's turn would pay for every create on a busy host.
        self._threads = ThreadPoolExecutor(max_workers=JOB_THREADS, thread_name_prefix="sandbox-job")

    def run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (a job's thread body) on a thread of the table's."""
        self._threads.submit(fn)

    def aside(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` (a part of a job that may overlap the rest of it) on another
        thread of the table's while its job is the only one in flight; else (or once
        the runtime is stopping) on the caller's thread, before returning.

        Overlapping pays for a lone create or destroy (its parts wait on other
        components and the kernel). With other jobs in flight the CPUs are busy
        with them, and the hand-off each part costs is pure overhead (same-run:
        1-2 ms more host CPU per create and destroy at N = 30, docs/benchmarks.md).
        """
        with self._lock:
            alone = len(self._jobs) <= 1 and not self._closed
        if alone:
            try:
                return self._threads.submit(fn)
            except RuntimeError:  # shut down by close() meanwhile
                pass
        done: Future[Any] = Future()
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)
        return done

    def each(self, fn: Callable[[int], None], items: range, threads: int) -> None:
        """``fn(i)`` for each ``i`` of ``items`` (``fn`` raises nothing), on up to
        ``threads`` threads at once: the caller's, and threads of the table's (none
        for a lone item, or once the runtime is stopping); returns when all are done.

        For parts of a batch that mostly wait in the kernel, where overlapping the
        waits pays for the hand-offs (unlike :meth:`aside`'s CPU-bound parts).
        """
        share_out(lambda i: fn(items[i]), len(items), threads, self._threads.submit)

    def add(self, job: Job) -> Job | None:
        """Reserve the job's sandbox id: None, or the job that holds it already (a
        manager killed in the middle of its turn may still be adding one while its
        successor runs). Raises SandboxError if the runtime is stopping."""
        with self._lock:
            if self._closed:
                raise SandboxError("the runtime is stopping; no sandbox can be created or destroyed now")
            held = self._jobs.get(job.record.config.id)
            if held is None:
                self._jobs[job.record.config.id] = job
            return held

    def get(self, sandbox_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(sandbox_id)

    def remove(self, job: Job) -> None:
        with self._lock:
            if self._jobs.get(job.record.config.id) is job:
                del self._jobs[job.record.config.id]

    def attach(self, manager: Any) -> list[Job]:
        """A manager starting: it finishes jobs from now on; returns every job in flight."""
        with self._lock:
            self._manager = manager
            return list(self._jobs.values())

    def done(self, jobs: Iterable[Job]) -> tuple[Any, bool]:
        """A thread finished its part of ``jobs`` (a create, or a batch of destroys):
        returns (the manager to tell, closed)."""
        with self._lock:
            for job in jobs:
                job.ready = True
            return self._manager, self._closed

    def close(self) -> list[Job]:
        """The runtime is stopping: no job is finished by a manager any more; returns
        those whose thread is done (their cleanup is the caller's)."""
        with self._lock:
            self._closed = True
            self._manager = None
            ready = [j for j in self._jobs.values() if j.ready]
        self._threads.shutdown(wait=False)  # idle threads end; busy ones after their job
        return ready
