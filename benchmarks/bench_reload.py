"""Hot reload against a full restart, and the compile cache, side by side.

Run alone: ``python benchmarks/bench_reload.py [--quick] [--json PATH]``.

In one run it measures:

- **reload latency**: from the ``hot_reload()`` API call to the first reply from
  the new code, its state migrated (the reply carries the new code's version and
  the actor's state, both checked), for 1 changed module in apps of 1, 10 and 100
  modules, each app holding 1,000 live actors of the changed class; against a full
  restart of the same sandbox (``rt.restart_sandbox``: a new process boots the
  same code, every actor's state is lost) until its first reply, measured in the
  same run, in alternation. Targets: ratio <= 0.05 for each app, and p50 <= 10 ms
  for the 1-module app. As context, the part spent inside the sandbox with the
  actors held (``report.swap_seconds``), and the same reload when the 1,000 actors
  are static children of the app's root supervisor (every reload then re-reads
  1,000 child specs from the entry to apply spec changes).
- **compile** of a 100-module app: cold (empty cache) against the same sources
  compiled in-process with ``compile()`` (no isolation, no scan, no cache); cached
  (nothing changed: nothing may be recompiled) and incremental (1 of 100 changed,
  ``incremental_compile``) against cold.

Each app: ``app.py`` (the entry), ``cells.py`` (the changed module: the ``Cell``
GenServer and the ``Pool`` starting the 1,000 cells) and N - 1 helper modules
(imported by the entry, importing each other in a chain, not depending on
``cells``). Edits change one constant of ``cells.py``.

Everything started is stopped in a ``finally``; temporary apps are removed.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from benchmarks._harness import Record

ACTORS = 1000
SIZES = (1, 10, 100)


@dataclass(frozen=True)
class Sizes:
    runs: int  # runs per figure (each run: `reloads` reloads, then one restart)
    reloads: int  # timed reloads per run
    static_runs: int  # runs of the static-children context figure
    actors: int = ACTORS  # live actors of the changed class

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        from benchmarks._harness import pick

        return pick(quick, full=cls(runs=7, reloads=10, static_runs=5),
                    quick_sizes=cls(runs=3, reloads=5, static_runs=2),
                    smoke_sizes=cls(runs=1, reloads=1, static_runs=1, actors=10))


# -- the apps ------------------------------------------------------------------------------

CELLS = '''"""The changed module: 1,000 cells, started by a pool."""

from runtime.genserver import GenServer

VSN = 1


class Cell(GenServer):
    vsn = VSN

    def init(self, n):
        return {{"n": n, "hits": 0}}

    def code_change(self, old_vsn, state, extra):
        return {{**state, "migrated_from": old_vsn}}

    def handle_call(self, request, state):
        state = {{**state, "hits": state["hits"] + 1}}
        return (VSN, state["n"], state.get("migrated_from")), state


class Pool(GenServer):
    def init(self, n):
        return [Cell.start(i, name=f"c{{i}}") for i in range(n)]

    def handle_call(self, request, state):
        return len(state), state

    def terminate(self, reason, state):
        for ref in state:
            ref.stop()


def static_children(n):
    return [Cell.child_spec(i, name=f"c{{i}}", id=f"c{{i}}") for i in range(n)]
'''

HELPER = '''"""Helper module {i} of the benchmark app."""

{imports}

RATE = {i}


class Account{i}:
    def __init__(self, balance=0):
        self.balance = balance

    def deposit(self, amount):
        self.balance += amount * RATE
        return self.balance


def total{i}(values):
    return sum(v * RATE for v in values){chain}


def describe{i}(x):
    return f"helper {i}: {{x!r}}"
'''

ENTRY = '''"""Benchmark app entry."""

import cells
{imports}


def children():
    {body}
'''


def write_app(root: Path, n_modules: int, *, static: bool = False, actors: int = ACTORS) -> Path:
    """An app of ``n_modules`` modules besides the entry (``cells`` + helpers)."""
    root.mkdir(parents=True)
    (root / "cells.py").write_text(CELLS.format())
    helpers = [f"h{i:03d}" for i in range(1, n_modules)]
    for k, name in enumerate(helpers):
        prev = helpers[k - 1] if k else None
        (root / f"{name}.py").write_text(HELPER.format(
            i=k + 1,
            imports=f"import {prev}" if prev else "import math",
            chain=f" + {prev}.total{k}(values)" if prev else " + math.floor(0.5)",
        ))
    body = (f"return cells.static_children({actors})" if static
            else f"return [cells.Pool.child_spec({actors}, name=\"pool\")]")
    (root / "app.py").write_text(ENTRY.format(
        imports="\n".join(f"import {h}" for h in helpers), body=body))
    return root


def set_version(app: Path, version: int) -> None:
    p = app / "cells.py"
    text = p.read_text()
    start = text.index("VSN = ")
    end = text.index("\n", start)
    p.write_text(text[:start] + f"VSN = {version}" + text[end:])


# -- measurements ------------------------------------------------------------------------


class ReloadSeries:
    """One sandbox of one app: timed reloads and restarts, in alternation."""

    def __init__(self, rt: Any, sandbox_id: str, app: Path, actors: int = ACTORS) -> None:
        self.rt = rt
        self.app = app
        self.actors = actors
        self.sb = rt.create_sandbox(sandbox_id, app)
        self.version = 1
        self._wait_ready()

    def _wait_ready(self) -> None:
        got = self.sb.call(f"c{self.actors - 1}", "ping", timeout=60)
        if got[0] != self.version:
            raise AssertionError(f"expected version {self.version}, got {got!r}")

    def reload(self) -> tuple[float, float]:
        """(ms from the API call to the first reply of the new code, ms actors held)."""
        self.version += 1
        set_version(self.app, self.version)
        gc.collect()
        t0 = time.perf_counter()
        report = self.sb.hot_reload()
        got = self.sb.call(f"c{self.actors - 1}", "ping")
        dt = time.perf_counter() - t0
        if got[0] != self.version or got[1] != self.actors - 1 or got[2] != self.version - 1:
            raise AssertionError(f"reload to {self.version}: the reply was {got!r}")
        if report.actors < self.actors or report.changed != ["cells"]:
            raise AssertionError(f"reload migrated {report.actors} actors: {report}")
        return dt * 1000, report.swap_seconds * 1000

    def restart(self) -> float:
        """ms from restart_sandbox to the first reply of the restarted sandbox."""
        gc.collect()
        t0 = time.perf_counter()
        self.rt.restart_sandbox(self.sb.id)
        got = self.sb.call(f"c{self.actors - 1}", "ping", timeout=60)
        dt = time.perf_counter() - t0
        if got[2] is not None:
            raise AssertionError(f"a restart keeps no state, yet the reply was {got!r}")
        return dt * 1000


def measure_reloads(rt: Any, tmp: Path, sizes: Sizes) -> dict[str, list[float]]:
    from benchmarks._harness import progress

    out: dict[str, list[float]] = {}
    series = {n: ReloadSeries(rt, f"reload-{n}", write_app(tmp / f"app{n}", n, actors=sizes.actors),
                              sizes.actors) for n in SIZES}
    for s in series.values():  # warm: first compile of an edit, first swap
        s.reload()
    for run in range(sizes.runs):
        progress(f"bench_reload: reload latency, run {run + 1}/{sizes.runs}")
        order = list(SIZES[run % 3:] + SIZES[:run % 3])  # rotate: load falls on all alike
        for n in order:
            s = series[n]
            lat, held = zip(*(s.reload() for _ in range(sizes.reloads)), strict=True)
            out.setdefault(f"reload_{n}", []).append(statistics.median(lat))
            out.setdefault(f"held_{n}", []).append(statistics.median(held))
            out.setdefault(f"restart_{n}", []).append(s.restart())
    for n in SIZES:
        rt.destroy_sandbox(f"reload-{n}")

    progress(f"bench_reload: {sizes.actors} actors as static children (context)")
    s = ReloadSeries(rt, "reload-static",
                     write_app(tmp / "static", 1, static=True, actors=sizes.actors), sizes.actors)
    s.reload()
    for _ in range(sizes.static_runs):
        lat = [s.reload()[0] for _ in range(sizes.reloads)]
        out.setdefault("reload_static", []).append(statistics.median(lat))
        out.setdefault("restart_static", []).append(s.restart())
    rt.destroy_sandbox("reload-static")
    return out


def measure_compile(tmp: Path, runs: int) -> dict[str, list[float]]:
    from actors.compiler import CompilerActor
    from actors.scan import ProfileScanner
    from benchmarks._harness import progress

    app = write_app(tmp / "compile-app", 100)
    files = sorted(app.glob("*.py"))
    out: dict[str, list[float]] = {}
    ref = CompilerActor.start(scanner=ProfileScanner(), cache_dir=tmp / "compile-cache")
    try:
        ref.invoke("compile_sandbox", app, timeout=120)  # worker up, imports warm
        for run in range(runs):
            progress(f"bench_reload: compile, run {run + 1}/{runs}")
            t0 = time.perf_counter()
            for f in files:
                compile(f.read_bytes(), str(f), "exec")
            out.setdefault("inprocess", []).append((time.perf_counter() - t0) * 1000)

            ref.invoke("clear_cache")
            ref.invoke("clear_cache", tmp / "compile-cache")
            t0 = time.perf_counter()
            r = ref.invoke("compile_sandbox", app, timeout=120)
            out.setdefault("cold", []).append((time.perf_counter() - t0) * 1000)
            if len(r.recompiled) != len(files) or not r.ok:
                raise AssertionError(f"cold compile: {r.summary()}")
            ref.invoke("status")  # the entries are written after the answer: not in "cached"

            t0 = time.perf_counter()
            r = ref.invoke("compile_sandbox", app, timeout=120)
            out.setdefault("cached", []).append((time.perf_counter() - t0) * 1000)
            if r.recompiled or len(r.cached) != len(files):
                raise AssertionError(f"unchanged app recompiled {r.recompiled}")

            set_version(app, 100 + run)
            t0 = time.perf_counter()
            r = ref.invoke("incremental_compile", app, [str(app / "cells.py")], timeout=120)
            out.setdefault("incremental", []).append((time.perf_counter() - t0) * 1000)
            if r.recompiled != ["cells"]:
                raise AssertionError(f"incremental compile recompiled {r.recompiled}")
    finally:
        ref.stop()
    return out


def main(quick: bool = False) -> list[Record]:
    import sandbox
    from benchmarks._harness import make_record, progress

    sizes = Sizes.for_mode(quick)
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    try:
        progress(f"bench_reload: {'quick' if quick else 'full'}: {sizes.runs} runs of "
                 f"{sizes.reloads} reloads, apps of {', '.join(map(str, SIZES))} modules")
        with sandbox.start() as rt:
            v = measure_reloads(rt, tmp, sizes)
        v.update(measure_compile(tmp, sizes.runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"bench_reload: done in {time.perf_counter() - t_all:.1f} s")

    restart = "full restart (restart_sandbox, state lost)"
    rec: list[Record] = []
    for n in SIZES:
        note = (f"hot_reload() to the first reply of the new code, state migrated; "
                f"1 of {n} module{'s' if n > 1 else ''} changed, {sizes.actors} live actors of "
                f"the changed class; p50 of {sizes.reloads} reloads per run")
        rec.append(make_record(
            "reload_latency", f"1 changed of {n} module{'s' if n > 1 else ''}: p50",
            v[f"reload_{n}"], "ms", restart, v[f"restart_{n}"],
            target="ratio <= 0.05", notes=note))
    rec.append(make_record(
        "reload_latency", "1 changed of 1 module: p50 (absolute)", v["reload_1"], "ms",
        restart, v["restart_1"], target="value <= 10.0",
        notes=f"{sizes.actors} live actors of the changed class"))
    for n in (1, 100):
        rec.append(make_record(
            "reload_latency", f"actors held in the swap, 1 of {n}: p50", v[f"held_{n}"], "ms",
            restart, v[f"restart_{n}"],
            notes="context: report.swap_seconds, inside the sandbox (stage, migrate, commit)"))
    rec.append(make_record(
        "reload_latency", "1 changed of 1 module, static children: p50", v["reload_static"],
        "ms", restart, v["restart_static"],
        notes=f"context: the {sizes.actors} cells are static children of the root supervisor, so "
              f"each reload also re-reads {sizes.actors} child specs from the entry"))
    mods = "100-module app"
    rec.append(make_record(
        "compile", f"{mods}: cold", v["cold"], "ms",
        "in-process compile() (no isolation, scan or cache)", v["inprocess"],
        notes="context: empty cache, every module compiled and scanned in the worker (to "
              "the answer: the cache entries are written after it)"))
    rec.append(make_record(
        "compile", f"{mods}: cached (nothing changed)", v["cached"], "ms",
        "cold compile (empty cache)", v["cold"],
        notes="every file read and hashed, nothing recompiled (checked)"))
    rec.append(make_record(
        "compile", f"{mods}: incremental (1 of 100 changed)", v["incremental"], "ms",
        "cold compile (empty cache)", v["cold"],
        notes="incremental_compile with the changed file, as the watcher does"))
    return rec


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Hot reload against a full restart; the compile cache."))
