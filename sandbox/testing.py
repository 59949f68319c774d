"""Helpers for testing code that runs on the runtime: waits without sleeping, leak checks.

``wait_for`` re-checks its predicate whenever any telemetry event is emitted (and
at short bounded intervals, for changes no event announces), so tests wait for
what they mean instead of sleeping for a guessed time.

- :func:`wait_for` ``(predicate_or_event, timeout)``: wait for a condition;
- :func:`wait_for_reload` ``(sandbox, timeout)``: wait until a hot reload of the
  sandbox finishes (the ``sandbox.reload.stop`` / ``.exception`` telemetry events);
- :func:`assert_sandbox_running` ``(sandbox)``: its status is ``running`` and its
  process is alive;
- :func:`assert_hot_reload_successful` ``(report_or_callable)``: a reload worked;
- :func:`stress` ``(sandbox, operations, duration=|count=)``: load from several
  threads, returning a :class:`StressReport` (throughput, p50/p95/p99, errors);
- :func:`snapshot` / :func:`leaks` / :func:`warm_up`: the leak check behind the
  ``sandbox_runtime`` fixture of the pytest plugin.

>>> import threading
>>> flag = threading.Event()
>>> threading.Timer(0.01, flag.set).start()
>>> wait_for(flag.is_set, timeout=2)
True
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime import telemetry

__all__ = [
    "wait_for",
    "wait_for_reload",
    "assert_sandbox_running",
    "assert_hot_reload_successful",
    "stress",
    "StressReport",
    "Snapshot",
    "snapshot",
    "leaks",
    "process_alive",
    "warm_up",
]

_cond = threading.Condition()
_generation = 0  # bumped by every event, so a wake-up between two checks is not lost
_HANDLER_ID = "sandbox.testing.wake"


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
    #: ``fd -> (st_dev, st_ino)``: tells a new file apart from an old one that
    #: happens to get the number of a descriptor closed since.
    fd_ids: Mapping[int, tuple[int, int]] = field(default_factory=dict, compare=False)


def warm_up() -> None:
    """Start the process-global helper (the fork server) now.

    It lives as long as the host; started inside a test it would look like a leak.
    """
    from runtime.host.forkserver import ensure_running

    ensure_running()


def snapshot() -> Snapshot:
    """What this process owns now (the long-lived fork server excluded)."""
    import psutil

    from runtime.host.forkserver import helper_fds, helper_pids, helper_threads, server_pid

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
    threads = {t.ident for t in threading.enumerate() if t.ident is not None} - helper_threads()
    fd_ids: dict[int, tuple[int, int]] = {}
    skip = helper_fds()
    for name in os.listdir("/proc/self/fd"):
        if int(name) in skip:
            continue
        try:  # the descriptor listdir itself used is closed by now: skipped
            st = os.fstat(int(name))
        except OSError:
            continue
        fd_ids[int(name)] = (st.st_dev, st.st_ino)
    return Snapshot(frozenset(kids - helpers), frozenset(threads), frozenset(fd_ids), fd_ids)


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
    new_fds = {fd for fd in now.fds if fd not in before.fds or
               (fd in now.fd_ids and fd in before.fd_ids and now.fd_ids[fd] != before.fd_ids[fd])}
    for fd in sorted(new_fds):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        problems.append(f"fd {fd} still open: {target}")
    return problems


# -- sandboxes -------------------------------------------------------------------------


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie, or a process that ends while it is looked
    at, does not): for waiting, from outside, until a sandbox's process is gone.

    >>> import os
    >>> process_alive(os.getpid()), process_alive(None)
    (True, False)
    """
    if pid is None:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def assert_sandbox_running(sandbox: Any, *, timeout: float = 0.0) -> dict[str, Any]:
    """Assert that ``sandbox`` is ``running`` and its process alive; return its info.

    With ``timeout``, first wait up to that many seconds for it to get there (a
    sandbox that is restarting or reloading passes once it is back). The assertion
    message gives the status, the last error and the recent status history.
    """

    def running() -> dict[str, Any] | None:
        info = sandbox.info()
        return info if info["status"] == "running" and process_alive(info.get("pid")) else None

    if timeout > 0:
        try:
            return wait_for(running, timeout)
        except TimeoutError:
            pass
    info = sandbox.info()
    problems = []
    if info["status"] != "running":
        problems.append(f"its status is {info['status']!r}")
    pid = info.get("pid")
    if pid is None:
        problems.append("it has no process")
    elif not process_alive(pid):
        problems.append(f"its process {pid} is not alive")
    if not problems:
        return info
    text = f"sandbox {info.get('id', sandbox)!r} is not running: " + "; ".join(problems)
    if info.get("last_error"):
        text += f"\n  last error: {info['last_error']}"
    history = info.get("status_history") or []
    if history:
        text += "\n  recent statuses: " + " -> ".join(str(h[0]) for h in history[-6:])
    raise AssertionError(text)


