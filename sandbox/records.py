"""Benchmark records: the JSON record format of DESIGN.md, its table, and the statistics.

Shared by the project's benchmarks (``benchmarks/``) and the load harness users run
on their own apps (:mod:`sandbox.loadtest`, ``sandbox bench --app``), so both
measure and report the same way.

- :func:`make_record` builds a :class:`Record` from per-run values; ``ratio`` is
  always ``value / baseline_value`` and ``met`` is always computed from ``target``
  (:func:`evaluate_target`), never typed in.
- :func:`summarize` / :func:`percentile`: median and range, nearest-rank percentiles.
- :func:`format_table` / :func:`print_table` / :func:`write_json`: the output.

>>> r = make_record("b", "p50", [3.0, 2.0, 4.0], "us", "floor", [1.0, 1.0, 1.0],
...                 target="ratio <= 2.0")
>>> r.value, r.baseline_value, r.ratio, r.met, r.runs
(3.0, 1.0, 3.0, False, 3)
>>> evaluate_target("value <= 5.0", value=4.2, ratio=9.0)
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, overload

__all__ = [
    "REQUIRED_FIELDS",
    "Record",
    "Stat",
    "cpu_count",
    "evaluate_target",
    "format_table",
    "make_record",
    "median_of",
    "parse_target",
    "percentile",
    "print_table",
    "progress",
    "summarize",
    "write_json",
]

#: Fields every record carries, in the order of DESIGN.md's example.
REQUIRED_FIELDS: tuple[str, ...] = (
    "benchmark",
    "figure",
    "value",
    "unit",
    "baseline",
    "baseline_value",
    "ratio",
    "target",
    "met",
    "runs",
    "python",
    "cpus",
)

# -- targets ---------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}
_TARGET_RE = re.compile(
    r"^\s*(ratio|value)\s*(<=|>=|==|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


def parse_target(target: str) -> tuple[str, str, float]:
    """Split ``"ratio <= 2.0"`` into ``("ratio", "<=", 2.0)``.

    >>> parse_target("value>=0.5")
    ('value', '>=', 0.5)
    """
    m = _TARGET_RE.match(target)
    if m is None:
        raise ValueError(
            f"cannot parse target {target!r}: expected '<ratio|value> <op> <number>' "
            f"with op one of {', '.join(_OPS)}"
        )
    return m.group(1), m.group(2), float(m.group(3))


def evaluate_target(target: str | None, *, value: float | None, ratio: float | None) -> bool | None:
    """Whether ``value`` / ``ratio`` meet ``target``; None when there is no target or no figure.

    >>> evaluate_target("ratio >= 0.5", value=1.0, ratio=0.4)
    False
    >>> evaluate_target(None, value=1.0, ratio=1.0) is None
    True
    """
    if target is None:
        return None
    subject, op, bound = parse_target(target)
    x = ratio if subject == "ratio" else value
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return _OPS[op](x, bound)


# -- statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Median and range of the values of repeated runs."""

    median: float
    min: float
    max: float
    values: tuple[float, ...]

    @property
    def range(self) -> tuple[float, float]:
        """``(min, max)``.

        >>> summarize([2, 1]).range
        (1, 2)
        """
        return (self.min, self.max)


def summarize(values: Iterable[float]) -> Stat:
    """Median, min and max of per-run values.

    >>> summarize([3, 1, 2]).median
    2
    """
    vals = tuple(values)
    if not vals:
        raise ValueError("no values to summarize")
    return Stat(statistics.median(vals), min(vals), max(vals), vals)


