"""A load harness for your own app: many callers, latency percentiles, throughput, errors.

``sandbox bench --app DIR --call ACTOR REQUEST`` runs it from the command line;
:func:`run_load` (threads) and :func:`run_load_async` (asyncio tasks) are the
library form, and the project's own throughput benchmark uses :func:`run_load`
too, so users and the project measure the same way. A run is a warm-up (calls
made and not counted), then the measured window: ``duration`` seconds, or until
``calls`` calls were made. Every caller calls as fast as it can, one call at a
time (a closed loop: ``concurrency`` calls in flight).

The result (:class:`LoadResult`) gives latency p50/p90/p99/max of the calls that
succeeded, throughput (calls per second, failed ones included) and the errors by
type; :meth:`LoadResult.records` turns it into the JSON records and table of the
project's benchmarks (:mod:`sandbox.records`).

>>> result = run_load(lambda worker: worker * 2, concurrency=2, calls=100, warmup=0)
>>> result.calls, result.errors, result.concurrency
(100, 0, 2)
>>> [r.figure for r in result.records()][:2]
['p50 latency', 'p90 latency']
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.records import Record, make_record, percentile

__all__ = [
    "LoadResult",
    "parse_request",
    "progress_line",
    "run_load",
    "run_load_async",
    "summary",
]

#: How often the progress callback runs (seconds).
PROGRESS_EVERY = 1.0

Progress = Callable[[float, int, int], None]


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured.

    ``latencies_us`` are the successful calls' latencies in microseconds, sorted;
    ``errors`` counts the calls that raised, ``error_types`` by exception type.

    >>> r = LoadResult("x", 1, "threads", 2.0, (10.0, 20.0, 30.0), 1, {"CallTimeout": 1})
    >>> r.calls, r.throughput, r.p50
    (4, 2.0, 20.0)
    """

    label: str
    concurrency: int
    mode: str  # "threads" or "asyncio"
    seconds: float
    latencies_us: tuple[float, ...]
    errors: int = 0
    error_types: dict[str, int] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        """Calls made in the measured window (failed ones included)."""
        return len(self.latencies_us) + self.errors

    @property
    def throughput(self) -> float:
        """Calls per second over the measured window."""
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def _pct(self, q: float) -> float:
        return percentile(self.latencies_us, q) if self.latencies_us else float("nan")

    @property
    def p50(self) -> float:
        return self._pct(50)

    @property
    def p90(self) -> float:
        return self._pct(90)

    @property
    def p99(self) -> float:
        return self._pct(99)

    @property
    def max(self) -> float:
        return self.latencies_us[-1] if self.latencies_us else float("nan")

    def records(self, benchmark: str = "load") -> list[Record]:
        """The result as benchmark records (no baseline: a user's app has none).

        >>> r = LoadResult("counter incr", 4, "threads", 1.0, (5.0,) * 10)
        >>> [(x.figure, x.value, x.unit) for x in r.records()][-2:]
        [('throughput', 10.0, 'calls/s'), ('errors', 0.0, 'calls')]
        """
        note = f"{self.label}; {self.concurrency} {self.mode} callers; {self.seconds:.1f} s"
        if self.error_types:
            note += "; errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.error_types.items()))
        base = "-"
        out = [
            make_record(benchmark, f"{name} latency", [value], "us", base, None, notes=note)
            for name, value in (("p50", self.p50), ("p90", self.p90), ("p99", self.p99),
                                ("max", self.max))
            if value == value  # NaN: no call succeeded
        ]
        out.append(make_record(benchmark, "throughput", [self.throughput], "calls/s", base, None,
                               higher_is_better=True, notes=note))
        out.append(make_record(benchmark, "errors", [float(self.errors)], "calls", base, None,
                               notes=note))
        return out


def _check(concurrency: int, duration: float | None, calls: int | None, warmup: float) -> None:
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"invalid concurrency={concurrency!r}: expected an int >= 1")
    if (duration is None) == (calls is None):
        raise ValueError("give exactly one of duration= (seconds) or calls= (a count)")
    if duration is not None and not duration > 0:
        raise ValueError(f"invalid duration={duration!r}: expected seconds > 0")
    if calls is not None and (not isinstance(calls, int) or calls < 1):
        raise ValueError(f"invalid calls={calls!r}: expected an int >= 1")
    if warmup < 0:
        raise ValueError(f"invalid warmup={warmup!r}: expected seconds >= 0")


class _Samples:
    """Per-caller latencies and errors, merged into a LoadResult at the end."""

    def __init__(self, concurrency: int) -> None:
        self.lat: list[list[int]] = [[] for _ in range(concurrency)]
        self.errs: list[dict[str, int]] = [{} for _ in range(concurrency)]

    def done(self) -> tuple[int, int]:
        """(calls so far, errors so far); read while callers run, so approximate."""
        errors = sum(sum(e.values()) for e in self.errs)
        return sum(len(x) for x in self.lat) + errors, errors

    def result(self, label: str, mode: str, seconds: float) -> LoadResult:
        merged = sorted(itertools.chain.from_iterable(self.lat))
        types: dict[str, int] = {}
        for e in self.errs:
            for k, v in e.items():
                types[k] = types.get(k, 0) + v
        return LoadResult(label, len(self.lat), mode, seconds,
                          tuple(ns / 1000 for ns in merged), sum(types.values()), types)