def _field(report: Any, name: str, default: Any = None) -> Any:
    if isinstance(report, Mapping):
        return report.get(name, default)
    return getattr(report, name, default)


def assert_hot_reload_successful(
    report_or_callable: Any, *, changed: Iterable[str] | None = None
) -> Any:
    """Assert that a hot reload worked; return its report.

    Accepts a :class:`~sandbox.hotreload.ReloadReport`, the dict of
    ``Runtime.reload_status`` or :func:`wait_for_reload`, a callable doing the reload
    (``lambda: sb.hot_reload()``: an exception it raises becomes the assertion
    message, with the compiler's diagnostics), or a Sandbox handle (its last
    reload). With ``changed``, also asserts exactly which modules changed.
    """
    report = report_or_callable
    if hasattr(report, "runtime") and hasattr(report, "id") and hasattr(report, "hot_reload"):
        report = report.runtime.reload_status(report.id)
        if report is None:
            raise AssertionError("the sandbox has not been reloaded yet")
    elif callable(report) and not isinstance(report, Mapping):
        try:
            report = report()
        except Exception as exc:
            text = f"hot reload failed: {type(exc).__name__}: {exc}"
            diagnostics = getattr(exc, "diagnostics", None)
            if diagnostics:
                text += "\n  " + "\n  ".join(str(d) for d in diagnostics)
            raise AssertionError(text) from exc
    if report is None:
        raise AssertionError("no reload report (no reload has happened)")
    ok = _field(report, "ok")
    if not ok:
        text = f"hot reload of {_field(report, 'sandbox')!r} failed: {_field(report, 'error')}"
        diagnostics = _field(report, "diagnostics")
        if diagnostics:
            text += "\n  " + "\n  ".join(str(d) for d in diagnostics)
        raise AssertionError(text)
    if changed is not None:
        want, got = sorted(changed), sorted(_field(report, "changed") or [])
        if want != got:
            raise AssertionError(f"the reload changed {got}, expected {want}")
    return report


_reload_waiters = itertools.count(1)
RELOAD_EVENTS = ("sandbox.reload.stop", "sandbox.reload.exception")


