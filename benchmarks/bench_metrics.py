"""What recording a call's metrics costs, against the call it records.

Run alone: ``python benchmarks/bench_metrics.py [--quick | --smoke] [--json PATH]``.

``Sandbox.call`` records every call into ``sandbox.metrics.CallMetrics`` (one
bisect and one uncontended lock). In one run, alternating, it measures:

- **observe_call per call**: the median time of one ``CallMetrics.observe_call``
  (over blocks of calls), against the p50 round trip of ``Sandbox.call`` to an
  idle counter sandbox, the thing being recorded. Target: ratio <= 0.1 (recording
  a call costs under a tenth of the call). This figure was a timed test
  (``test_recording_a_call_is_cheap``) before timed tests were banned from the suite.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from benchmarks._harness import Record

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"


def _observe_us(block: int) -> float:
    """Microseconds per ``observe_call``, over ``block`` calls into a fresh recorder."""
    from sandbox.metrics import CallMetrics

    calls = CallMetrics()
    t0 = time.perf_counter()
    for _ in range(block):
        calls.observe_call("s", 0.00004, True)
    return (time.perf_counter() - t0) / block * 1e6


def _call_p50_us(sb: object, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb.call("counter", "get")  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main(quick: bool = False) -> list[Record]:
    import sandbox
    from benchmarks._harness import make_record, pick, progress

    runs, block, calls = pick(quick, full=(7, 20_000, 2000), quick_sizes=(3, 20_000, 500),
                              smoke_sizes=(1, 200, 20))
    observe, roundtrip = [], []
    with sandbox.start() as rt:
        sb = rt.create_sandbox("bench-metrics", COUNTER)
        _call_p50_us(sb, max(10, calls // 10))  # warm
        for i in range(runs):  # alternate, so load elsewhere falls on both
            progress(f"bench_metrics: run {i + 1}/{runs}")
            gc.collect()
            observe.append(_observe_us(block))
            roundtrip.append(_call_p50_us(sb, calls))
    return [make_record(
        "call_metrics", "observe_call per recorded call", observe, "us",
        "Sandbox.call round trip p50 (the call recorded)", roundtrip, target="ratio <= 0.1",
        notes=f"{block} observe_call per run into a fresh CallMetrics; {calls} calls per run",
    )]


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="The cost of recording a call's metrics."))
