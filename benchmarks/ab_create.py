"""Create/destroy of N sandboxes against N bare children, for an A/B of two checkouts.

``python benchmarks/ab_create.py N RUNS``, run from each checkout (it imports the
checkout it is run from): one line with the median [range] of RUNS runs of
``batch_create`` + a first call to each, ``batch_destroy``, and the same number of
bare forkserver children, using the functions of :mod:`benchmarks.bench_sandboxes`.
"""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.getcwd())

import sandbox  # noqa: E402
from benchmarks import bench_sandboxes as b  # noqa: E402


def main(n: int, runs: int) -> str:
    with sandbox.start() as rt:  # unnamed: its state dir is temporary
        b._create(rt, 1, "warm")
        b._destroy(rt, 1, "warm")
        b._bare(1)
        c, d, bc, bd = [], [], [], []
        for r in range(runs):
            c.append(b._create(rt, n, f"x{r}") * 1000)
            d.append(b._destroy(rt, n, f"x{r}") * 1000)
            x, y = b._bare(n)
            bc.append(x * 1000)
            bd.append(y * 1000)
    m = statistics.median
    return (f"{os.getcwd()} n={n} create {m(c):.0f} [{min(c):.0f}..{max(c):.0f}] bare {m(bc):.0f} "
            f"ratio {m(c) / m(bc):.2f} | destroy {m(d):.0f} [{min(d):.0f}..{max(d):.0f}] "
            f"bare {m(bd):.0f} ratio {m(d) / m(bd):.2f}")


if __name__ == "__main__":
    print(main(int(sys.argv[1]), int(sys.argv[2])))