def wait_for_reload(sandbox: Any, timeout: float = 10.0, *, since: float | None = None) -> dict[str, Any]:
    """Wait until a hot reload of ``sandbox`` finishes; return what it did.

    Waits for the next ``sandbox.reload.stop`` or ``sandbox.reload.exception``
    telemetry event of that sandbox (a reload by ``hot_reload`` or by the file
    watcher). A reload that finished before the call is missed, unless ``since``
    (a ``time.time()`` taken before triggering it) is given: then a reload that
    started at or after ``since`` and has already finished counts too.

    Returns the reload's report as ``Runtime.reload_status`` gives it (``sandbox``,
    ``ok``, ``error``, ``modules``, ``changed``, ``versions``, ``duration``,
    ``diagnostics``, ...); a failed reload is returned, not raised (check it with
    :func:`assert_hot_reload_successful`).
    Raises ``TimeoutError`` if no reload finishes within ``timeout`` seconds.
    """
    sandbox_id = sandbox.id
    runtime_name = sandbox.runtime.name
    seen: list[dict[str, Any]] = []
    handler_id = f"sandbox.testing.reload.{next(_reload_waiters)}"

    def on_event(event: str, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if event not in RELOAD_EVENTS or md.get("sandbox") != sandbox_id:
            return
        if md.get("runtime") not in (None, runtime_name):
            return
        ok = event.endswith(".stop")
        seen.append({
            "sandbox": sandbox_id,
            "ok": ok,
            "error": None if ok else f"{md.get('kind')}: {md.get('reason')}",
            "modules": list(md.get("modules") or []),
            "changed": list(md.get("changed") or []),
            "versions": dict(md.get("versions") or {}),
            "duration": m.get("duration"),
        })
        notify()

    def status() -> dict[str, Any] | None:
        got = sandbox.runtime.reload_status(sandbox_id)
        return dict(got) if got and got.get("kind", "reload") == "reload" else None

    def finished() -> dict[str, Any] | None:
        if seen:
            return seen[0]
        if since is not None:
            got = status()
            if got and got.get("at", 0) >= since:
                return got
        return None

    deadline = time.monotonic() + timeout
    telemetry.attach(handler_id, "sandbox.reload", on_event)
    try:
        before = status()
        outcome = wait_for(
            finished, timeout,
            message=f"no hot reload of sandbox {sandbox_id!r} finished within {timeout}s",
        )
    finally:
        telemetry.detach(handler_id)
    if "at" in outcome:
        return outcome
    # The event fires as the reload ends, a moment before its report is stored:
    # wait (briefly) for the full report, so reload_status() agrees with the result.
    try:
        return wait_for(
            lambda: (got := status()) and got != before and got.get("ok") == outcome["ok"] and got,
            max(0.5, deadline - time.monotonic()),
        )
    except TimeoutError:
        return outcome


# -- stress ------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclass
class StressReport:
    """What :func:`stress` measured. Latencies are in seconds, of successful operations.

    ``count`` operations ran (``succeeded`` + ``errors``) in ``duration`` seconds;
    ``throughput`` is successful operations per second. ``error_types`` counts the
    exceptions by class name, ``error_samples`` keeps the first few messages.
    ``by_operation`` has the same figures per named operation.
    """

    count: int
    succeeded: int
    errors: int
    duration: float
    throughput: float
    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    threads: int
    error_types: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    by_operation: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        ms = 1000.0
        return (
            f"{self.count} operations in {self.duration:.2f} s on {self.threads} threads: "
            f"{self.throughput:,.0f} ops/s, {self.errors} errors; latency "
            f"p50 {self.p50 * ms:.2f} ms, p95 {self.p95 * ms:.2f} ms, p99 {self.p99 * ms:.2f} ms"
        )


def _operations(sandbox: Any, operations: Any) -> list[tuple[str, Callable[[], Any]]]:
    """``[(name, zero-argument callable)]`` from what :func:`stress` accepts."""

    def is_call(op: Any) -> bool:
        return isinstance(op, tuple) and len(op) == 2 and isinstance(op[0], str)

    items: list[tuple[str | None, Any]]
    if isinstance(operations, Mapping):
        items = [(str(k), v) for k, v in operations.items()]
    elif callable(operations) or is_call(operations):
        items = [(None, operations)]
    else:
        items = [(None, op) for op in operations]
    if not items:
        raise ValueError("stress() needs at least one operation")
    out: list[tuple[str, Callable[[], Any]]] = []
    for i, (name, op) in enumerate(items):
        if is_call(op):
            actor, request = op
            fn: Callable[[], Any] = functools.partial(sandbox.call, actor, request)
            name = name or f"{actor} {request!r}"
        elif callable(op):
            try:
                takes_arg = any(
                    p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                    for p in inspect.signature(op).parameters.values()
                )
            except (TypeError, ValueError):
                takes_arg = True
            fn = functools.partial(op, sandbox) if takes_arg else op
            label = getattr(op, "__name__", "")
            name = name or (label if label and label != "<lambda>" else f"op{i}")
        else:
            raise TypeError(
                f"stress() operation {op!r} is neither a callable (given the sandbox) "
                "nor an (actor, request) pair"
            )
        out.append((name, fn))
    return out


def stress(
    sandbox: Any,
    operations: Any,
    *,
    duration: float | None = None,
    count: int | None = None,
    threads: int = 4,
) -> StressReport:
    """Run ``operations`` against ``sandbox`` from ``threads`` threads; report on it.

    ``operations`` is a callable (called with the sandbox, or with nothing if it
    takes no argument), an ``(actor, request)`` pair meaning ``sandbox.call(actor,
    request)``, a list of those (each thread cycles through them), or a dict
    ``{name: operation}`` (reported per name too). Stops after ``count`` operations
    in all, after ``duration`` seconds, or at whichever comes first if both are
    given. Exceptions are counted as errors, never raised.

    >>> report = stress(None, lambda: 1 + 1, count=100, threads=2)
    >>> report.count, report.errors
    (100, 0)
    """
    if duration is None and count is None:
        raise ValueError("stress() needs duration= (seconds) or count= (operations), or both")
    if count is not None and count < 0:
        raise ValueError(f"count={count!r} must be >= 0")
    if duration is not None and duration < 0:
        raise ValueError(f"duration={duration!r} must be >= 0")
    if threads < 1:
        raise ValueError(f"threads={threads!r} must be >= 1")
    ops = _operations(sandbox, operations)
    names = [name for name, _ in ops]
    lock = threading.Lock()
    issued = 0
    start_line = threading.Barrier(threads + 1)
    deadline = math.inf
    per_thread: list[tuple[dict[str, list[float]], dict[str, Counter[str]], list[str]]] = []

    def claim() -> bool:
        nonlocal issued
        if time.monotonic() >= deadline:
            return False
        if count is None:
            return True
        with lock:
            if issued >= count:
                return False
            issued += 1
            return True

    def worker(offset: int) -> None:
        latencies: dict[str, list[float]] = {name: [] for name in names}
        errors: dict[str, Counter[str]] = {name: Counter() for name in names}
        samples: list[str] = []
        per_thread.append((latencies, errors, samples))
        start_line.wait()
        clock = time.perf_counter
        i = offset
        while claim():
            name, fn = ops[i % len(ops)]
            i += 1
            t0 = clock()
            try:
                fn()
            except Exception as exc:
                errors[name][type(exc).__name__] += 1
                if len(samples) < 10:
                    samples.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
            else:
                latencies[name].append(clock() - t0)

    workers = [
        threading.Thread(target=worker, args=(i,), name=f"stress-{i}", daemon=True)
        for i in range(threads)
    ]
    for t in workers:
        t.start()
    t_start = time.perf_counter()
    if duration is not None:
        deadline = time.monotonic() + duration
    start_line.wait()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - t_start

    def figures(lat: list[float], errs: Counter[str]) -> dict[str, Any]:
        lat.sort()
        n_err = sum(errs.values())
        return {
            "count": len(lat) + n_err,
            "succeeded": len(lat),
            "errors": n_err,
            "p50": _percentile(lat, 50),
            "p95": _percentile(lat, 95),
            "p99": _percentile(lat, 99),
            "max": lat[-1] if lat else 0.0,
            "mean": sum(lat) / len(lat) if lat else 0.0,
        }

    all_lat: list[float] = []
    all_err: Counter[str] = Counter()
    samples: list[str] = []
    by_operation: dict[str, dict[str, Any]] = {}
    for name in names:
        lat = [x for lats, _, _ in per_thread for x in lats[name]]
        errs: Counter[str] = Counter()
        for _, e, _ in per_thread:
            errs.update(e[name])
        all_lat.extend(lat)
        all_err.update(errs)
        by_operation[name] = figures(lat, errs)
    for _, _, s in per_thread:
        samples.extend(s)
    total = figures(all_lat, all_err)
    return StressReport(
        count=total["count"],
        succeeded=total["succeeded"],
        errors=total["errors"],
        duration=elapsed,
        throughput=total["succeeded"] / elapsed if elapsed > 0 else 0.0,
        p50=total["p50"],
        p95=total["p95"],
        p99=total["p99"],
        max=total["max"],
        mean=total["mean"],
        threads=threads,
        error_types=dict(all_err),
        error_samples=samples[:10],
        by_operation=by_operation,
    )
