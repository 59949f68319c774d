"""Serialised reload jobs per sandbox, and retries with exponential backoff.

Pure logic for the watcher (:mod:`actors.watcher`), independent of watchdog:

- :class:`SerialRunner` runs one job per key at a time, each chain of jobs in its
  own short-lived worker thread (never the caller's). A job submitted while one
  runs for the same key is merged into ONE follow-up job (the union of the
  files), run when the current one ends: a save during a reload queues one more
  reload, never a second concurrent one and never a backlog.
- :func:`retry` calls a function again after a transient failure (a file read
  mid-write, a file missing right after a rename), waiting ``base``, ``2*base``,
  ``4*base``... between attempts; a compile error or a failed swap is final.

>>> ran = []
>>> runner = SerialRunner(lambda key, files: ran.append((key, files)))
>>> runner.submit("sb", ["/app/m.py"])
'started'
>>> runner.wait_idle(5)
True
>>> ran
[('sb', ['/app/m.py'])]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["SerialRunner", "is_transient", "retry"]

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Whether a failed reload is worth retrying as it is.

    OS errors are (a file vanished or was unreadable for a moment), and so is a
    compile error made only of the compiler's ``read-error`` diagnostics (a module
    that disappeared between listing and reading, as during an editor's atomic
    save). Other compile errors, failed swaps and everything else are final: the
    next save brings the fix. An exception may say so itself with a ``transient``
    attribute.

    >>> is_transient(FileNotFoundError("m.py")), is_transient(ValueError("bad"))
    (True, False)
    """
    flag = getattr(exc, "transient", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, OSError):
        return True
    diagnostics = getattr(exc, "diagnostics", None)
    if diagnostics and type(exc).__name__ == "CompileError":
        codes = {getattr(d, "code", None) or (d.get("code") if isinstance(d, dict) else None)
                 for d in diagnostics}
        return codes == {"read-error"}
    return False


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    base: float = 0.02,
    factor: float = 2.0,
    max_delay: float = 1.0,
    transient: Callable[[BaseException], bool] = is_transient,
    stop: threading.Event | None = None,
    on_retry: Callable[[int, float, BaseException], Any] | None = None,
) -> T:
    """Call ``fn`` until it returns, retrying transient failures with backoff.

    Waits on ``stop`` between attempts (no sleeping through a shutdown: once it is
    set, the last error is raised at once). ``on_retry(attempt, delay, error)`` is
    called before each wait.

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3: raise FileNotFoundError("m.py")
    ...     return "ok"
    >>> retry(flaky, base=0.001), len(calls)
    ('ok', 3)
    """
    waiter = stop if stop is not None else threading.Event()
    attempt = 1
    while True:
        try:
            return fn()
        except BaseException as exc:
            if attempt >= attempts or not transient(exc) or waiter.is_set():
                raise
            delay = min(base * factor ** (attempt - 1), max_delay)
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            if waiter.wait(delay):
                raise
            attempt += 1


@dataclass
class _Chain:
    follow_up: dict[str, None] | None = None  # ordered set of files
    thread: threading.Thread | None = None
    jobs: int = 0
    idle: bool = False  # its worker lingers, waiting for the key's next job
    dismissed: bool = False  # its lingering worker should end now


@dataclass
class _Stats:
    started: int = 0
    queued: int = 0
    merged: int = 0
    ran: int = 0
    running: dict[Hashable, _Chain] = field(default_factory=dict)


