"""Per security profile: the cost of a sandbox's containment at start and at rest.

Run alone: ``python benchmarks/bench_profiles.py [--quick] [--json PATH]``.

- **Create**: ``create_sandbox`` of ``examples/counter`` under ``high``, ``medium``
  and ``low`` until its first reply (compile, start, isolation layers, ready, one
  call), one sandbox at a time, destroyed after each run. Baseline: a bare child of
  the same fork server (no runtime, no layers) answering its first call.
- **Idle USS**: the unique memory of that sandbox's process once it answered
  (psutil ``memory_full_info().uss``); baseline: the bare child's. The layers
  (namespaces, cgroups, guard, output pipes) show as the difference.

No target: context for docs/benchmarks.md (before/after the containment work of
issue 11).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Record

MIB = 1024 * 1024
PROFILES = ("high", "medium", "low")
APP = str(Path(__file__).resolve().parent.parent / "examples" / "counter")


def _bare() -> tuple[float, float]:
    import psutil

    from benchmarks._floor import MpBareChild

    t0 = time.perf_counter()
    child = MpBareChild()
    child.call("echo", "first")
    took = time.perf_counter() - t0
    uss = psutil.Process(child.pid).memory_full_info().uss / MIB
    child.close()
    return took * 1000, uss


def main(quick: bool = False) -> list[Record]:
    import psutil

    import sandbox
    from benchmarks._harness import make_record, progress

    runs = 5 if quick else 9
    records: list[Record] = []
    with sandbox.start() as rt:
        rt.create_sandbox("warm", APP).destroy()
        bare = [_bare() for _ in range(runs)]
        for profile in PROFILES:
            progress(f"bench_profiles: {profile} x {runs}")
            create, uss = [], []
            for r in range(runs):
                gc.collect()
                t0 = time.perf_counter()
                sb = rt.create_sandbox(f"{profile}-{r}", APP, profile=profile)
                sb.call("counter", "get")
                create.append((time.perf_counter() - t0) * 1000)
                uss.append(psutil.Process(sb.pid).memory_full_info().uss / MIB)
                sb.destroy()
            records.append(make_record(
                "profile_create", f"create {profile}", create, "ms",
                "bare fork server child", [b[0] for b in bare],
                notes="create_sandbox to first reply, one at a time"))
            records.append(make_record(
                "profile_memory", f"idle USS {profile}", uss, "MiB",
                "bare fork server child", [b[1] for b in bare],
                notes="after the first reply"))
    return records


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Per profile: create time and idle USS."))
