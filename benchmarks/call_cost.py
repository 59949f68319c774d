"""What one call costs on each side, against the bare child in the same run.

Run alone: ``python benchmarks/call_cost.py [BLOCKS] [CALLS_PER_BLOCK]`` (defaults
8 and 1000). A project child (``benchmarks/apps/echo.py``) and a bare child
(:mod:`benchmarks._bare`) each get blocks of sequential echo calls, alternating,
so a change in the machine's load falls on both. Per block: the calling thread's
CPU per call (``time.thread_time``), the child's (all its threads, field 1 of
``/proc/<pid>/task/*/schedstat``) and p50/p99; printed as the median [min..max]
over the blocks, with the p50 ratio and the CPU over the bare child's of each
pair of blocks (``docs/benchmarks.md``, "call5").

A figure for reading, not a benchmark with a target: ``bench_core`` measures the
round trip that has one.
"""

from __future__ import annotations

import glob
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _child_cpu_ns(pid: int) -> int:
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread ended meanwhile
            pass
    return total


def _block(call: Callable[[Any], Any], pid: int, n: int) -> tuple[float, float, float, float]:
    """(host CPU us, child CPU us) per call, p50 and p99 us, of ``n`` calls."""
    lat = []
    clock = time.perf_counter_ns
    c0, h0 = _child_cpu_ns(pid), time.thread_time_ns()
    for i in range(n):
        t0 = clock()
        got = call(["ping", i])
        lat.append(clock() - t0)
        if got[1] != i:
            raise AssertionError(f"echo mismatch: {got!r}")
    h1, c1 = time.thread_time_ns(), _child_cpu_ns(pid)
    lat.sort()
    return (h1 - h0) / n / 1e3, (c1 - c0) / n / 1e3, lat[n // 2] / 1e3, lat[n * 99 // 100] / 1e3


def _fmt(xs: list[float], digits: int = 1) -> str:
    return f"{statistics.median(xs):.{digits}f} [{min(xs):.{digits}f}..{max(xs):.{digits}f}]"


def main(blocks: int = 8, per_block: int = 1000) -> None:
    from benchmarks._floor import MpBareChild
    from benchmarks.bench_core import ProjectChild

    proj, bare = ProjectChild(f"call-cost-{os.getpid()}"), MpBareChild()
    try:
        systems = {"project": (lambda p: proj.call("echo", p), proj.pid),
                   "bare": (lambda p: bare.call("echo", p), bare.pid)}
        for call, _ in systems.values():  # warm up, untimed
            for i in range(500):
                call(["ping", i])
        res: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in systems}
        for b in range(blocks):
            for key in (("project", "bare") if b % 2 == 0 else ("bare", "project")):
                call, pid = systems[key]
                res[key].append(_block(call, pid, per_block))
    finally:
        proj.close()
        bare.close()
    for key, rows in res.items():
        host, child, p50, p99 = (list(col) for col in zip(*rows))
        print(f"{key:8s} host CPU/call {_fmt(host)} us  child CPU/call {_fmt(child)} us  "
              f"p50 {_fmt(p50)} us  p99 {_fmt(p99, 0)} us")
    pairs = list(zip(res["project"], res["bare"]))
    print(f"p50 ratio per pair of blocks {_fmt([p[2] / b[2] for p, b in pairs], 2)}; CPU per call "
          f"over the bare child's: host {_fmt([p[0] - b[0] for p, b in pairs])} us, "
          f"child {_fmt([p[1] - b[1] for p, b in pairs])} us")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
