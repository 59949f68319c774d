"""Capacity planning: how many more sandboxes of an app fit on this machine, and why not more.

:func:`measure` starts ``samples`` probe sandboxes of the app under the profile in
a running runtime, measures what each costs, destroys them, and sets that against
what the machine has left:

========  ==========================================  ====================================
resource  cost of one sandbox (measured)              what is left (this machine, now)
========  ==========================================  ====================================
memory    USS of its process tree (pages it alone     available memory (``MemAvailable``)
          holds: the forkserver's shared pages are
          not counted again)
cpu       CPU % of its tree while idle, over          idle CPU of the CPUs this process
          ``window`` seconds                          may use
tasks     its processes' threads + the host threads   ``pid_max``/``threads-max`` (and the
          it adds                                     cgroup's ``pids.max``) minus tasks
host_fds  file descriptors the host holds for it      RLIMIT_NOFILE of this process minus
                                                      those open
========  ==========================================  ====================================

``fits[resource]`` is what is left divided by the cost; ``more`` is the smallest,
``binding`` the resource it comes from. ``start_seconds`` (median wall time of one
``create_sandbox``) says how fast they can be started. Figures are of this
machine at this moment: the busier it is, the fewer fit.

>>> with sandbox.start() as rt:
...     report = rt.capacity("examples/counter", samples=1, window=0.2)
>>> report.binding in report.fits and report.more == report.fits[report.binding]
True
"""

from __future__ import annotations

import itertools
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from runtime.errors import ConfigError

if TYPE_CHECKING:
    from sandbox.api import Runtime

__all__ = ["CapacityReport", "UNBOUNDED", "measure", "machine_left"]

_MIB = 1 << 20
#: ``fits`` of a resource one sandbox uses none of, measurably.
UNBOUNDED = 10**9
_probe_ids = itertools.count(1)


@dataclass(frozen=True)
class CapacityReport:
    """What one more sandbox of ``app`` under ``profile`` costs, and how many more fit."""

    app: str
    profile: str
    samples: int
    #: cost of one sandbox: memory_mb (USS), rss_mb, cpu_percent, tasks, host_fds,
    #: start_seconds
    per_sandbox: dict[str, float]
    #: what this machine has left: memory_mb, cpu_percent, tasks, host_fds
    machine: dict[str, float]
    #: how many more fit by each resource
    fits: dict[str, int]
    more: int
    binding: str
    running: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """A few lines for a terminal."""
        p, m = self.per_sandbox, self.machine
        rows = [
            ("memory", f"{p['memory_mb']:.1f} MiB USS ({p['rss_mb']:.1f} MiB RSS)",
             f"{m['memory_mb']:.0f} MiB available"),
            ("cpu", f"{p['cpu_percent']:.2f} % idle", f"{m['cpu_percent']:.0f} % idle"),
            ("tasks", f"{p['tasks']:.0f} threads/processes", f"{m['tasks']:.0f} left"),
            ("host_fds", f"{p['host_fds']:.0f} descriptors", f"{m['host_fds']:.0f} left"),
        ]
        out = [f"{self.app} (profile {self.profile}), measured on {self.samples} probe "
               f"sandbox{'es' if self.samples != 1 else ''}; {self.running} running now"]
        out.append(f"  {'resource':<9} {'one sandbox':<36} {'this machine':<22} fits")
        for name, cost, left in rows:
            mark = "  <- binds first" if name == self.binding else ""
            n = self.fits[name]
            fits = "no limit" if n >= UNBOUNDED else str(n)
            out.append(f"  {name:<9} {cost:<36} {left:<22} {fits}{mark}")
        out.append(f"  start: {p['start_seconds'] * 1000:.0f} ms per sandbox")
        out.append(f"{self.more} more fit; {self.binding} binds first")
        return "\n".join(out)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _tasks_left() -> float:
    """Threads and processes this machine (and this process's cgroup) may still start."""
    now = sum(p.info["num_threads"] or 1 for p in psutil.process_iter(["num_threads"]))
    ceilings = [c for c in (_read_int("/proc/sys/kernel/pid_max"),
                            _read_int("/proc/sys/kernel/threads-max")) if c]
    left = min(ceilings) - now if ceilings else float("inf")
    try:
        cgroup = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1]
        base = Path("/sys/fs/cgroup") / cgroup.lstrip("/")
        cap, used = _read_int(str(base / "pids.max")), _read_int(str(base / "pids.current"))
        if cap is not None and used is not None:
            left = min(left, cap - used)
    except (OSError, IndexError):
        pass
    return float(max(left, 0))


