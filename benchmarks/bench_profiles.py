"""Per security profile: the cost of a sandbox's containment at start and at rest.

Run alone: ``python benchmarks/bench_profiles.py [--quick] [--json PATH]``.

- **Create**: ``create_sandbox`` of ``examples/counter`` under ``high``, ``medium``
  and ``low`` until its first reply (compile, start, isolation layers, ready, one
  call), one sandbox at a time, destroyed after each run. Baseline: a bare child of
  the same fork server (no runtime, no layers) answering its first call.
- **Idle USS**: the unique memory of that sandbox's process once it answered
  (psutil ``memory_full_info().uss``); baseline: the bare child's. The layers
  (namespaces, cgroups, guard, output pipes) show as the difference.

- **Layers**: what each containment step costs a start, per profile, measured in a
  child of the fork server that applies the profile's isolation plan and guard as
  a sandbox's boot does (:mod:`benchmarks._layers`): cgroups, namespaces (and the
  private mount view), seccomp, rlimits, privileges (no_new_privs, UID, not
  dumpable), guard; and all of them. ``none`` is a start without containment (no
  plan, no guard), which no profile allows: the floor. Baseline: the bare child's
  whole start.
- **cgroup join**: a fresh child joining a new sandbox's cgroups as the boot does
  (cgroup v1: ``0`` written to ``tasks``), against the same child writing its pid
  to ``cgroup.procs`` (as before), alternating, 0.2 s apart (a lone create: the
  kernel's threadgroup lock is idle when it comes).
Run by a user that is not root, each sandbox lives in its own user and pid
namespace (``runtime/child/userns.py``): the records are then named ``... (userns)``
and the namespace's init process, one per sandbox, gets a record of its own.

No target: context for docs/benchmarks.md (before/after the containment work of
issue 11).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Record

MIB = 1024 * 1024
PROFILES = ("high", "medium", "low")
LAYER_PROFILES = (*PROFILES, "none")
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


def _ns_init(pid: int) -> int | None:
    """The init (pid 1) of ``pid``'s pid namespace, when that is not the host's."""
    try:
        ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
        if ns == os.stat("/proc/self/ns/pid").st_ino:
            return None
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != pid:
                try:
                    if os.stat(f"/proc/{name}/ns/pid").st_ino != ns:
                        continue
                    with open(f"/proc/{name}/status") as fh:
                        nspid = next(ln.split() for ln in fh if ln.startswith("NSpid:"))
                    if nspid[-1] == "1":
                        return int(name)
                except (OSError, StopIteration):
                    pass
    except OSError:
        pass
    return None


def main(quick: bool = False) -> list[Record]:
    import psutil

    import sandbox
    from benchmarks._harness import make_record, pick, progress

    runs = pick(quick, full=9, quick_sizes=5, smoke_sizes=1)
    records: list[Record] = []
    with sandbox.start() as rt:
        rt.create_sandbox("warm", APP).destroy()
        bare = [_bare() for _ in range(runs)]
        for profile in PROFILES:
            progress(f"bench_profiles: {profile} x {runs}")
            create, uss, init_uss = [], [], []
            for r in range(runs):
                gc.collect()
                t0 = time.perf_counter()
                sb = rt.create_sandbox(f"{profile}-{r}", APP, profile=profile)
                sb.call("counter", "get")
                create.append((time.perf_counter() - t0) * 1000)
                uss.append(psutil.Process(sb.pid).memory_full_info().uss / MIB)
                init = _ns_init(sb.pid)
                if init is not None:
                    init_uss.append(psutil.Process(init).memory_full_info().uss / MIB)
                sb.destroy()
            tag = " (userns)" if init_uss else ""
            records.append(make_record(
                "profile_create", f"create {profile}{tag}", create, "ms",
                "bare fork server child", [b[0] for b in bare],
                notes="create_sandbox to first reply, one at a time"))
            records.append(make_record(
                "profile_memory", f"idle USS {profile}{tag}", uss, "MiB",
                "bare fork server child", [b[1] for b in bare],
                notes="after the first reply"))
            if init_uss:
                records.append(make_record(
                    "profile_memory", f"idle USS {profile}: namespace init", init_uss, "MiB",
                    "bare fork server child", [b[1] for b in bare],
                    notes="pid 1 of the sandbox's pid namespace, one per sandbox"))
    records += _layer_records(runs, [b[0] for b in bare])
    records += _join_records(runs)
    return records


def _join_records(runs: int) -> list[Record]:
    from benchmarks._harness import make_record, progress
    from benchmarks._layers import cgroup_join

    progress(f"bench_profiles: cgroup join x {runs}")
    now: list[float] = []
    before: list[float] = []
    for r in range(runs):
        pair = [(now, "boot"), (before, "procs")]
        for into, how in pair if r % 2 == 0 else pair[::-1]:
            time.sleep(0.2)  # a quiet spell, as between lone creates
            took = cgroup_join(how)
            if took is None:
                return []  # no cgroups for sandboxes on this host
            into.append(took)
    return [make_record("profile_layers", "cgroup join (tasks, as itself)", now, "ms",
                        "cgroup.procs, by pid", before,
                        notes="a fresh fork server child joining a new sandbox's pids and "
                              "memory cgroups, 0.2 s after the previous join")]


def _layer_records(runs: int, bare_start: list[float]) -> list[Record]:
    from benchmarks._harness import make_record, progress
    from benchmarks._layers import STEPS, layer_costs

    records: list[Record] = []
    for profile in LAYER_PROFILES:
        progress(f"bench_profiles: layers of {profile} x {runs}")
        took = [layer_costs(profile, APP)["took"] for _ in range(runs)]
        steps = STEPS if profile != "none" else ()
        for step in steps:
            records.append(make_record(
                "profile_layers", f"{step} {profile}", [t.get(step, 0.0) for t in took], "ms",
                "bare fork server child's whole start", bare_start,
                notes="in a fork server child, as a sandbox's boot applies it"))
        records.append(make_record(
            "profile_layers", f"all layers {profile}", [sum(t.values()) for t in took], "ms",
            "bare fork server child's whole start", bare_start,
            notes="isolation plan applied + guard installed"))
    return records


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Per profile: create time and idle USS."))
