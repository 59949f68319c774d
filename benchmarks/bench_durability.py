"""What the durable store costs: create and reload with it, against the same runtime
with the store detached.

Run alone: ``python benchmarks/bench_durability.py [--quick] [--json PATH]``.

- ``create``: ``create_sandbox`` of the counter app up to its first reply, one at a
  time (the store writes the versions of every module and the sandbox's desired
  state). Target: ratio <= 1.1.
- ``reload``: ``hot_reload(source=...)`` of one module of a running counter (the
  store writes a journal entry, then the new version, the log and the journal's
  verdict in one transaction). Target: ratio <= 1.2.
- ``store writes``: the store's own time for the writes of one reload (journal
  entry + record transaction), in microseconds, against an in-memory database.

The baseline is the same runtime in the same run with the store detached from the
version manager, the manager and the reload journal (what the runtime did before
the store), so the ratio is the store's share. The state directory is on the
machine's temporary file system; WAL with ``synchronous=NORMAL``.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Record

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"
SOURCE = (COUNTER / "counter.py").read_text()


@contextmanager
def _detached(rt: Any) -> Iterator[None]:
    """The runtime without its store: what ran before it (the baseline)."""
    actors = [rt.component("versions")._actor, rt.component("manager")._actor]
    store = rt.state.store
    for a in actors:
        a.store = None
    rt.state.store = None
    try:
        yield
    finally:
        for a in actors:
            a.store = store
        rt.state.store = store


def _create(rt: Any, sandbox_id: str) -> float:
    gc.collect()
    t0 = time.perf_counter()
    rt.create_sandbox(sandbox_id, COUNTER).call("counter", "get")
    return time.perf_counter() - t0


def _reload(sb: Any, edit: int) -> float:
    source = SOURCE + f"\n# edit {edit}\n"  # a new version each time
    t0 = time.perf_counter()
    sb.hot_reload(source={"counter": source})
    return time.perf_counter() - t0


def _paired(rt: Any, n: int, op: Any) -> tuple[float, float]:
    """Medians (seconds) of ``op(i)`` with the store and detached, interleaved one by
    one (the order alternating) so the machine's load falls on both alike."""
    on, off = [], []
    for i in range(n):
        for store in (True, False) if i % 2 == 0 else (False, True):
            if store:
                on.append(op(2 * i))
            else:
                with _detached(rt):
                    off.append(op(2 * i + 1))
    return statistics.median(on), statistics.median(off)


def _store_writes(n: int) -> tuple[list[float], list[float]]:
    """Microseconds per reload's writes: on disk (WAL) and in memory."""
    from actors.store import Store, StoredVersion

    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        for where in (os.path.join(d, "state.db"), ":memory:"):
            st = Store.open(where)
            times = []
            for i in range(1, n + 1):
                v = StoredVersion("sb", "counter", i, "s", "c", 0.0, (), len(SOURCE), "/c.py",
                                  False, b"x" * 2000, SOURCE.encode())
                t0 = time.perf_counter()
                st.journal_begin(f"r{i}", "sb", "reload", {"counter": i})
                st.record_versions("sb", [v], keep=10, journal=f"r{i}")
                times.append((time.perf_counter() - t0) * 1e6)
            st.close()
            out[where] = times
    disk, mem = out.values()
    return disk, mem


def main(quick: bool = False) -> list[Record]:
    import sandbox
    from benchmarks._harness import make_record, pick, progress

    runs, creates, reloads, writes = pick(
        quick, full=(5, 10, 20, 200), quick_sizes=(3, 3, 5, 50), smoke_sizes=(1, 1, 2, 5))
    records: list[Record] = []
    with tempfile.TemporaryDirectory() as state, sandbox.start(state_dir=state) as rt:
        _create(rt, "warm")
        sb = rt.create_sandbox("reloaded", COUNTER)
        _reload(sb, -1)
        c, bc, r, br = [], [], [], []
        for k in range(runs):
            progress(f"bench_durability: run {k + 1}/{runs}")
            ids = [f"r{k}-{i}" for i in range(2 * creates)]
            x, y = _paired(rt, creates, lambda i: _create(rt, ids[i]))
            c.append(x * 1000)
            bc.append(y * 1000)
            for sid in ids:
                rt.destroy_sandbox(sid)
            x, y = _paired(rt, reloads, lambda i: _reload(sb, 10_000 * k + i))
            r.append(x * 1000)
            br.append(y * 1000)
        records.append(make_record(
            "durability", "create (store on)", c, "ms", "same runtime, store detached", bc,
            target="ratio <= 1.1",
            notes=f"create_sandbox + first call, median of {creates} per run; store writes the "
                  "versions and the desired state"))
        records.append(make_record(
            "durability", "reload (store on)", r, "ms", "same runtime, store detached", br,
            target="ratio <= 1.2",
            notes=f"hot_reload(source=) of one module, median of {reloads} per run; store writes "
                  "journal + versions in 2 transactions"))
    disk, mem = _store_writes(writes)
    records.append(make_record(
        "durability", "store writes per reload", disk, "us", "same writes, :memory: database",
        mem, target="value <= 5000",
        notes="journal_begin + record_versions (one 2 KB module), WAL, synchronous=NORMAL"))
    return records


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="The durable store's cost, against the store detached."))