class SerialRunner:
    """Runs ``run(key, files)`` in worker threads, one at a time per key.

    :meth:`submit` returns ``"started"`` (a worker thread now runs it),
    ``"queued"`` (it becomes the follow-up of the running job) or ``"merged"``
    (a follow-up was already queued: the files were added to it). An exception
    escaping ``run`` is passed to ``on_error`` (default: ignored); report
    failures inside ``run``.

    A worker whose chain is done lingers up to ``linger`` seconds (blocked, not
    polling) for the key's next job, so a save made soon after a reload does not
    pay for a new thread; :meth:`close` dismisses lingering workers at once.
    """

    def __init__(
        self,
        run: Callable[[Hashable, list[str]], Any],
        *,
        name: str = "reload",
        on_error: Callable[[Hashable, BaseException], Any] | None = None,
        linger: float = 0.0,
    ) -> None:
        self._run = run
        self._name = name
        self._on_error = on_error
        self._linger = linger
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._stats = _Stats()

    def submit(self, key: Hashable, files: Iterable[str]) -> str:
        files = list(dict.fromkeys(files))
        with self._lock:
            if self._closed:
                return "closed"
            self._stats.started += 1
            chain = self._stats.running.get(key)
            if chain is not None and chain.idle:  # hand it to the lingering worker
                chain.idle = chain.dismissed = False
                chain.follow_up = dict.fromkeys(files)
                self._changed.notify_all()
                return "started"
            if chain is not None:
                self._stats.started -= 1
                if chain.follow_up is None:
                    chain.follow_up = dict.fromkeys(files)
                    self._stats.queued += 1
                    return "queued"
                chain.follow_up.update(dict.fromkeys(files))
                self._stats.merged += 1
                return "merged"
            chain = self._stats.running[key] = _Chain()
            chain.thread = threading.Thread(
                target=self._work, args=(key, chain, files), name=f"{self._name}:{key}", daemon=True
            )
            chain.thread.start()
            return "started"

    def _work(self, key: Hashable, chain: _Chain, files: list[str]) -> None:
        while True:
            try:
                self._run(key, files)
            except BaseException as exc:
                if self._on_error is not None:
                    try:
                        self._on_error(key, exc)
                    except BaseException:
                        pass
            with self._lock:
                chain.jobs += 1
                self._stats.ran += 1
                if chain.follow_up is None and self._linger > 0 and not self._closed:
                    chain.idle = True
                    self._changed.notify_all()
                    self._changed.wait_for(
                        lambda: not chain.idle or chain.dismissed or self._closed, self._linger
                    )
                if chain.follow_up is not None and not self._closed:
                    files, chain.follow_up = list(chain.follow_up), None
                    chain.idle = False
                    continue
                del self._stats.running[key]
                self._changed.notify_all()
                return

    def busy(self, key: Hashable) -> bool:
        """Whether a job for ``key`` runs now."""
        with self._lock:
            chain = self._stats.running.get(key)
            return chain is not None and not chain.idle

    def follow_up(self, key: Hashable) -> list[str] | None:
        """The files of the follow-up queued for ``key``, if any."""
        with self._lock:
            chain = self._stats.running.get(key)
            if chain is None or chain.idle or chain.follow_up is None:
                return None
            return list(chain.follow_up)

    def cancel(self, key: Hashable) -> None:
        """Drop the follow-up queued for ``key`` (the running job finishes) and
        dismiss its lingering worker."""
        with self._lock:
            chain = self._stats.running.get(key)
            if chain is None:
                return
            if chain.idle:
                chain.dismissed = True
                self._changed.notify_all()
            else:
                chain.follow_up = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            s = self._stats
            return {"started": s.started, "queued": s.queued, "merged": s.merged, "ran": s.ran,
                    "running": sum(not c.idle for c in s.running.values())}

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job runs (lingering workers do not count); False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(c.idle for c in self._stats.running.values()), timeout
            )

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Wait until every worker thread is done (lingering ones too); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._stats.running, timeout)

    def close(self, timeout: float | None = 0.0) -> bool:
        """Accept no more jobs and drop queued follow-ups; dismiss lingering workers;
        wait up to ``timeout`` for running jobs to end (they are never interrupted).
        Returns whether every worker is done."""
        with self._lock:
            self._closed = True
            for chain in self._stats.running.values():
                chain.follow_up = None
            self._changed.notify_all()
        return self.wait_ended(timeout)
