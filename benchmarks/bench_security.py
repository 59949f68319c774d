"""Security and resource figures: monitor cost, audit hook overhead, memory bomb stop time.

- **Monitor overhead**: CPU time of one sampling pass of the resource monitor
  (:class:`actors.monitor.ResourceMonitorActor`, the real sampler with its
  defaults: each sandbox's USS read every 30th pass, the turns spread over passes) over 100 and 1,000 processes, as a percentage of
  one core at the default 1 s interval. The processes are bare children of the
  project's forkserver (started like sandboxes, but without an app: 1,000 real
  sandboxes would need 1,000 runtimes' worth of actor threads on a 2-core box);
  each is registered with the monitor as a sandbox. Baseline: the same reads
  (``cpu_times`` + ``memory_info``) done with plain psutil calls, no bookkeeping.
  Target: under 5 % of one core for 1,000.
- **Audit hook overhead**: 1,000,000 dict operations and 10,000 file opens in the
  workdir, bare then under the ``high`` profile's guard, in one child process (a
  hook cannot be removed); ratio of the medians. Target: under 1.3x.
- **Memory bomb to stop**: a ``high``-policy sandbox with ``memory_mb=128`` runs a
  bomb that keeps what it allocates (it catches MemoryError); time from the bomb
  starting until the sandbox's process is gone (the monitor, sampling every 1 s,
  restarts it). Baseline: time until RLIMIT_AS refuses a bomb that does not hold
  on (MemoryError back at the host). Context, no target in the issue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import Record, make_record, progress  # noqa: E402

GUARD_CHILD = r"""
import json, os, sys, time
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
from runtime.child.guard import install_guard
install_guard(cfg["policy"])
guarded = measure(cfg["runs"])
print(json.dumps({"bare": bare, "guarded": guarded}))
"""


def guard_overhead(runs: int) -> dict[str, dict[str, list[float]]]:
    from actors.profiles import get_builtin

    with tempfile.TemporaryDirectory() as tmp:
        wd, app = Path(tmp, "wd"), Path(tmp, "app")
        wd.mkdir()
        app.mkdir()
        policy = get_builtin("high").guard_policy(wd, app)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-c", GUARD_CHILD,
             json.dumps({"workdir": str(wd), "policy": policy, "runs": runs})],
            env=env, capture_output=True, text=True, timeout=600, check=True,
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- monitor -------------------------------------------------------------------------


class _FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class _FakeSlot:
    """What the monitor reads of a sandbox: its current process (and no limits)."""

    security = None

    def __init__(self, pid: int) -> None:
        self._proc = _FakeProc(pid)
        self.started_at = time.time()

    def current(self) -> _FakeProc:
        return self._proc


def _start_children(n: int) -> list[Any]:
    from benchmarks._floor import MpBareChild

    kids = []
    try:
        for i in range(n):
            kids.append(MpBareChild())
            if i and i % 250 == 0:
                progress(f"bench_security: {i} processes started")
    except BaseException:
        for k in kids:
            k.close()
        raise
    return kids


def monitor_cost(pids: list[int], passes: int) -> tuple[list[float], list[float]]:
    """(CPU seconds of each monitor pass, CPU seconds of each plain psutil pass)."""
    import psutil

    from actors.monitor import ResourceMonitorActor

    ref = ResourceMonitorActor.start(autostart=False, runtime_id="bench-monitor")
    try:
        for i, pid in enumerate(pids):
            ref.invoke("register", f"sb{i}", _FakeSlot(pid))
        ref.invoke("sample_now", timeout=120)  # first pass: psutil objects created
        for _ in range(passes):
            ref.invoke("sample_now", timeout=120)
        stats = ref.invoke("stats")
        proj = stats["tick_cpu"][-passes:]
    finally:
        ref.stop()
    procs = [psutil.Process(p) for p in pids]
    floor = []
    for _ in range(passes):
        t0 = time.thread_time()
        for p in procs:
            try:
                p.cpu_times()
                p.memory_info()
            except psutil.Error:
                pass
        floor.append(time.thread_time() - t0)
    return proj, floor


# -- memory bomb -----------------------------------------------------------------------


def _holder() -> None:
    import threading as th

    chunks = []
    while True:
        try:
            chunks.append(b"x" * (4 << 20))
        except MemoryError:
            th.Event().wait(0.005)


def _bomb() -> None:
    chunks = []
    while True:
        chunks.append(b"x" * (4 << 20))


def memory_bomb(runs: int) -> tuple[list[float], list[float]]:
    """(seconds until a holding bomb's process is gone, seconds until RLIMIT_AS refuses)."""
    import cloudpickle

    import sandbox
    from actors.profiles import Profile

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stopped, refused = [], []
    rt = sandbox.start(monitor_interval=1.0)
    try:
        rt.register_profile(Profile.derive("high", name="high-run", allow_run=True,
                                           violation_threshold=None))
        for i in range(runs):
            sb = rt.create_sandbox(f"bomb{i}", str(ROOT / "examples" / "counter"),
                                   profile="high-run", limits={"memory_mb": 128})
            t0 = time.perf_counter()
            try:
                sb.run(_bomb, timeout=30)
            except Exception:  # noqa: BLE001 - MemoryError (or a restart) expected
                pass
            refused.append(time.perf_counter() - t0)
            slot = rt._slot(sb.id)
            proc = slot.get(10)
            gone = threading.Event()
            from runtime.actor import monitor as watch

            watch(proc, lambda _down, g=gone: g.set())
            t0 = time.perf_counter()
            threading.Thread(target=lambda s=sb: _quiet(s.run, _holder, timeout=60),
                             daemon=True).start()
            if not gone.wait(30):
                raise RuntimeError("the memory bomb was not stopped within 30 s")
            stopped.append(time.perf_counter() - t0)
            sb.destroy()
    finally:
        rt.stop()
    return stopped, refused


def _quiet(fn: Any, *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except Exception:  # noqa: BLE001
        pass


def main(quick: bool = False) -> list[Record]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))
    records: list[Record] = []
    runs = 3 if quick else 5

    progress("bench_security: audit hook overhead")
    g = guard_overhead(runs)
    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    records.append(make_record(
        "guard_overhead", "1M dict ops + 10k opens, guarded", ms(g["guarded"]["total"]), "ms",
        "same workload, no audit hook", ms(g["bare"]["total"]), target="ratio < 1.3",
    ))
    records.append(make_record(
        "guard_overhead", "10k opens in the workdir, guarded", ms(g["guarded"]["open"]), "ms",
        "same opens, no audit hook", ms(g["bare"]["open"]),
        notes="context: the part of the workload the guard inspects",
    ))

    sizes = (50, 100) if quick else (100, 1000)
    passes = 10 if quick else 30
    kids = _start_children(max(sizes))
    try:
        pids = [k.pid for k in kids]
        for n in sizes:
            progress(f"bench_security: monitor sampling {n} processes")
            proj, floor = monitor_cost(pids[:n], passes)
            pct = [c / 1.0 * 100 for c in proj]  # one pass per 1 s interval
            fpct = [c / 1.0 * 100 for c in floor]
            target = "value < 3.0" if n >= 1000 else None
            records.append(make_record(
                "monitor_overhead", f"CPU of sampling {n} sandboxes at 1 s", pct,
                "% of a core", "plain psutil cpu_times+memory_info", fpct, target=target,
                notes=("bare forkserver children registered as sandboxes; each one's USS "
                       "every 30th pass; "
                       + ("quick: 100 is the largest size" if quick and n == max(sizes)
                          else "")).rstrip("; "),
            ))
    finally:
        for k in kids:
            k.close()

    progress("bench_security: memory bomb")
    stopped, refused = memory_bomb(1 if quick else 3)
    records.append(make_record(
        "memory_bomb", "bomb start to sandbox stopped (monitor, 1 s)", ms(stopped), "ms",
        "bomb start to MemoryError (RLIMIT_AS)", ms(refused),
        notes="context: memory_mb=128, high policy; the stop waits for the next sample",
    ))
    return records


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Security and resource-monitor figures."))
