"""What the host's sandbox reader threads cost per call under load.

Run alone: ``python benchmarks/load_cost.py [SANDBOXES] [RUNS] [PARKS]`` (defaults
100, 3 and none). ``SANDBOXES`` counter sandboxes called by 4 host threads, each its own
share in turn (``bench_sandboxes``' load), in windows of 1.5 s; per window: the
calls/s, this (host) process's CPU per call, the sandboxes' CPU per call, and the
host's ``sandbox-reader`` threads' CPU and voluntary context switches per call
(``/proc/self/task/<tid>/schedstat`` and ``status``). Printed as the median
[min..max] over the windows (``docs/benchmarks.md``, "call6").

``PARKS``, e.g. ``0.05,1.0``: the windows take these values of the parked
readers' period (``runtime.host.parking.PERIOD``) in turn, one row of figures per
value, so the same sandboxes under the same load compare them.

A figure for reading, not a benchmark with a target: ``bench_sandboxes`` measures
the throughput that has one.
"""

from __future__ import annotations

import statistics
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WINDOW = 1.5


def _readers() -> tuple[int, int]:
    """CPU (ns) and voluntary switches so far of this process's sandbox reader threads."""
    cpu = switches = 0
    for thread in threading.enumerate():
        if not thread.name.startswith("sandbox-reader"):
            continue
        task = f"/proc/self/task/{thread.native_id}"
        try:
            with open(f"{task}/schedstat") as f:
                cpu += int(f.read().split()[0])
            with open(f"{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        switches += int(line.split()[1])
        except OSError:  # it ended meanwhile
            pass
    return cpu, switches


def main(n: int = 100, runs: int = 3, parks: tuple[float, ...] = ()) -> None:
    import sandbox
    from benchmarks.bench_sandboxes import _create, _throughput
    from runtime.host import parking

    parks = parks or (parking.PERIOD,)

    with sandbox.start() as rt:
        _create(rt, n, "t")
        sbs = [rt.sandbox(f"t-{i}") for i in range(n)]
        pids = [sb.pid for sb in sbs]
        rows = []
        for r in range(runs):
            parking.PERIOD = parks[r % len(parks)]
            cpu, switches = _readers()
            rate, host, child = _throughput(sbs, 4, WINDOW, pids)
            cpu2, switches2 = _readers()
            calls = rate * WINDOW  # the readers are counted over the warm-up too: an upper bound
            rows.append((rate, host, child, (cpu2 - cpu) / 1000 / calls, (switches2 - switches) / calls))
    names = ["calls/s", "host CPU/call us", "sandbox CPU/call us", "readers CPU/call us",
             "readers switches/call"]
    for p, park in enumerate(parks):
        print(f"parked readers look every {park} s")
        for k, name in enumerate(names):
            values = [row[k] for row in rows[p::len(parks)]]
            print(f"{name:22s} {statistics.median(values):9.2f} [{min(values):.2f}..{max(values):.2f}]")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(int(a) for a in args[:2]),
         *([tuple(float(x) for x in args[2].split(","))] if len(args) > 2 else []))
