"""Sandboxes at scale: batch create/destroy, memory per sandbox, call throughput.

Run alone: ``python benchmarks/bench_sandboxes.py [--quick] [--json PATH]``.

- Time to create N = 1, 10, 100 counter sandboxes with ``batch_create`` (compile,
  version, start, first reply) and to destroy them, against N bare children from
  the same forkserver answering their first call, then closed. Target: ratio <= 2.
- Memory of N idle ``high`` counter sandboxes (USS/PSS per sandbox, psutil), N = 100
  and, in a full run, 1,000; against a bare child. Target: <= 4.5 MiB USS per sandbox.
  The default profile (medium) at the first N, as context.
- Call throughput with 100 sandboxes called from 4 host threads, against 100 bare
  children called the same way (target: ratio >= 0.5) and, as context, one sandbox
  called from one thread. Measured with :func:`sandbox.loadtest.run_load`. The same
  load awaited from 4 asyncio tasks (``AsyncSandbox.call``), against the threads
  (target: ratio >= 1.0, the asyncio API at least as fast as threads). Context
  figures of the same runs: CPU per call of the host and of the called processes,
  against the bare children's (what the ratio is made of).
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Record

MIB = 1024 * 1024
COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"


def _create(rt: Any, n: int, tag: str, profile: str | None = None) -> float:
    spec: dict[str, Any] = {"path": COUNTER} if profile is None else {"path": COUNTER,
                                                                       "profile": profile}
    t0 = time.perf_counter()
    results = rt.batch_create([{"id": f"{tag}-{i}", **spec} for i in range(n)])
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} sandboxes failed to start: {failed[0].error}")
    for r in results:
        r.value.call("counter", "get")
    return time.perf_counter() - t0


def _destroy(rt: Any, n: int, tag: str) -> float:
    t0 = time.perf_counter()
    results = rt.batch_destroy([f"{tag}-{i}" for i in range(n)])
    if not all(r.ok for r in results):
        raise RuntimeError("destroy failed")
    return time.perf_counter() - t0


def _bare(n: int) -> tuple[float, float]:
    from benchmarks._floor import MpBareChild

    t0 = time.perf_counter()
    children = [MpBareChild() for _ in range(n)]
    for c in children:
        c.call("echo", "first")
    created = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in children:
        c.close()
    return created, time.perf_counter() - t0


def _memory(pids: list[int]) -> tuple[float, float]:
    import psutil

    uss, pss = [], []
    for pid in pids:
        m = psutil.Process(pid).memory_full_info()
        uss.append(m.uss / MIB)
        pss.append(m.pss / MIB)
    return statistics.median(uss), statistics.median(pss)


def _cpu_ns(pids: list[int]) -> int:
    """CPU time (ns) the processes ``pids`` used so far, all their threads
    (``/proc/<pid>/task/*/schedstat``: finer than the clock ticks of ``stat``)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def _turns(targets: list[Any], callers: int) -> Callable[[int], Any]:
    """``target(worker)``: the next of caller ``worker``'s own share of ``targets``
    (each caller calls its share in turn)."""
    shares = [targets[k::callers] or targets for k in range(callers)]
    turns = [itertools.count() for _ in range(callers)]

    def target(worker: int) -> Any:
        mine = shares[worker]
        return mine[next(turns[worker]) % len(mine)]

    return target


def _throughput_async(targets: list[Any], tasks: int, seconds: float) -> float:
    """Calls/s of ``tasks`` asyncio tasks awaiting ``AsyncSandbox.call``, each on its
    own share of ``targets`` (sandboxes) in turn, as :func:`_throughput`'s threads do."""
    import asyncio

    from sandbox.aio import AsyncSandbox
    from sandbox.loadtest import run_load_async

    target = _turns([AsyncSandbox(sb) for sb in targets], tasks)

    async def call(worker: int) -> None:
        await target(worker).call("counter", "incr")

    run = run_load_async(call, concurrency=tasks, duration=seconds, warmup=0.2)
    return asyncio.run(run).throughput


def _throughput(targets: list[Any], threads: int, seconds: float,
                pids: list[int] | None = None) -> tuple[float, float, float]:
    """Calls/s of ``threads`` callers, each calling its own share of ``targets`` in turn
    (measured with the load harness users run on their apps: sandbox.loadtest), and
    the CPU per call in microseconds of this (host) process, all its threads, and of
    the processes ``pids`` (the targets' children; nan without them)."""
    from sandbox.loadtest import run_load

    target = _turns(targets, threads)

    def call(worker: int) -> None:
        target(worker).call("counter", "incr")

    run_load(call, concurrency=threads, duration=0.2, warmup=0)  # warm-up, not counted
    children = _cpu_ns(pids or [])  # read outside the host's window: it costs host CPU
    host = time.process_time_ns()
    result = run_load(call, concurrency=threads, duration=seconds, warmup=0)
    host = time.process_time_ns() - host
    children = _cpu_ns(pids or []) - children
    per_call = 1000 * max(result.calls, 1)
    return (result.throughput, host / per_call,
            children / per_call if pids else float("nan"))


def main(quick: bool = False) -> list[Record]:
    import sandbox
    from benchmarks._harness import make_record, pick, progress

    runs, sizes, mem_sizes, n_calls, secs = pick(
        quick,
        full=(5, [1, 10, 100], [100, 1000], 100, 3.0),
        quick_sizes=(3, [1, 10], [20], 20, 1.0),
        smoke_sizes=(1, [2], [2], 4, 0.2),  # 4: one bare child per thread (not thread-safe)
    )
    records: list[Record] = []
    with sandbox.start() as rt:
        _create(rt, 1, "warm")
        _destroy(rt, 1, "warm")
        _bare(1)
        for n in sizes:
            progress(f"bench_sandboxes: create/destroy {n} sandboxes x {runs} runs")
            c, d, bc, bd = [], [], [], []
            for r in range(runs):
                gc.collect()
                c.append(_create(rt, n, f"s{n}-{r}") * 1000)
                d.append(_destroy(rt, n, f"s{n}-{r}") * 1000)
                x, y = _bare(n)
                bc.append(x * 1000)
                bd.append(y * 1000)
            note = "batch_create (8 workers): compile+version+start+first call; baseline sequential"
            records.append(make_record("sandbox_create", f"create {n}", c, "ms",
                                       f"{n} bare forkserver children", bc,
                                       target="ratio <= 2.0", notes=note))
            records.append(make_record("sandbox_create", f"destroy {n}", d, "ms",
                                       f"{n} bare forkserver children", bd,
                                       target="ratio <= 2.0",
                                       notes="batch_destroy: graceful stop, workdir removed"))
        from benchmarks._floor import MpBareChild

        bare = MpBareChild()
        bare.call("echo", "first")
        bare_uss, bare_pss = _memory([bare.pid])
        bare.close()
        # The target is for ``high`` (issue 15); the default profile, medium, is context
        # at the first size only.
        runs_mem = [("high", n) for n in mem_sizes] + [("medium", mem_sizes[0])]
        for profile, n in runs_mem:
            progress(f"bench_sandboxes: memory of {n} idle {profile} sandboxes")
            tag = f"m{n}{profile[0]}"
            _create(rt, n, tag, profile)
            pids = [rt.get_sandbox_info(f"{tag}-{i}")["pid"] for i in range(n)]
            uss, pss = _memory(pids)
            target = "value <= 4.5" if profile == "high" else None
            records.append(make_record("sandbox_memory", f"USS per {profile} sandbox at N={n}",
                                       [uss], "MiB", "bare forkserver child", [bare_uss],
                                       target=target,
                                       notes=f"median over {n} idle {profile} counter sandboxes; "
                                             f"total USS ~{uss * n:.0f} MiB"))
            records.append(make_record("sandbox_memory", f"PSS per {profile} sandbox at N={n}",
                                       [pss], "MiB", "bare forkserver child", [bare_pss],
                                       notes=f"total PSS ~{pss * n:.0f} MiB"))
            _destroy(rt, n, tag)
        progress("bench_sandboxes: call throughput")
        n = n_calls
        _create(rt, n, "t")
        sbs = [rt.sandbox(f"t-{i}") for i in range(n)]
        from benchmarks._floor import MpBareChild

        bares = [MpBareChild() for _ in range(n)]
        called: dict[str, list[Any]] = {"sb": [sb.pid for sb in sbs],
                                        "bare": [b.pid for b in bares]}
        measured: dict[str, tuple[list[float], list[float], list[float]]] = {
            "sb": ([], [], []), "bare": ([], [], [])}
        try:
            one, awaited = [], []
            for r in range(runs):  # alternate which goes first: load elsewhere hits both
                pair: list[tuple[str, list[Any]]] = [("sb", sbs), ("bare", bares)]
                for key, targets in pair if r % 2 == 0 else pair[::-1]:
                    figures = _throughput(targets, 4, secs, called[key])
                    for into, value in zip(measured[key], figures):
                        into.append(value)
                awaited.append(_throughput_async(sbs, 4, secs))
                one.append(_throughput(sbs[:1], 1, secs)[0])
        finally:
            for b in bares:
                b.close()
        many, bare_many = measured["sb"][0], measured["bare"][0]
        note = ("each of 4 host threads calls its own quarter of the targets in turn "
                "(sandbox.loadtest); 2 cores: the host's threads and the children share them")
        records.append(make_record("sandbox_throughput", f"calls/s, {n} sandboxes x 4 threads",
                                   many, "calls/s", f"{n} bare children x 4 threads", bare_many,
                                   target="ratio >= 0.5", higher_is_better=True, notes=note))
        records.append(make_record("sandbox_throughput", f"calls/s, {n} sandboxes x 4 threads",
                                   many, "calls/s", "1 sandbox x 1 thread", one,
                                   higher_is_better=True, notes="context; " + note))
        records.append(make_record(
            "sandbox_throughput", f"awaited calls/s, {n} sandboxes x 4 tasks", awaited, "calls/s",
            f"{n} sandboxes x 4 threads", many, target="ratio >= 1.0", higher_is_better=True,
            notes="AsyncSandbox.call from 4 asyncio tasks, each on its own quarter in turn "
                  "(sandbox.loadtest.run_load_async), against the blocking calls of the same runs"))
        # What the calls/s ratio is made of: CPU per call on each side, same runs.
        for i, (side, what) in enumerate((("host", "the host process, all its threads"),
                                          ("sandbox", "the called processes, all threads")),
                                         start=1):
            records.append(make_record(
                "sandbox_throughput", f"{side} CPU per call, {n} x 4 threads", measured["sb"][i],
                "us", f"{n} bare children x 4 threads", measured["bare"][i],
                notes=f"context; CPU time of {what} (/proc/<pid>/task/*/schedstat, "
                      "process_time) over the calls of the same runs"))
        _destroy(rt, n, "t")
    return records


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Sandboxes at scale, against bare forkserver children."))