def median_of(fn: Callable[[], float], runs: int) -> Stat:
    """Call ``fn`` ``runs`` times; the median and range of what it returned.

    >>> it = iter([5.0, 1.0, 3.0])
    >>> s = median_of(lambda: next(it), 3); (s.median, s.range)
    (3.0, (1.0, 5.0))
    """
    return summarize(fn() for _ in range(runs))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an already sorted sequence.

    >>> percentile(list(range(1, 101)), 99)
    99
    """
    if not sorted_values:
        raise ValueError("no values")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# -- records -----------------------------------------------------------------------------


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@overload
def _round(x: float, digits: int = 3) -> float: ...
@overload
def _round(x: None, digits: int = 3) -> None: ...
def _round(x: float | None, digits: int = 3) -> float | None:
    if x is None:
        return None
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return x
    # About 4 significant figures below 1, 3 decimals up to 1000, 1 decimal above.
    if x != 0 and abs(x) < 1:
        return float(f"{x:.4g}")
    return round(float(x), digits if abs(x) < 1000 else 1)


@dataclass
class Record:
    """One figure of one benchmark: the project's median against its baseline's.

    Fields are those of DESIGN.md's record; ``higher_is_better``, ``min``/``max`` (range
    of the project's per-run values), ``baseline_min``/``baseline_max`` and ``notes`` are
    optional and left out of the JSON when unset.
    """

    benchmark: str
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float | None
    ratio: float | None
    target: str | None
    met: bool | None
    runs: int
    python: str
    cpus: int
    higher_is_better: bool | None = None
    min: float | None = None
    max: float | None = None
    baseline_min: float | None = None
    baseline_max: float | None = None
    notes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("higher_is_better", "min", "max", "baseline_min", "baseline_max", "notes"):
            if d[key] is None:
                del d[key]
        return d

    def check(self) -> None:
        """Raise ValueError if ``ratio`` or ``met`` disagree with the other fields."""
        if self.baseline_value:
            want = _round(self.value / self.baseline_value)
            if self.ratio is None or abs(self.ratio - want) > 1e-9 * max(1.0, abs(want)):
                raise ValueError(
                    f"{self.figure}: ratio {self.ratio} != value/baseline_value {want}"
                )
        met = evaluate_target(self.target, value=self.value, ratio=self.ratio)
        if met != self.met:
            raise ValueError(
                f"{self.figure}: met={self.met} but target {self.target!r} gives {met}"
            )


def make_record(
    benchmark: str,
    figure: str,
    values: Sequence[float] | Stat,
    unit: str,
    baseline: str,
    baseline_values: Sequence[float] | Stat | None,
    *,
    target: str | None = None,
    higher_is_better: bool = False,
    notes: str | None = None,
) -> Record:
    """Build a record from per-run values of the project and of the baseline.

    ``value`` and ``baseline_value`` are the medians (rounded for the JSON);
    ``ratio`` and ``met`` are computed from those rounded numbers, so anyone can
    check a record from its own fields.
    """
    if target is not None:
        parse_target(target)  # fail early on a typo
    stat = values if isinstance(values, Stat) else summarize(values)
    bstat = None
    if baseline_values is not None:
        bstat = baseline_values if isinstance(baseline_values, Stat) else summarize(baseline_values)
    value = _round(stat.median)
    baseline_value = _round(bstat.median) if bstat is not None else None
    ratio = _round(value / baseline_value) if baseline_value else None
    met = evaluate_target(target, value=value, ratio=ratio)
    return Record(
        benchmark=benchmark,
        figure=figure,
        value=value,
        unit=unit,
        baseline=baseline,
        baseline_value=baseline_value,
        ratio=ratio,
        target=target,
        met=met,
        runs=len(stat.values),
        python=platform.python_version(),
        cpus=cpu_count(),
        higher_is_better=True if higher_is_better else None,
        min=_round(stat.min),
        max=_round(stat.max),
        baseline_min=_round(bstat.min) if bstat is not None else None,
        baseline_max=_round(bstat.max) if bstat is not None else None,
        notes=notes,
    )


# -- output ------------------------------------------------------------------------------


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e5:
        s = f"{x:,.0f}"
    elif abs(x) >= 100:
        s = f"{x:.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return f"{s} {unit}".rstrip()


def _spread(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return ""
    return f" [{_fmt(lo)}..{_fmt(hi)}]"


def format_table(records: Sequence[Record], *, spread: bool = True) -> str:
    """The records as an aligned text table (figure, project, baseline, ratio, target, met)."""
    headers = ["benchmark", "figure", "project", "baseline", "vs", "ratio", "target", "met"]
    rows = []
    for r in records:
        proj = _fmt(r.value, r.unit) + (_spread(r.min, r.max) if spread else "")
        base = _fmt(r.baseline_value, r.unit) + (
            _spread(r.baseline_min, r.baseline_max) if spread else ""
        )
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        if r.higher_is_better and r.ratio is not None:
            ratio += " (hib)"
        met = "-" if r.met is None else ("met" if r.met else "MISSED")
        rows.append([r.benchmark, r.figure, proj, base, r.baseline, ratio, r.target or "-", met])
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    missed = [r for r in records if r.met is False]
    reached = [r for r in records if r.met is True]
    lines.append("")
    untargeted = len(records) - len(reached) - len(missed)
    runs = records[0].runs if records else 0
    lines.append(
        f"{len(reached)} met, {len(missed)} missed, {untargeted} without target"
        f" ({runs} runs, python {platform.python_version()}, {cpu_count()} cpus;"
        " [min..max] over runs; hib = higher is better)"
    )
    return "\n".join(lines)


def print_table(records: Sequence[Record], *, file: IO[str] | None = None) -> None:
    """Print :func:`format_table` of the records (to stdout by default)."""
    print(format_table(records), file=file or sys.stdout, flush=True)


def write_json(records: Sequence[Record], path: str | os.PathLike[str]) -> None:
    """Write the records as a JSON list (atomically: a temp file, then a rename)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([r.to_dict() for r in records], indent=2) + "\n")
    os.replace(tmp, path)


def progress(message: str) -> None:
    """One progress line on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)
