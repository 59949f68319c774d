"""Auto-reload figures: save-to-new-code latency and the idle cost of watching.

Run alone: ``python benchmarks/bench_watch.py [--quick] [--json PATH]``.

In one run it measures:

- **save -> new code**: the time from a file write returning to the first call
  served by the new code, with the actor's state migrated, over 50 edits (20 with
  ``--quick``) of ``examples/counter``'s ``counter.py`` in a sandbox with
  ``auto_reload=True``: the watcher's debounce (20 ms), the incremental compile,
  the swap, and one call. p50 (target: under 30 ms) and p95, against a
  restart-style reloader measured edit by edit in the same run: a plain stop and
  start of the same sandbox from its files (``destroy_sandbox`` +
  ``create_sandbox``: recompile, new process), which loses the state and is given
  no detection delay at all (real restart-style reloaders add 250 ms-1.6 s of
  debounce on top). ``rt.restart_sandbox`` alone is timed too, as context: it
  restarts the process from the code compiled at creation, so it would keep
  serving the old code.
- **idle CPU** of the host process while its runtime watches 10 sandboxes of
  1,000 source files each, over 30 s (5 s with ``--quick``), from psutil
  ``cpu_times`` (user + system, all threads), against the same runtime and
  sandboxes not watching (target: under 0.5 % of one core).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from benchmarks._harness import Record

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"
FILES_PER_APP = 1000
IDLE_SANDBOXES = 10

COUNTER_SOURCE = """\
from runtime.genserver import GenServer


class Counter(GenServer):
    vsn = {vsn}

    def init(self, start=0):
        return start

    def handle_call(self, request, state):
        if request == "get":
            return state, state
        if request == "which":
            return {n}, state
        if request == "incr":
            return state + 1, state + 1
        raise ValueError(f"unknown request {{request!r}}")

    def handle_cast(self, request, state):
        return state
"""


def counter_source(n: int) -> str:
    return COUNTER_SOURCE.format(vsn=n + 1, n=n)


def copy_counter(target: Path) -> Path:
    shutil.copytree(COUNTER, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "counter.py").write_text(counter_source(0))
    return target


def big_app(target: Path, files: int = FILES_PER_APP) -> Path:
    """The counter app plus small modules in 10 packages: ``files`` sources in all."""
    copy_counter(target)
    extra = files - 2 - 10  # app.py, counter.py, 10 package __init__.py
    for j in range(10):
        pkg = target / f"lib{j}"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        for k in range(extra // 10 + (1 if j < extra % 10 else 0)):
            (pkg / f"m{k}.py").write_text(
                f"VALUE = {j * 1000 + k}\n\n\ndef f(x):\n    return x + VALUE\n"
            )
    return target


class ReloadWaiter:
    """Wakes on the watcher's end-of-reload events of one sandbox."""

    def __init__(self, runtime_name: str, sandbox_id: str) -> None:
        from runtime import telemetry

        self.sandbox_id = sandbox_id
        self.runtime_name = runtime_name
        self.cond = threading.Condition()
        self.done = 0
        self.failed: list[str] = []
        self.handler_id = f"bench-watch-{id(self)}"
        telemetry.attach(self.handler_id, "watcher.reload", self._on)

    def _on(self, event: str, _m: Any, md: Any) -> None:
        if md.get("sandbox") != self.sandbox_id or md.get("runtime") != self.runtime_name:
            return
        if event in ("watcher.reload.stop", "watcher.reload.failed"):
            with self.cond:
                self.done += 1
                if event.endswith("failed"):
                    self.failed.append(str(md.get("error")))
                self.cond.notify_all()

    def wait_past(self, count: int, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.done > count, timeout):
                raise RuntimeError(f"no reload of {self.sandbox_id} within {timeout}s")
            if self.failed:
                raise RuntimeError(f"reload failed: {self.failed[-1]}")

    def close(self) -> None:
        from runtime import telemetry

        telemetry.detach(self.handler_id)


