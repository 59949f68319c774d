"""Core figures of a sandbox child process, side by side with their floors.

Run alone: ``python benchmarks/bench_core.py [--quick] [--json PATH]``.

In one run, interleaving project and baselines run by run, it measures:

- **call round trip** host -> actor in a child process -> host, p50 and p99, against
  (a) the floor: a bare child (no runtime: ``benchmarks/_bare.py``) echoing over a
  socketpair with the project's 4-byte-length msgpack framing and envelope (targets:
  p50 ratio <= 1.5, p99 ratio <= 2.0), (a') the same project child with every call through the actor's
  mailbox (``run_in_place=False``: what running calls in place saves) and (a'')
  pinned to one CPU (``cpu_affinity="auto"``), (b) a ``multiprocessing.Pipe`` pickle echo in a child, (c) a pykka
  ``ask`` between two threads of one process, and with the ``bench`` extra (d)
  Thespian's ``ask`` and (e) a Ray actor method call (b to e are context, no
  target);
- **casts per second** into a child, unbatched (``cast``) and batched
  (``cast_many``), against a bare child decoding and counting the frames (target:
  ratio >= 0.5, higher is better). A final call returns the child's count, which
  must have grown by exactly the number sent, and the clock stops on it;
- **child start until its first reply**, against a bare child started the same way
  (``runtime.host.forkserver.start``: the project's warm forkserver, same preload
  ``runtime.child.boot``) answering its first message (target: ratio <= 2.0); and, as context, against a
  minimal fork server without multiprocessing (fork + an fd over SCM_RIGHTS);
- **USS and PSS of an idle child** (psutil ``memory_full_info``) against those bare
  children (target: USS value <= 5 MiB; the rest is context);
- **DynamicSupervisor, start+stop of 10,000 temporary children** (in this process:
  ``start_child`` each, then stop the supervisor) against starting the same GenServer
  10,000 times without a supervisor and stopping each (context, no target); and its
  linearity: how much the time per child grows from 1,000 to 10,000 children, against
  the same growth without a supervisor (the threads alone make it grow; a ratio near
  1 means the supervisor adds no growth of its own). ``--quick`` uses 1,000 and 100.

The bare floor children come from the project's own forkserver, so the targets
measure what the runtime adds, not the start method.

Every child is stopped in a ``finally`` (also on Ctrl-C); the bare children and
their fork server also die on EOF of their sockets if this process dies.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from benchmarks._harness import Record

APP_PATH = Path(__file__).resolve().parent / "apps"
APP_ENTRY = "echo:children"
MIB = 1024 * 1024


#: Blocks per run that the systems take turns in (round trips, casts).
BLOCKS = 10
CAST_BLOCKS = 4


@dataclass(frozen=True)
class Sizes:
    runs: int
    calls: int  # timed calls per run and system
    warmup: int  # untimed calls per system before the first run
    casts: int  # casts per run and system
    batch: int  # casts per cast_many

    supervised: tuple[int, int]  # DynamicSupervisor children: large and small size
    # Fresh children per system for the start and idle memory figures: a start is
    # ~10 ms, and on a shared machine 3 of them left the median to the run queue.
    starts: int

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        from benchmarks._harness import pick

        return pick(
            quick,
            full=cls(runs=7, calls=5000, warmup=500, casts=30000, batch=500,
                     supervised=(10_000, 1_000), starts=15),
            quick_sizes=cls(runs=3, calls=1000, warmup=200, casts=10000, batch=500,
                            supervised=(1_000, 100), starts=9),
            smoke_sizes=cls(runs=1, calls=50, warmup=10, casts=200, batch=500,
                            supervised=(20, 10), starts=1),
        )


# -- the project side ------------------------------------------------------------------


class ProjectChild:
    """A sandbox child running ``benchmarks/apps/echo.py`` through ``runtime.host.process``."""

    def __init__(self, name: str, *, run_in_place: bool = True,
                 cpu_affinity: str | None = None) -> None:
        from runtime.host.process import start_process

        self.ref = start_process(APP_ENTRY, app_path=str(APP_PATH), name=name,
                                 run_in_place=run_in_place, cpu_affinity=cpu_affinity)
        self.has_cast_many = hasattr(self.ref, "cast_many")

    @property
    def pid(self) -> int:
        return self.ref.pid

    def call(self, target: str, payload: Any) -> Any:
        return self.ref.call(target, payload, timeout=30)

    def cast(self, target: str, payload: Any) -> None:
        self.ref.cast(target, payload)

    def cast_many(self, target: str, payloads: list[Any]) -> None:
        if self.has_cast_many:
            self.ref.cast_many(target, payloads)
        else:  # pragma: no cover - older API
            for p in payloads:
                self.ref.cast(target, p)

    def close(self) -> None:
        """Stop the child (graceful, then its process group is killed: see runtime.host.process)."""
        try:
            self.ref.stop()
        except BaseException:
            self.ref.kill()
            raise


# -- measurements ----------------------------------------------------------------------


def _time_calls(call: Callable[[Any], Any], n: int, into: list[int]) -> None:
    """Append the latencies (ns) of ``n`` sequential calls to ``into``."""
    clock = time.perf_counter_ns
    append = into.append
    for i in range(n):
        payload = ["ping", i]
        t0 = clock()
        got = call(payload)
        append(clock() - t0)
        if got[1] != i:  # cheap check that the echo is the right one
            raise AssertionError(f"echo mismatch: sent {payload!r}, got {got!r}")


def _p50_p99_us(lat: list[int]) -> tuple[float, float]:
    from benchmarks._harness import percentile

    lat.sort()
    return percentile(lat, 50) / 1000, percentile(lat, 99) / 1000


def _send_casts(child: Any, n: int, batch: int | None) -> float:
    """Seconds to send ``n`` casts to ``child`` until a call confirms all arrived."""
    before = child.call("counter", "count")
    payloads = list(range(n))
    t0 = time.perf_counter()
    if batch:
        for i in range(0, n, batch):
            child.cast_many("counter", payloads[i : i + batch])
    else:
        cast = child.cast
        for p in payloads:
            cast("counter", p)
    after = child.call("counter", "count")
    dt = time.perf_counter() - t0
    if after - before != n:
        raise AssertionError(f"child counted {after - before} casts, {n} were sent")
    return dt


def _start_and_memory(start: Callable[[], Any]) -> tuple[float, float, float]:
    """(ms from start to first reply, idle USS MiB, idle PSS MiB) of one fresh child."""
    import psutil

    t0 = time.perf_counter()
    child = start()
    try:
        got = child.call("echo", "first")
        dt = time.perf_counter() - t0
        if got != "first":
            raise AssertionError(f"first reply was {got!r}")
        mem = psutil.Process(child.pid).memory_full_info()
        return dt * 1000, mem.uss / MIB, mem.pss / MIB
    finally:
        child.close()


@dataclass
class _Series:
    values: dict[str, list[float]]

    @classmethod
    def new(cls, *keys: str) -> _Series:
        return cls({k: [] for k in keys})

    def add(self, key: str, value: float) -> None:
        self.values[key].append(value)


def main(quick: bool = False) -> list[Record]:
    from benchmarks._floor import FloorForkServer, MpBareChild, PykkaEcho, start_pipe_echo
    from benchmarks._harness import make_record, progress, smoke

    sizes = Sizes.for_mode(quick)
    runs = sizes.runs
    seq = iter(range(1, 1_000_000))

    def project_start() -> ProjectChild:
        return ProjectChild(f"bench-core-{os.getpid()}-{next(seq)}")

    s = _Series.new(
        *(f"{k}_{p}" for k in ("proj", "mbox", "pin", "floor", "pipe", "pykka", "thespian", "ray")
          for p in ("p50", "p99")),
        *(f"{k}_{f}" for k in ("proj", "floor") for f in ("cast", "batch")),
        *(f"{k}_{f}" for k in ("proj", "floor", "min") for f in ("start", "uss", "pss")),
    )
    notes: list[str] = []
    t_all = time.perf_counter()
    with contextlib.ExitStack() as stack:
        progress(f"bench_core: starting children ({'quick' if quick else 'full'}: {runs} runs)")
        # The first project child also starts (warms) the project's forkserver, which
        # the bare floor child then shares; these children serve the round-trip and
        # cast figures, the start figures use fresh ones.
        proj = project_start()
        stack.callback(proj.close)
        # The same runtime with every call through the actor's mailbox (the design
        # before calls ran in place): what running them in place saves, same run.
        mbox = ProjectChild(f"bench-core-{os.getpid()}-mailbox", run_in_place=False)
        stack.callback(mbox.close)
        # ... and pinned to one CPU (the default before calls ran in place).
        pin = ProjectChild(f"bench-core-{os.getpid()}-pinned", cpu_affinity="auto")
        stack.callback(pin.close)
        fchild = MpBareChild()
        stack.callback(fchild.close)
        minimal = stack.enter_context(FloorForkServer())
        minimal.spawn().close()  # warm
        if "runtime.child.boot" not in minimal.preloaded:
            notes.append("runtime.child.boot could not be preloaded")
        pipe_proc, pipe_conn = start_pipe_echo()

        def _close_pipe() -> None:
            pipe_conn.close()
            pipe_proc.join(5)
            if pipe_proc.is_alive():
                pipe_proc.kill()
                pipe_proc.join()

        stack.callback(_close_pipe)
        pykka_ref = PykkaEcho.start()
        stack.callback(pykka_ref.stop)
        from benchmarks import _thespian

        thespian = None
        if smoke():  # heavyweight context baselines: not in a smoke run
            notes.append("smoke run: the thespian and ray baselines are left out")
        elif _thespian.available():
            thespian = _thespian.ThespianEcho()
            stack.callback(thespian.close)
        else:
            notes.append("thespian not installed (bench extra): its baseline is left out")

        from benchmarks import _ray

        ray_echo = None
        if smoke():
            pass
        elif _ray.available():
            progress("bench_core: starting ray (num_cpus=1, no dashboard)")
            try:
                ray_echo = _ray.RayEcho()
            except Exception as exc:  # a broken ray install must not sink the benchmark
                notes.append(f"ray failed to start ({type(exc).__name__}: {exc}); left out")
            else:
                stack.callback(ray_echo.close)
        else:
            notes.append("ray not installed (bench extra): its baseline is left out")

        def pipe_call(payload: Any) -> Any:
            pipe_conn.send(payload)
            return pipe_conn.recv()

        systems: list[tuple[str, Callable[[Any], Any]]] = [
            ("proj", lambda p: proj.call("echo", p)),
            ("mbox", lambda p: mbox.call("echo", p)),
            ("pin", lambda p: pin.call("echo", p)),
            ("floor", lambda p: fchild.call("echo", p)),
            ("pipe", pipe_call),
            ("pykka", lambda p: pykka_ref.ask(p)),
        ]
        if thespian is not None:
            systems.append(("thespian", thespian.call))
        if ray_echo is not None:
            systems.append(("ray", ray_echo.call))
        for _, call in systems:  # warm every path up, untimed
            for i in range(sizes.warmup):
                call(["ping", i])

        # Round trips. A run is BLOCKS blocks; each block times calls/BLOCKS calls of
        # every system in a rotating order, so load from elsewhere on the machine
        # falls on all systems alike. p50/p99 are over the run's pooled calls.
        per_block = max(1, sizes.calls // BLOCKS)
        n_calls = per_block * BLOCKS
        progress(
            f"bench_core: call round trip ({n_calls} calls x {len(systems)} systems x {runs} runs)"
        )
        for _ in range(runs):
            lat: dict[str, list[int]] = {key: [] for key, _ in systems}
            gc.collect()
            for b in range(BLOCKS):
                k = b % len(systems)
                for key, call in systems[k:] + systems[:k]:
                    _time_calls(call, per_block, lat[key])
            for key, values in lat.items():
                p50, p99 = _p50_p99_us(values)
                s.add(f"{key}_p50", p50)
                s.add(f"{key}_p99", p99)

        # Casts, unbatched and batched, in alternating blocks too.
        per_block = max(1, sizes.casts // CAST_BLOCKS)
        progress(f"bench_core: casts ({per_block * CAST_BLOCKS} per run, batches of {sizes.batch})")
        if not proj.has_cast_many:
            notes.append("runtime.host.process has no cast_many: batched casts were cast one by one")
        pairs = [("proj", proj), ("floor", fchild)]
        for _ in range(runs):
            spent = {f"{key}_{mode}": 0.0 for key, _ in pairs for mode in ("cast", "batch")}
            gc.collect()
            for b in range(CAST_BLOCKS):
                for key, child in pairs if b % 2 == 0 else pairs[::-1]:
                    spent[f"{key}_cast"] += _send_casts(child, per_block, None)
                    spent[f"{key}_batch"] += _send_casts(child, per_block, sizes.batch)
            for key, seconds in spent.items():
                s.add(key, per_block * CAST_BLOCKS / seconds)

        # Start to first reply, then the idle memory of that fresh child.
        progress("bench_core: child start and idle memory")
        starters = [("proj", project_start), ("floor", MpBareChild), ("min", minimal.spawn)]
        for r in range(sizes.starts):
            k = r % len(starters)
            for key, start in starters[k:] + starters[:k]:
                gc.collect()
                ms, uss, pss = _start_and_memory(start)
                s.add(f"{key}_start", ms)
                s.add(f"{key}_uss", uss)
                s.add(f"{key}_pss", pss)
    progress(f"bench_core: done in {time.perf_counter() - t_all:.1f} s")

    v = s.values
    extra = ("; " + "; ".join(notes)) if notes else ""
    bare = "bare child (same forkserver)"
    rec = []

    def add(bench, figure, key, unit, baseline, bkey, target=None, hib=False, note=""):
        rec.append(
            make_record(
                bench,
                figure,
                v[key],
                unit,
                baseline,
                v[bkey],
                target=target,
                higher_is_better=hib,
                notes=(note + extra) or None,
            )
        )

    rtt_note = f"{sizes.calls} sequential calls per run, payload ['ping', i]"
    # Issue 15's targets against the bare child: p50 <= 1.5x, p99 <= 2x.
    for pct, target in (("p50", "ratio <= 1.5"), ("p99", "ratio <= 2.0")):
        add(
            "call_roundtrip",
            f"{pct} round trip",
            f"proj_{pct}",
            "us",
            bare,
            f"floor_{pct}",
            target,
            note=rtt_note,
        )
    # Context baselines of the round trip: (key prefix, what it is, note); peers
    # that are not installed, or skipped in a smoke run, have no figures.
    context = [
        ("mbox", "same child, calls via the actor's mailbox",
         "context: start_process(run_in_place=False), one thread hand-off per call"),
        ("pin", "same child pinned to one CPU",
         "context: start_process(cpu_affinity='auto'), the default before issue 15"),
        ("pipe", "mp.Pipe+pickle echo child", "context"),
        ("pykka", "pykka ask (2 threads)", "context: no process boundary"),
        ("thespian", "thespian multiprocQueueBase ask",
         "context: a peer actor library, actor in its own process"),
        ("ray", "ray actor method call",
         "context: ray.get(actor.echo.remote(x)), ray.init(num_cpus=1)"),
    ]
    for prefix, baseline, note in context:
        if not v.get(f"{prefix}_p50"):
            continue
        for pct in ("p50", "p99"):
            add("call_roundtrip", f"{pct} round trip", f"proj_{pct}", "us", baseline,
                f"{prefix}_{pct}", note=note)
    cast_note = f"{sizes.casts} casts per run, clock stops when a call returns the child's count"
    add(
        "cast_throughput",
        "casts/s unbatched",
        "proj_cast",
        "msg/s",
        "bare child counting frames",
        "floor_cast",
        "ratio >= 0.5",
        hib=True,
        note=f"{cast_note}; one sendall per cast",
    )
    add(
        "cast_throughput",
        f"casts/s batched ({sizes.batch})",
        "proj_batch",
        "msg/s",
        "bare child counting frames",
        "floor_batch",
        "ratio >= 0.5",
        hib=True,
        note=f"{cast_note}; cast_many, one sendall per {sizes.batch} frames",
    )
    add(
        "child_start",
        "start to first reply",
        "proj_start",
        "ms",
        bare,
        "floor_start",
        "ratio <= 2.0",
        note="warm forkserver; multiprocessing forkserver Process start + first call",
    )
    add(
        "child_start",
        "start to first reply",
        "proj_start",
        "ms",
        "minimal fork server child",
        "min_start",
        note="context: a start without multiprocessing (fork, fd over SCM_RIGHTS), same preload",
    )
    mem_note = "psutil memory_full_info of a fresh child right after its first reply"
    add(
        "child_memory",
        "idle child USS",
        "proj_uss",
        "MiB",
        bare,
        "floor_uss",
        "value <= 5.0",
        note=mem_note,
    )
    add(
        "child_memory",
        "idle child PSS",
        "proj_pss",
        "MiB",
        bare,
        "floor_pss",
        note="context; " + mem_note,
    )
    add(
        "child_memory",
        "idle child USS",
        "proj_uss",
        "MiB",
        "minimal fork server child",
        "min_uss",
        note="context; " + mem_note,
    )
    rec.extend(_dynamic_supervisor(*sizes.supervised))
    return rec


def _dynamic_supervisor(n: int, small: int) -> list[Record]:
    """Start+stop of many temporary children under a DynamicSupervisor, against the
    same servers started without one (runs interleaved, medians over runs)."""
    from benchmarks._harness import make_record, progress
    from runtime import DynamicSupervisor, GenServer

    class Idle(GenServer):
        pass

    def bare(n: int) -> float:
        t0 = time.perf_counter()
        refs = [Idle.start() for _ in range(n)]
        for ref in refs:
            ref.stop()
        return time.perf_counter() - t0

    def supervised(n: int) -> float:
        t0 = time.perf_counter()
        sup = DynamicSupervisor.start(Idle.child_spec(restart="temporary"))
        for _ in range(n):
            sup.start_child()
        sup.stop(timeout=None)
        return time.perf_counter() - t0

    runs = 3
    progress(f"bench_core: DynamicSupervisor, {n} temporary children x {runs} runs")
    times: dict[str, list[float]] = {"sup": [], "bare": [], "sup_small": [], "bare_small": []}
    for r in range(runs):
        gc.collect()
        order = [("sup", supervised, n), ("bare", bare, n),
                 ("sup_small", supervised, small), ("bare_small", bare, small)]
        for key, fn, count in order[r % 4:] + order[:r % 4]:
            times[key].append(fn(count) / count * 1e6)  # us per child
    growth = {
        key: [big / little for big, little in zip(times[key], times[f"{key}_small"])]
        for key in ("sup", "bare")
    }
    note = (f"{n} GenServers started one by one and stopped; supervisor: start_child calls, "
            "then one stop of the supervisor (children stopped concurrently)")
    return [
        make_record(
            "dynamic_supervisor",
            f"start+stop per temporary child ({n} children)",
            times["sup"],
            "us",
            "same GenServers without a supervisor",
            times["bare"],
            notes=f"context; {note}",
        ),
        make_record(
            "dynamic_supervisor",
            f"growth of the cost per child, {small} -> {n} children",
            growth["sup"],
            "x",
            "same growth without a supervisor",
            growth["bare"],
            notes="linearity: a ratio near 1 means the supervisor adds no growth of its own "
                  "(more live threads slow every start a little, supervised or not)",
        ),
    ]


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Core figures of a sandbox child, against their floors."))
