"""Create/destroy of N sandboxes against N bare children, for an A/B of two checkouts.

``python benchmarks/ab_create.py N RUNS [--cpu]``, run from each checkout (it
imports the checkout it is run from): one line with the median [range] of RUNS
runs of ``batch_create`` + a first call to each, ``batch_destroy``, and the same
number of bare forkserver children, using the functions of
:mod:`benchmarks.bench_sandboxes`.

``--cpu`` adds the CPU time one create + destroy costs (median over the runs, in
ms): the host process, the fork server, and the sandboxes' own processes (read
from the fork server's reaped children), against the same for one bare child. On
a shared machine CPU time moves much less with the neighbours' load than wall
time does, and for N > 1 on 2 CPUs it is what bounds the wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.getcwd())

import sandbox  # noqa: E402
from benchmarks import bench_sandboxes as b  # noqa: E402

_PARTS = ("host", "forkserver", "sandboxes")


def _cpu() -> dict[str, float]:
    """CPU seconds so far: this process, the fork server, its reaped children."""
    import psutil

    from runtime.host import forkserver

    mine = psutil.Process().cpu_times()
    server = psutil.Process(forkserver.ensure_running()).cpu_times()
    return {"host": mine.user + mine.system, "forkserver": server.user + server.system,
            "sandboxes": server.children_user + server.children_system}


def _per_each(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: (after[k] - before[k]) * 1000 / n for k in _PARTS}


def main(n: int, runs: int, cpu: bool = False) -> str:
    m = statistics.median
    with sandbox.start() as rt:  # unnamed: its state dir is temporary
        b._create(rt, 1, "warm")
        b._destroy(rt, 1, "warm")
        b._bare(1)
        c, d, bc, bd = [], [], [], []
        used: list[dict[str, float]] = []
        bare_used: list[dict[str, float]] = []
        for r in range(runs):
            t0 = _cpu() if cpu else {}
            c.append(b._create(rt, n, f"x{r}") * 1000)
            d.append(b._destroy(rt, n, f"x{r}") * 1000)
            t1 = _cpu() if cpu else {}
            x, y = b._bare(n)
            bc.append(x * 1000)
            bd.append(y * 1000)
            if cpu:
                used.append(_per_each(t0, t1, n))
                bare_used.append(_per_each(t1, _cpu(), n))
    line = (f"{os.getcwd()} n={n} create {m(c):.0f} [{min(c):.0f}..{max(c):.0f}] bare {m(bc):.0f} "
            f"ratio {m(c) / m(bc):.2f} | destroy {m(d):.0f} [{min(d):.0f}..{max(d):.0f}] "
            f"bare {m(bd):.0f} ratio {m(d) / m(bd):.2f}")
    if cpu:
        line += " | cpu ms per create+destroy " + " ".join(
            f"{k} {m([u[k] for u in used]):.2f} (bare {m([u[k] for u in bare_used]):.2f})"
            for k in _PARTS)
    return line


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="sandboxes (and bare children) per run")
    parser.add_argument("runs", type=int, help="runs; the line gives their median [range]")
    parser.add_argument("--cpu", action="store_true",
                        help="also the CPU time per create + destroy, by process (ms)")
    args = parser.parse_args()
    print(main(args.n, args.runs, args.cpu))