def measure_latency(rt: Any, work: Path, edits: int, warmup: int = 2) -> dict[str, list[float]]:
    """Per edit: ms from the write returning to the first call served by the new code."""
    from benchmarks._harness import progress

    watched = copy_counter(work / "watched")
    restarted = copy_counter(work / "restarted")
    sb = rt.create_sandbox("watched", watched, auto_reload=True)
    # The restarted sandbox takes a new id at each restart: destroying a sandbox
    # removes its compile cache directory, and a new one of the same id would not get
    # it back (the compiler keeps its cache object), which costs nothing here but
    # logs a warning per module (both ways, every module is compiled afresh).
    ids = iter(range(1_000_000))
    current = f"restarted-{next(ids)}"
    rt.create_sandbox(current, restarted)
    state = sb.call("counter", "incr")
    waiter = ReloadWaiter(rt.name, "watched")
    out: dict[str, list[float]] = {"watch": [], "restart": [], "restart_only": []}
    try:
        progress(f"bench_watch: {edits} edits (+{warmup} warm-up) of a watched sandbox and of a "
                 "restarted one, interleaved")
        for i in range(1, warmup + edits + 1):
            timed = i > warmup
            gc.collect()
            # The project: save; the watcher reloads; call the new code.
            seen = waiter.done
            (watched / "counter.py").write_text(counter_source(i))
            t0 = time.perf_counter()
            waiter.wait_past(seen)
            got = sb.call("counter", "which")
            t1 = time.perf_counter()
            if got != i or sb.call("counter", "get") != state:
                raise RuntimeError(f"edit {i}: new code answered {got!r}, state {state}")
            # The baseline: save, stop and start the same sandbox from its files.
            (restarted / "counter.py").write_text(counter_source(i))
            t2 = time.perf_counter()
            rt.destroy_sandbox(current)
            current = f"restarted-{next(ids)}"
            rb = rt.create_sandbox(current, restarted)
            got = rb.call("counter", "which")
            t3 = time.perf_counter()
            if got != i or rb.call("counter", "get") != 0:
                raise RuntimeError(f"edit {i}: restarted sandbox answered {got!r}")
            # Context: a process restart alone (no recompile: the old code comes back).
            t4 = time.perf_counter()
            rt.restart_sandbox(current)
            rb.call("counter", "get", timeout=30)
            t5 = time.perf_counter()
            if timed:
                out["watch"].append((t1 - t0) * 1000)
                out["restart"].append((t3 - t2) * 1000)
                out["restart_only"].append((t5 - t4) * 1000)
    finally:
        waiter.close()
    for sid in ("watched", current):
        rt.destroy_sandbox(sid)
    return out


def measure_idle_cpu(
    rt: Any, work: Path, window: float, sandboxes: int = IDLE_SANDBOXES, files: int = FILES_PER_APP
) -> tuple[float, float, float]:
    """% of one core used by this process, not watching then watching; and setup seconds."""
    import psutil

    from benchmarks._harness import progress

    me = psutil.Process()
    ids = []
    progress(f"bench_watch: creating {sandboxes} sandboxes of {files} files each")
    for i in range(sandboxes):
        app = big_app(work / f"idle{i}", files)
        ids.append(rt.create_sandbox(f"idle{i}", app).id)

    def cpu_percent() -> float:
        gc.collect()
        c0, t0 = me.cpu_times(), time.monotonic()
        time.sleep(window)
        c1, t1 = me.cpu_times(), time.monotonic()
        used = (c1.user - c0.user) + (c1.system - c0.system)
        return 100.0 * used / (t1 - t0)

    progress(f"bench_watch: idle CPU not watching, {window:.0f} s")
    base = cpu_percent()
    t = time.perf_counter()
    for sid in ids:
        status = rt.enable_auto_reload(sid)
        if status["files"] != files:
            raise RuntimeError(f"{sid}: watching {status['files']} files, not {files}")
    setup = time.perf_counter() - t
    progress(f"bench_watch: watches set up in {setup:.2f} s; idle CPU watching, {window:.0f} s")
    watching = cpu_percent()
    return watching, base, setup


def main(quick: bool = False) -> list[Record]:
    import sandbox
    from benchmarks._harness import make_record, percentile, progress

    edits = 20 if quick else 50
    window = 5.0 if quick else 30.0
    n_sandboxes, n_files = IDLE_SANDBOXES, FILES_PER_APP
    if os.environ.get("SANDBOX_BENCH_WATCH_SMOKE"):  # tests/test_watcher.py: only the plumbing
        edits, window, n_sandboxes, n_files = 3, 0.5, 2, 50
    records: list[Record] = []
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
        stack.callback(shutil.rmtree, work, True)
        rt = sandbox.start()
        stack.callback(rt.stop)
        lat = measure_latency(rt, work, edits)
        watching, base, setup = measure_idle_cpu(rt, work, window, n_sandboxes, n_files)

    w, r, ro = (sorted(lat[k]) for k in ("watch", "restart", "restart_only"))
    baseline = "stop+start of the same sandbox (destroy+create: recompile, new process; state lost)"
    records.append(make_record(
        "watch_reload_latency", "p50 save -> first call on new code", w, "ms", baseline, r,
        target="value <= 30.0",
        notes=(f"{edits} edits; state kept by the watcher, lost by the restart; includes the "
               f"20 ms debounce; the restart gets no detection delay; rt.restart_sandbox alone "
               f"(process restart, old code) p50 {percentile(ro, 50):.1f} ms"),
    ))
    records.append(make_record(
        "watch_reload_latency", "p95 save -> first call on new code", [percentile(w, 95)], "ms",
        baseline, [percentile(r, 95)],
        notes=f"nearest-rank p95 over {edits} edits (context, no target)",
    ))
    records.append(make_record(
        "watch_idle_cpu", f"idle CPU, {n_sandboxes}x{n_files} files watched", [watching],
        "% of a core", "same runtime and sandboxes, not watching", [base],
        target="value <= 0.5",
        notes=(f"host process user+system over {window:.0f} s (psutil cpu_times); "
               f"{n_sandboxes} watches set up in {setup:.2f} s"),
    ))
    progress(f"bench_watch: done; save->new code p50 {percentile(w, 50):.1f} ms "
             f"(restart {percentile(r, 50):.1f} ms), idle {watching:.3f} % vs {base:.3f} %")
    return records


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Auto-reload: save-to-new-code latency, idle CPU."))
