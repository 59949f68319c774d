"""Shared pieces of the side-by-side benchmarks.

The record format, its statistics and its table live in :mod:`sandbox.records`
(shared with the load harness ``sandbox bench --app``) and are re-exported here.

Every ``benchmarks/bench_*.py`` script measures the project and its baseline in one
run and reports, per figure, a :class:`Record` (the JSON record format of
DESIGN.md): the median over repeated runs of the project's value and of the
baseline's value, their ratio, the target and whether it was met.

- :func:`parse_args` gives every script the same ``--quick`` / ``--smoke`` /
  ``--json PATH``.
- :func:`pick` chooses a script's sizes for the run: full, ``--quick``, or a smoke
  run (:func:`smoke`: ``--smoke`` or ``SANDBOX_BENCH_SMOKE=1``, the test suite's
  way in: toy sizes and no heavyweight baselines such as Ray; the figures mean
  nothing, only that the script runs and its records are whole).
- :func:`make_record` builds a record from the per-run values; ``ratio`` is always
  ``value / baseline_value`` and ``met`` is always computed from ``target``
  (:func:`evaluate_target`), never typed in.
- :func:`median_of` runs a measurement repeatedly and gives its median and range.
- :func:`print_table` / :func:`write_json` print and save a list of records.
- :func:`run_all` imports every ``bench_*`` module and runs its
  ``main(quick=...) -> list[Record]``; the ``sandbox bench`` CLI calls it.

Examples of the record functions are in :mod:`sandbox.records`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "REQUIRED_FIELDS",
    "Record",
    "Stat",
    "bench_modules",
    "cpu_count",
    "evaluate_target",
    "format_table",
    "make_record",
    "median_of",
    "parse_args",
    "percentile",
    "pick",
    "print_table",
    "progress",
    "run_all",
    "run_script",
    "select_modules",
    "RunResults",
    "SMOKE_ENV",
    "smoke",
    "summarize",
    "write_json",
]

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.records import (  # the record format, shared with sandbox.loadtest
    REQUIRED_FIELDS,
    Record,
    Stat,
    cpu_count,
    evaluate_target,
    format_table,
    make_record,
    median_of,
    parse_target,
    percentile,
    print_table,
    progress,
    summarize,
    write_json,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

#: Set to 1 for a smoke run. An environment variable rather than a parameter, so that
#: ``sandbox bench`` and every process a benchmark starts see it too.
SMOKE_ENV = "SANDBOX_BENCH_SMOKE"

T = TypeVar("T")


def smoke() -> bool:
    """True in a smoke run (``--smoke``, or ``SANDBOX_BENCH_SMOKE=1`` in the environment).

    A smoke run checks a benchmark's plumbing in seconds: toy sizes (:func:`pick`)
    and no heavyweight baselines (no Ray); its figures mean nothing.

    Run one script that way: ``python benchmarks/bench_core.py --smoke``, or all of
    them: ``SANDBOX_BENCH_SMOKE=1 sandbox bench``.
    """
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def pick(quick: bool, full: T, quick_sizes: T, smoke_sizes: T) -> T:
    """The sizes of this run: ``smoke_sizes`` in a smoke run, else ``quick_sizes`` if
    ``quick``, else ``full``. Every script picks its sizes through it, so one switch
    (:func:`smoke`) serves them all.

    >>> n, runs = pick(quick=True, full=(3000, 7), quick_sizes=(500, 3), smoke_sizes=(20, 1))
    """
    if smoke():
        return smoke_sizes
    return quick_sizes if quick else full

# -- command line ------------------------------------------------------------------------


def parse_args(
    argv: Sequence[str] | None = None, description: str | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs and messages (a smoke run)"
    )
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"toy sizes, no heavyweight baselines: only checks that it runs ({SMOKE_ENV}=1)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the records as a JSON list to PATH"
    )
    return parser.parse_args(argv)


def run_script(
    main: Callable[..., list[Record]],
    argv: Sequence[str] | None = None,
    description: str | None = None,
) -> int:
    """What each ``bench_*.py`` does under ``if __name__ == "__main__"``."""
    args = parse_args(argv, description)
    if args.smoke:
        os.environ[SMOKE_ENV] = "1"
    try:
        records = main(quick=args.quick)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    print_table(records)
    if args.json:
        write_json(records, args.json)
    return 0


def bench_modules() -> list[str]:
    """Names of the ``benchmarks.bench_*`` modules, sorted."""
    return sorted(f"benchmarks.{p.stem}" for p in BENCH_DIR.glob("bench_*.py"))


def select_modules(only: Iterable[str] | None = None) -> list[str]:
    """The ``bench_*`` modules to run: all, or those named in ``only``.

    A name may be given as ``core``, ``bench_core`` or ``benchmarks.bench_core``;
    an unknown name raises ValueError listing the known ones.

    >>> select_modules(["core"])
    ['benchmarks.bench_core']
    """
    names = bench_modules()
    if only is None:
        return names
    short = {n.rsplit(".", 1)[-1].removeprefix("bench_"): n for n in names}
    chosen = []
    for item in only:
        key = item.rsplit(".", 1)[-1].removeprefix("bench_")
        if key not in short:
            raise ValueError(f"no benchmark {item!r}; known: {', '.join(sorted(short))}")
        if short[key] not in chosen:
            chosen.append(short[key])
    return chosen


class RunResults(list):
    """The records of :func:`run_all` (a list), plus ``failed``: benchmarks that raised."""

    failed: list[str]


def run_all(
    quick: bool = False,
    json_path: str | os.PathLike[str] | None = None,
    *,
    only: Iterable[str] | None = None,
) -> list[Record]:
    """Run every ``benchmarks/bench_*.py`` (or those in ``only``) and print one combined table.

    A benchmark that fails is reported and skipped; the others still run. Returns the
    records as a :class:`RunResults` list whose ``failed`` names the failed ones.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    names = select_modules(only)
    records: list[Record] = RunResults()
    failed: list[str] = []
    for i, name in enumerate(names, 1):
        short = name.rsplit(".", 1)[-1]
        progress(f"[{i}/{len(names)}] {short} ...")
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(name)
            got = mod.main(quick=quick)
        except KeyboardInterrupt:
            raise
        except Exception:
            failed.append(short)
            progress(f"[{i}/{len(names)}] {short} FAILED:\n{traceback.format_exc()}")
            continue
        records.extend(got)
        took = time.perf_counter() - t0
        progress(f"[{i}/{len(names)}] {short} done: {len(got)} figures in {took:.1f} s")
    print_table(records)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", flush=True)
    if json_path:
        write_json(records, json_path)
    records.failed = failed
    return records


if __name__ == "__main__":  # python benchmarks/_harness.py [--quick] [--json PATH]: run them all
    _args = parse_args(description="Run every benchmark and print one combined table.")
    run_all(_args.quick, _args.json)
