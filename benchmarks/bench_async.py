"""asyncio calls against threaded calls, in-process and over the control endpoint.

Run alone: ``python benchmarks/bench_async.py [--quick] [--json PATH]``.

In one run, on one counter sandbox of one runtime:

- **in-process**: ``N`` calls awaited through :func:`sandbox.start_async`'s
  ``AsyncSandbox.call`` (``WINDOW`` in flight at a time; replies resolve futures from
  the channel's reader, no thread per call), against the same ``N`` blocking
  ``Sandbox.call`` spread over ``THREADS`` threads (how an application without
  asyncio gets concurrency);
- **over the endpoint** (a unix socket): ``connect_async`` with ``WINDOW`` in
  flight, against the blocking ``connect`` client used from ``THREADS`` threads.

Figures are calls per second (higher is better), median of the runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from benchmarks._harness import Record

COUNTER = str(Path(__file__).resolve().parent.parent / "examples" / "counter")
WINDOW = 100
THREADS = 16


async def _async_rate(call: Any, n: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, WINDOW):
        await asyncio.gather(*(call("counter", "incr") for _ in range(min(WINDOW, n - start))))
    return n / (time.perf_counter() - t0)


def _threaded_rate(call: Any, n: int) -> float:
    with ThreadPoolExecutor(THREADS) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda _: call("counter", "incr"), range(n)))
        return n / (time.perf_counter() - t0)


def main(quick: bool = False) -> list[Record]:
    import sandbox
    from benchmarks._harness import make_record, pick, progress
    from sandbox.aio import AsyncRuntime

    n, runs = pick(quick, full=(3000, 7), quick_sizes=(500, 3), smoke_sizes=(40, 1))
    path = f"unix:{os.path.join(tempfile.mkdtemp(prefix='bench-async-'), 's.sock')}"
    local_async: list[float] = []
    local_threads: list[float] = []
    remote_async: list[float] = []
    remote_threads: list[float] = []
    with sandbox.start(listen=path) as rt:
        sb = rt.create_sandbox("bench-async", COUNTER)
        asb = AsyncRuntime(rt).sandbox("bench-async")

        async def remote_run() -> float:
            async with await sandbox.connect_async(path) as remote:
                return await _async_rate(remote.sandbox("bench-async").call, n)

        with sandbox.connect(path) as remote:
            rsb = remote.sandbox("bench-async")
            for i in range(runs):  # interleaved, so drift hits both sides alike
                local_async.append(asyncio.run(_async_rate(asb.call, n)))
                local_threads.append(_threaded_rate(sb.call, n))
                remote_async.append(asyncio.run(remote_run()))
                remote_threads.append(_threaded_rate(rsb.call, n))
                progress(f"bench_async: run {i + 1}/{runs}: in-process {local_async[-1]:.0f} vs "
                         f"{local_threads[-1]:.0f}, endpoint {remote_async[-1]:.0f} vs "
                         f"{remote_threads[-1]:.0f} calls/s")
    os.rmdir(os.path.dirname(path[5:]))
    notes = f"{n} calls per run, {WINDOW} awaited at a time; baseline {THREADS} threads"
    return [
        make_record("async_calls", "in-process calls/s (start_async)", local_async, "calls/s",
                    f"blocking Sandbox.call from {THREADS} threads", local_threads,
                    target="ratio >= 1.0", higher_is_better=True, notes=notes),
        make_record("async_calls", "endpoint calls/s (connect_async)", remote_async, "calls/s",
                    f"blocking connect() client from {THREADS} threads", remote_threads,
                    target="ratio >= 1.0", higher_is_better=True, notes=notes),
    ]


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="asyncio calls against threaded calls."))