def run_load(
    call: Callable[[int], Any],
    *,
    concurrency: int = 1,
    duration: float | None = None,
    calls: int | None = None,
    warmup: float = 0.5,
    label: str = "",
    progress: Progress | None = None,
) -> LoadResult:
    """Call ``call(worker)`` from ``concurrency`` threads as fast as they go; measure it.

    ``worker`` is the caller's index (0 .. concurrency-1), e.g. to spread callers
    over several sandboxes. Give ``duration`` (seconds) or ``calls`` (a count);
    ``warmup`` seconds of calls come first and are not counted. ``progress(elapsed,
    calls, errors)`` runs about every second in the calling thread. An exception
    from ``call`` counts as an error and the caller carries on.

    >>> import sandbox
    >>> with sandbox.start() as rt:
    ...     sb = rt.create_sandbox("doc-load", "examples/counter")
    ...     r = run_load(lambda w: sb.call("counter", "incr"), concurrency=2, calls=50)
    >>> r.calls, r.errors
    (50, 0)
    """
    _check(concurrency, duration, calls, warmup)
    samples = _Samples(concurrency)
    start = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    finished = threading.Event()  # every caller is done (calls= reached)
    left = [concurrency]
    left_lock = threading.Lock()
    tickets = itertools.count() if calls is not None else None
    clock = time.perf_counter_ns

    def caller(w: int) -> None:
        until = time.monotonic() + warmup
        while time.monotonic() < until:
            try:
                call(w)
            except Exception:  # a warm-up error is the measured run's business
                pass
        start.wait()
        lat, errs = samples.lat[w], samples.errs[w]
        try:
            while not stop.is_set():
                if tickets is not None and next(tickets) >= calls:  # type: ignore[operator]
                    break
                t0 = clock()
                try:
                    call(w)
                except Exception as exc:
                    name = type(exc).__name__
                    errs[name] = errs.get(name, 0) + 1
                    continue
                lat.append(clock() - t0)
        finally:
            with left_lock:
                left[0] -= 1
                if not left[0]:
                    finished.set()

    threads = [threading.Thread(target=caller, args=(w,), name=f"load-{w}", daemon=True)
               for w in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    deadline = None if duration is None else t0 + duration
    try:
        while not finished.is_set():
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                break
            wait = PROGRESS_EVERY if deadline is None else min(PROGRESS_EVERY, deadline - now)
            finished.wait(wait)
            if progress is not None:
                progress(time.perf_counter() - t0, *samples.done())
    finally:
        stop.set()
        for t in threads:
            t.join()
    return samples.result(label, "threads", time.perf_counter() - t0)


async def run_load_async(
    call: Callable[[int], Awaitable[Any]],
    *,
    concurrency: int = 1,
    duration: float | None = None,
    calls: int | None = None,
    warmup: float = 0.5,
    label: str = "",
    progress: Progress | None = None,
) -> LoadResult:
    """:func:`run_load` with ``concurrency`` asyncio tasks awaiting ``call(worker)``.

    >>> async def echo(worker):
    ...     return worker
    >>> asyncio.run(run_load_async(echo, concurrency=3, calls=30, warmup=0)).calls
    30
    """
    _check(concurrency, duration, calls, warmup)
    samples = _Samples(concurrency)
    tickets = itertools.count() if calls is not None else None
    clock = time.perf_counter_ns
    stopped = False

    async def caller(w: int) -> None:
        lat, errs = samples.lat[w], samples.errs[w]
        while not stopped:
            if tickets is not None and next(tickets) >= calls:  # type: ignore[operator]
                return
            t0 = clock()
            try:
                await call(w)
            except Exception as exc:
                name = type(exc).__name__
                errs[name] = errs.get(name, 0) + 1
                continue
            lat.append(clock() - t0)

    async def warm(w: int) -> None:
        until = time.monotonic() + warmup
        while time.monotonic() < until:
            try:
                await call(w)
            except Exception:
                pass

    await asyncio.gather(*(warm(w) for w in range(concurrency)))
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(caller(w)) for w in range(concurrency)]
    deadline = None if duration is None else t0 + duration
    try:
        while not all(t.done() for t in tasks):
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                break
            wait = PROGRESS_EVERY if deadline is None else min(PROGRESS_EVERY, deadline - now)
            await asyncio.wait(tasks, timeout=wait)
            if progress is not None:
                progress(time.perf_counter() - t0, *samples.done())
    finally:
        stopped = True
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples.result(label, "asyncio", time.perf_counter() - t0)


def parse_request(text: str) -> Any:
    """A request given on the command line: JSON if it parses, else the plain string.

    >>> parse_request("incr"), parse_request('["add", 2]'), parse_request("3")
    ('incr', ['add', 2], 3)
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def progress_line(total: float | None, calls_wanted: int | None) -> Progress:
    """A ``progress`` callback printing one line per second on stderr."""

    def show(elapsed: float, calls: int, errors: int) -> None:
        if total is not None:
            where = f"{elapsed:5.1f}/{total:g} s"
        else:
            where = f"{calls:,}/{calls_wanted:,} calls"
        rate = calls / elapsed if elapsed > 0 else 0.0
        print(f"[{where}] {calls:,} calls, {rate:,.0f} calls/s, {errors} errors",
              file=sys.stderr, flush=True)

    return show


def summary(result: LoadResult) -> str:
    """One line: calls, throughput, p50/p99, errors.

    >>> summary(LoadResult("x", 1, "threads", 1.0, (10.0, 20.0)))
    '2 calls in 1.0 s (2 calls/s), p50 10.0 us, p99 20.0 us, 0 errors'
    """
    return (f"{result.calls:,} calls in {result.seconds:.1f} s ({result.throughput:,.0f} calls/s), "
            f"p50 {result.p50:.1f} us, p99 {result.p99:.1f} us, {result.errors} errors")
