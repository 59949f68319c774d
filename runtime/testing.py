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

__all__ = ["wait_for", "Snapshot", "snapshot", "leaks"]

_cond = threading.Condition()
_attached = False
_attach_lock = threading.Lock()


def _notify(_event: str, _m: Any, _md: Any) -> None:
    with _cond:
        _cond.notify_all()


def _ensure_attached() -> None:
    global _attached
    with _attach_lock:
        if not _attached or "runtime.testing" not in telemetry.handlers():
            telemetry.detach("runtime.testing")
            telemetry.attach("runtime.testing", "", _notify)
            _attached = True


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
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(message or f"condition {getattr(condition, '__name__', condition)!r} "
                               f"not met within {timeout}s")
        with _cond:
            _cond.wait(min(remaining, interval))


@dataclass(frozen=True)
class Snapshot:
    """Processes, threads and file descriptors of this process at one moment."""

    children: frozenset[int]
    threads: frozenset[int]
    fds: frozenset[int]


def _forkserver_pid() -> int | None:
    try:
        from multiprocessing import forkserver

        return forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    except Exception:
        return None


def snapshot() -> Snapshot:
    """What this process owns now (the forkserver, shared by every runtime, excluded)."""
    import psutil

    me = psutil.Process()
    fs = _forkserver_pid()
    try:
        kids = {p.pid for p in me.children(recursive=True) if p.pid != fs}
        if fs is not None:  # the forkserver's own children are the sandboxes
            try:
                kids |= {p.pid for p in psutil.Process(fs).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        kids = set()
    threads = {t.ident for t in threading.enumerate() if t.ident is not None}
    fds = set(int(fd) for fd in os.listdir("/proc/self/fd"))
    return Snapshot(frozenset(kids), frozenset(threads), frozenset(fds))


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
        if "forkserver" in target:
            continue
        problems.append(f"fd {fd} still open: {target}")
    return problems
