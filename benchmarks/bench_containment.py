"""What the OS layers cost: per-profile create time and idle USS of a sandbox.

For each built-in profile, N sandboxes of ``examples/counter`` are created one at a
time (create + first call, timed) and each one's USS is read once it is idle;
figures are medians with their range. The measurement runs in a child Python
whose import path starts at a source tree, so the same script can measure
another checkout in the same run: set ``BENCH_BASELINE_ROOT`` to a checkout of
the code before the layers (``git worktree add /tmp/before <commit>``) and the
records carry it as the baseline, with the ratio. Without it the records have no
baseline (the layers cannot be switched off: a sandbox without them must not run).

Run alone: ``python benchmarks/bench_containment.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import Record, make_record, progress, run_script  # noqa: E402

__all__ = ["main", "measure"]

PROFILES = ("high", "medium", "low")

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import psutil
import sandbox

n = int(sys.argv[2])
app = os.path.join(sys.argv[1], "examples", "counter")
out = {}
with sandbox.start(name=f"bench-contain-{os.getpid()}") as rt:
    rt.create_sandbox("warm", app, profile="medium").call("counter", "get")
    rt.destroy_sandbox("warm")
    for profile in sys.argv[3:]:
        create, uss = [], []
        for i in range(n):
            t0 = time.perf_counter()
            sb = rt.create_sandbox(f"{profile}-{i}", app, profile=profile)
            sb.call("counter", "get")
            create.append((time.perf_counter() - t0) * 1000)
        for i in range(n):
            pid = rt.get_sandbox_info(f"{profile}-{i}")["pid"]
            uss.append(psutil.Process(pid).memory_full_info().uss / 2**20)
        for i in range(n):
            rt.destroy_sandbox(f"{profile}-{i}")
        out[profile] = {"create_ms": create, "uss_mib": uss}
print(json.dumps(out))
"""


def measure(root: str | os.PathLike[str], n: int, profiles: tuple[str, ...] = PROFILES) -> Any:
    """{profile: {"create_ms": [...], "uss_mib": [...]}} for the tree at ``root``.

    >>> callable(measure)
    True
    """
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, os.fspath(root), str(n), *profiles],
        capture_output=True, text=True, timeout=600, cwd=os.fspath(root), check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {root} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> list[Record]:
    """Records of create time and idle USS per profile (baseline: BENCH_BASELINE_ROOT)."""
    n = 3 if quick else 7
    progress(f"bench_containment: {n} sandboxes per profile")
    now = measure(ROOT, n)
    base_root = os.environ.get("BENCH_BASELINE_ROOT")
    base = measure(base_root, n) if base_root else None
    label = f"the same on {base_root}" if base_root else "none (the layers cannot be switched off)"
    records = []
    for profile in PROFILES:
        for key, figure, unit in (("create_ms", "create + first call", "ms"),
                                  ("uss_mib", "idle USS", "MiB")):
            records.append(make_record(
                "containment", f"{profile}: {figure}", now[profile][key], unit, label,
                base[profile][key] if base else None,
                notes=f"{n} sandboxes of examples/counter, one at a time",
            ))
    return records


if __name__ == "__main__":
    sys.exit(run_script(main, description=__doc__))
