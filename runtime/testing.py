"""Helpers for testing code that runs on the runtime: waits without sleeping, leak checks.

``wait_for`` re-checks its predicate whenever any telemetry event is emitted (and
at short bounded intervals, for changes no event announces), so tests wait for
what they mean instead of sleeping for a guessed time.

>>> import threading
>>> flag = threading.Event()
>>> threading.Timer(0.01, flag.set).start()
>>> wait_for(flag.is_set, timeout=2)
True
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import telemetry

__all__ = ["wait_for", "Snapshot", "snapshot", "leaks", "warm_up"]

_cond = threading.Condition()
_generation = 0  # bumped by every event, so a wake-up between two checks is not lost
_HANDLER_ID = "runtime.testing.wake"


def notify() -> None:
    """Wake every :func:`wait_for` (for changes that emit no telemetry)."""
    global _generation
    with _cond:
        _generation += 1
        _cond.notify_all()


def _on_event(_event: str, _m: Any, _md: Any) -> None:
    notify()


def _ensure_attached() -> None:
    if _HANDLER_ID not in telemetry.handlers():
        try:
            telemetry.attach(_HANDLER_ID, "", _on_event)
        except ValueError:  # attached concurrently
            pass


def wait_for(
    condition: Callable[[], Any] | threading.Event,
    timeout: float = 5.0,
    *,
    message: str | None = None,
    interval: float = 0.02,
) -> Any:
    """Wait until ``condition()`` is truthy (or the Event is set); return its value.

    Woken by every telemetry event, and at most every ``interval`` seconds for
    changes no event announces. Raises ``TimeoutError`` after ``timeout`` seconds,
    with ``message`` if given.
    """
    if isinstance(condition, threading.Event):
        if condition.wait(timeout):
            return True
        raise TimeoutError(message or f"event not set within {timeout}s")
    _ensure_attached()
    deadline = time.monotonic() + timeout
    while True:
        with _cond:
            seen = _generation
        value = condition()  # outside the lock: it may call actors that emit events
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            name = getattr(condition, "__name__", repr(condition))
            raise TimeoutError(message or f"condition {name} not met within {timeout}s")
        with _cond:
            if _generation == seen:
                _cond.wait(min(remaining, interval))


@dataclass(frozen=True)
class Snapshot:
    """Processes, threads and file descriptors of this process at one moment."""

    children: frozenset[int]
    threads: frozenset[int]
    fds: frozenset[int]


def warm_up() -> None:
    """Start the process-global helpers (forkserver, resource tracker) now.

    They live as long as the host; started inside a test they would look like a leak.
    """
    from multiprocessing import forkserver as mp_forkserver
    from multiprocessing import resource_tracker

    from .forkserver import context

    context()
    mp_forkserver.ensure_running()
    resource_tracker.ensure_running()


def snapshot() -> Snapshot:
    """What this process owns now (multiprocessing's long-lived helpers excluded)."""
    import psutil

    from .forkserver import helper_pids, server_pid

    helpers = helper_pids()
    me = psutil.Process()
    kids: set[int] = set()
    try:
        kids = {p.pid for p in me.children(recursive=True)}
        fs = server_pid()
        if fs is not None:  # sandboxes are the forkserver's children
            try:
                kids |= {p.pid for p in psutil.Process(fs).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    threads = {t.ident for t in threading.enumerate() if t.ident is not None}
    fds = {int(fd) for fd in os.listdir("/proc/self/fd")}
    return Snapshot(frozenset(kids - helpers), frozenset(threads), frozenset(fds))


def leaks(before: Snapshot, timeout: float = 5.0) -> list[str]:
    """What appeared since ``before`` and did not go away within ``timeout``.

    Processes and threads get until the deadline to finish; returns one line per leak.
    """
    import psutil

    problems: list[str] = []

    def settled() -> bool:
        now = snapshot()
        return not (now.children - before.children) and not (now.threads - before.threads)

    try:
        wait_for(settled, timeout)
    except TimeoutError:
        pass
    now = snapshot()
    for pid in sorted(now.children - before.children):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())[:120]
        except psutil.Error:
            continue
        problems.append(f"process {pid} still running: {cmd}")
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident in sorted(now.threads - before.threads):
        if ident in names:
            problems.append(f"thread {names[ident]!r} still running")
    for fd in sorted(now.fds - before.fds):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        problems.append(f"fd {fd} still open: {target}")
    return problems
