"""Audit hook overhead: a call-heavy workload with and without the runtime guard.

Not collected by pytest (no ``test_`` prefix); a benchmark in the format of
``benchmarks/`` (``main(quick=...) -> list[Record]``), kept here until it moves to
``benchmarks/bench_guard.py``. Run it alone::

    PYTHONPATH=. python tests/perf_guard_overhead.py [--quick] [--json PATH]

The workload is 1,000,000 dict operations and 10,000 file opens (half reads,
half writes) in the sandbox's workdir. An audit hook cannot be removed, so one
child process runs the workload ``runs`` times bare, then installs the guard
(profile ``high``) and runs it ``runs`` times again; the figure is the ratio of
the medians. Target (issue 6): under 1.3x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import Record, make_record, run_script  # noqa: E402

CHILD = r"""
import json, os, statistics, sys, time
cfg = json.loads(sys.argv[1])
os.chdir(cfg["workdir"])
names = [f"f{i}.txt" for i in range(16)]
for n in names:
    with open(n, "w") as f:
        f.write("x" * 64)

def dict_ops(n=1_000_000):
    d = {}
    for i in range(n // 2):
        d[i & 4095] = i
        d.get(i & 2047)
    return len(d)

def file_opens(n=10_000):
    total = 0
    for i in range(n):
        name = names[i & 15]
        if i & 1:
            with open(name, "a") as f:
                total += f.write("y")
        else:
            with open(name, "rb") as f:
                total += len(f.read(8))
    return total

def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

def measure(runs):
    out = {"dict": [], "open": [], "total": []}
    for _ in range(runs):
        a, b = timed(dict_ops), timed(file_opens)
        out["dict"].append(a); out["open"].append(b); out["total"].append(a + b)
    return out

bare = measure(cfg["runs"])
from runtime.guard import install_guard
install_guard(cfg["policy"])
guarded = measure(cfg["runs"])
print(json.dumps({"bare": bare, "guarded": guarded}))
"""


def measure(runs: int) -> dict[str, dict[str, list[float]]]:
    from actors.profiles import get_builtin

    with tempfile.TemporaryDirectory() as tmp:
        wd, app = Path(tmp, "wd"), Path(tmp, "app")
        wd.mkdir()
        app.mkdir()
        policy = get_builtin("high").guard_policy(wd, app)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                json.dumps({"workdir": str(wd), "policy": policy, "runs": runs}),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> list[Record]:
    runs = 3 if quick else 5
    data = measure(runs)
    bare, guarded = data["bare"], data["guarded"]
    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    return [
        make_record(
            "guard_overhead",
            "1M dict ops + 10k opens, guarded",
            ms(guarded["total"]),
            "ms",
            "same workload, no audit hook",
            ms(bare["total"]),
            target="ratio < 1.3",
        ),
        make_record(
            "guard_overhead",
            "10k opens in the workdir, guarded",
            ms(guarded["open"]),
            "ms",
            "same opens, no audit hook",
            ms(bare["open"]),
            notes="context: the part of the workload the guard inspects",
        ),
        make_record(
            "guard_overhead",
            "1M dict ops, guarded",
            ms(guarded["dict"]),
            "ms",
            "same dict ops, no audit hook",
            ms(bare["dict"]),
            notes="context: dict operations raise no audit events",
        ),
    ]


if __name__ == "__main__":
    sys.exit(run_script(main, description=__doc__))