def _fds_open() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def machine_left(window: float = 0.0) -> dict[str, float]:
    """What this machine has left now: memory (MiB), idle CPU (% of one CPU, summed
    over the CPUs this process may use, measured over ``window`` seconds), tasks
    and this process's file descriptors.

    >>> sorted(machine_left())
    ['cpu_percent', 'host_fds', 'memory_mb', 'tasks']
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    idle = psutil.cpu_times_percent(interval=window or None).idle
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "memory_mb": psutil.virtual_memory().available / _MIB,
        "cpu_percent": cpus * idle,
        "tasks": _tasks_left(),
        "host_fds": float(soft - _fds_open()),
    }


def _fits(left: float, cost: float) -> int:
    if cost <= 0:
        return UNBOUNDED  # costs nothing measurable: this resource does not bind
    return max(int(left // cost), 0)


def measure(
    rt: Runtime, app: str | os.PathLike[str], *, profile: str = "medium", samples: int = 3,
    window: float = 1.0, entry: str = "app:children",
) -> CapacityReport:
    """Measure ``samples`` probe sandboxes of ``app`` in ``rt`` and report what fits.

    The probes are created one after the other (their start time is the start
    cost), sampled by the resource monitor twice ``window`` seconds apart (their
    CPU while idle), and destroyed before this returns, whatever happens.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 20:
        raise ConfigError("samples", samples, "an integer from 1 to 20")
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window <= 60:
        raise ConfigError("window", window, "a number of seconds, > 0 and <= 60")
    me = psutil.Process()
    running = len(rt.list_sandboxes())
    before = machine_left()  # what is left, the probes not counted
    threads0, fds0 = me.num_threads(), _fds_open()  # OS threads: those count as tasks
    made: list[str] = []
    starts: list[float] = []
    try:
        for _ in range(samples):
            sid = f"capacity-probe-{os.getpid()}-{next(_probe_ids)}"
            t0 = time.perf_counter()
            rt.create_sandbox(sid, app, profile=profile, entry=entry)
            starts.append(time.perf_counter() - t0)
            made.append(sid)
        host_threads = (me.num_threads() - threads0) / samples
        host_fds = (_fds_open() - fds0) / samples
        monitor = rt.component("monitor")
        monitor.invoke("sample_now")  # a new process: USS read, and the CPU baseline
        idle = machine_left(window)["cpu_percent"]  # waits `window`: the probes idle meanwhile
        monitor.invoke("sample_now")
        usage = [monitor.invoke("usage", sid) or {} for sid in made]
    finally:
        for sid in made:
            try:
                rt.destroy_sandbox(sid)
            except Exception:  # noqa: BLE001 (best effort: the others still go)
                pass
    per = {
        "memory_mb": statistics.median((u.get("uss") or u.get("rss", 0)) / _MIB for u in usage),
        "rss_mb": statistics.median(u.get("rss_mb", 0.0) for u in usage),
        "cpu_percent": statistics.median(u.get("cpu_percent", 0.0) for u in usage),
        "tasks": statistics.median(u.get("threads", 1) for u in usage) + max(host_threads, 0),
        "host_fds": max(host_fds, 0.0),
        "start_seconds": statistics.median(starts),
    }
    left = {**before, "cpu_percent": idle}
    fits = {name: _fits(left[name], per[name]) for name in ("memory_mb", "cpu_percent", "tasks",
                                                            "host_fds")}
    fits = {{"memory_mb": "memory", "cpu_percent": "cpu"}.get(k, k): v for k, v in fits.items()}
    binding = min(fits, key=lambda k: fits[k])
    return CapacityReport(str(app), profile, samples, per, left, fits, fits[binding], binding,
                          running)
