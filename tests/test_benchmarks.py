"""The benchmark harness and a smoke run of one benchmark script run alone.

Never asserts on a measured figure (shared machines): only that the records are
complete and self-consistent (``ratio`` is value / baseline_value, ``met`` follows
from ``target``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import _harness  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    REQUIRED_FIELDS,
    Record,
    evaluate_target,
    format_table,
    make_record,
    median_of,
    parse_target,
    percentile,
    write_json,
)

pytestmark = pytest.mark.timeout(120)


def check_record(d: dict) -> None:
    missing = [f for f in REQUIRED_FIELDS if f not in d]
    assert not missing, f"record {d.get('figure')!r} lacks {missing}"
    assert isinstance(d["benchmark"], str) and d["benchmark"]
    assert isinstance(d["figure"], str) and d["figure"]
    assert isinstance(d["unit"], str) and d["unit"]
    assert isinstance(d["baseline"], str) and d["baseline"]
    assert isinstance(d["value"], (int, float)) and math.isfinite(d["value"]) and d["value"] > 0
    assert isinstance(d["baseline_value"], (int, float)) and d["baseline_value"] > 0
    assert d["ratio"] == pytest.approx(d["value"] / d["baseline_value"], rel=1e-3)
    assert isinstance(d["runs"], int) and d["runs"] >= 1
    assert isinstance(d["cpus"], int) and d["cpus"] >= 1
    assert isinstance(d["python"], str) and d["python"].count(".") == 2
    if d["target"] is None:
        assert d["met"] is None
    else:
        assert isinstance(d["met"], bool)
        assert d["met"] == evaluate_target(d["target"], value=d["value"], ratio=d["ratio"])
    if "min" in d:
        assert d["min"] <= d["value"] <= d["max"]
    if "baseline_min" in d:
        assert d["baseline_min"] <= d["baseline_value"] <= d["baseline_max"]
    if "higher_is_better" in d:
        assert d["higher_is_better"] is True


# -- harness -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "value", "ratio", "met"),
    [
        ("ratio <= 2.0", 10.0, 2.0, True),
        ("ratio <= 2.0", 10.0, 2.01, False),
        ("ratio >= 0.5", 1.0, 0.5, True),
        ("ratio >= 0.5", 1.0, 0.49, False),
        ("value <= 5.0", 4.9, 99.0, True),
        ("value <= 5", 5.1, 0.1, False),
        ("value<1e3", 999.0, 1.0, True),
        ("ratio > 1", 1.0, 1.0, False),
        (None, 1.0, 1.0, None),
    ],
)
def test_evaluate_target(target, value, ratio, met):
    assert evaluate_target(target, value=value, ratio=ratio) is met


@pytest.mark.parametrize(
    "bad", ["ratio =< 2", "speed <= 2", "ratio <= fast", "", "ratio <= 2.0 and"]
)
def test_bad_targets_are_refused(bad):
    with pytest.raises(ValueError, match="cannot parse target"):
        parse_target(bad)
    with pytest.raises(ValueError):
        make_record("b", "f", [1.0], "us", "base", [1.0], target=bad)


def test_make_record_computes_ratio_and_met():
    r = make_record(
        "b", "p50", [30.0, 20.0, 40.0, 25.0, 35.0], "us", "floor", [10.0] * 5, target="ratio <= 2.0"
    )
    assert (r.value, r.baseline_value, r.ratio, r.met, r.runs) == (30.0, 10.0, 3.0, False, 5)
    assert (r.min, r.max) == (20.0, 40.0)
    r.check()
    d = r.to_dict()
    check_record(d)
    assert list(d)[: len(REQUIRED_FIELDS)] == list(REQUIRED_FIELDS)
    assert "higher_is_better" not in d and "notes" not in d


def test_higher_is_better_record():
    r = make_record(
        "b",
        "casts/s",
        [60_000.0],
        "msg/s",
        "floor",
        [100_000.0],
        target="ratio >= 0.5",
        higher_is_better=True,
        notes="n",
    )
    assert r.ratio == 0.6 and r.met is True and r.higher_is_better is True
    check_record(r.to_dict())


def test_record_check_catches_a_typed_in_met():
    r = make_record("b", "f", [3.0], "us", "floor", [1.0], target="ratio <= 2.0")
    r.met = True
    with pytest.raises(ValueError, match="met=True"):
        r.check()


def test_median_of_and_percentile():
    values = iter([5.0, 1.0, 3.0, 4.0, 2.0])
    stat = median_of(lambda: next(values), 5)
    assert (stat.median, stat.range) == (3.0, (1.0, 5.0))
    data = list(range(1, 1001))
    assert (
        percentile(data, 50) == 500
        and percentile(data, 99) == 990
        and percentile(data, 100) == 1000
    )
    assert percentile([7], 99) == 7


def test_table_and_json(tmp_path):
    recs = [
        make_record("b", "p50", [2.0], "us", "floor", [1.0], target="ratio <= 2.0"),
        make_record("b", "p99", [5.0], "us", "floor", [1.0], target="ratio <= 2.0"),
        make_record("b", "ctx", [5.0], "us", "other", [1.0]),
    ]
    text = format_table(recs)
    assert "met" in text and "MISSED" in text and "1 met, 1 missed, 1 without target" in text
    out = tmp_path / "sub" / "r.json"
    write_json(recs, out)
    data = json.loads(out.read_text())
    assert [d["figure"] for d in data] == ["p50", "p99", "ctx"]
    for d in data:
        check_record(d)
        Record(**d).check()


def test_parse_args():
    args = _harness.parse_args(["--quick", "--json", "x.json"])
    assert args.quick and args.json == "x.json"
    assert not _harness.parse_args([]).quick


def test_run_all_runs_every_bench_module(monkeypatch, tmp_path, capsys):
    """run_all imports each bench_* module and calls its main(quick=...)."""
    calls = []

    class Fake:
        @staticmethod
        def main(quick=False):
            calls.append(quick)
            return [make_record("fake", "f", [1.0], "us", "base", [1.0], target="ratio <= 2.0")]

    monkeypatch.setattr(_harness, "bench_modules", lambda: ["fake_a", "fake_b"])
    monkeypatch.setattr(_harness.importlib, "import_module", lambda name: Fake)
    out = tmp_path / "all.json"
    records = _harness.run_all(quick=True, json_path=out)
    assert calls == [True, True] and len(records) == 2
    assert len(json.loads(out.read_text())) == 2
    captured = capsys.readouterr()
    assert "[1/2] fake_a" in captured.err and "[2/2] fake_b" in captured.err
    assert "2 met, 0 missed" in captured.out


def test_bench_modules_are_found():
    names = _harness.bench_modules()
    assert "benchmarks.bench_core" in names


# -- the core benchmark, quick ---------------------------------------------------------


def assert_no_leftover_processes(marker: str) -> None:
    """Every process the benchmark started (they inherit its environment) must end.

    Helpers such as the forkserver exit on EOF once the benchmark has exited, so
    give them a moment, event-driven (psutil waits on the processes themselves).
    """
    psutil = pytest.importorskip("psutil")

    def marked() -> list:
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("SANDBOX_BENCH_TEST_MARKER") == marker:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    _gone, alive = psutil.wait_procs(marked(), timeout=10)
    leftovers = []
    for p in alive:
        try:
            leftovers.append(f"{p.pid} {p.cmdline()}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not leftovers, f"benchmark left processes behind: {leftovers}"


def test_a_script_run_alone_with_smoke_writes_valid_records(tmp_path):
    """``python benchmarks/bench_X.py --smoke --json PATH``: the flag alone makes a smoke
    run (tests/test_cli_bench.py runs every benchmark through the CLI that way)."""
    out = tmp_path / "profiles.json"
    env = {k: v for k, v in os.environ.items() if k != _harness.SMOKE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    marker = f"bench-smoke-{os.getpid()}-{id(out)}"
    env["SANDBOX_BENCH_TEST_MARKER"] = marker
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_profiles.py"), "--smoke",
         "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_leftover_processes(marker)
    assert "ratio" in proc.stdout and "target" in proc.stdout
    assert "bench_profiles: high x 1" in proc.stderr  # smoke sizes: one run each
    data = json.loads(out.read_text())
    assert isinstance(data, list) and data
    for d in data:
        check_record(d)
        assert d["runs"] == 1
    assert {d["benchmark"] for d in data} == {"profile_create", "profile_memory", "profile_layers"}


@pytest.mark.parametrize(
    ("env", "quick", "expected"),
    [({}, False, "full"), ({}, True, "quick"), ({"SANDBOX_BENCH_SMOKE": "1"}, False, "smoke"),
     ({"SANDBOX_BENCH_SMOKE": "1"}, True, "smoke"), ({"SANDBOX_BENCH_SMOKE": "0"}, True, "quick")],
)
def test_pick_chooses_the_sizes_of_the_run(monkeypatch, env, quick, expected):
    monkeypatch.delenv(_harness.SMOKE_ENV, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _harness.pick(quick, full="full", quick_sizes="quick", smoke_sizes="smoke") == expected
    assert _harness.smoke() is (expected == "smoke")


def test_the_smoke_flag_sets_the_environment_for_what_the_script_starts(monkeypatch):
    monkeypatch.setenv(_harness.SMOKE_ENV, "0")  # restored after the test
    seen = {}

    def main(quick=False):
        seen.update(quick=quick, smoke=_harness.smoke())
        return []

    assert _harness.run_script(main, ["--smoke"]) == 0
    assert seen == {"quick": False, "smoke": True}
    assert os.environ[_harness.SMOKE_ENV] == "1"


@pytest.mark.parametrize("profile", ["low", "none"])
def test_layer_costs_time_the_steps_a_sandbox_boot_applies(profile):
    from benchmarks._layers import STEPS, layer_costs

    out = layer_costs(profile, str(REPO / "examples" / "counter"))
    assert set(out["took"]) <= set(STEPS) and "privileges" in out["took"], out
    assert all(v >= 0 or k == "privileges" for k, v in out["took"].items()), out
    if profile == "none":
        assert out["applied"] == [] and "guard" not in out["took"]
    else:
        assert "guard" in out["took"] and "rlimits" in out["applied"], out


def test_cgroup_join_times_both_ways_or_says_there_are_no_cgroups():
    from benchmarks._layers import cgroup_join

    took = [cgroup_join(how) for how in ("boot", "procs")]
    assert all(t is None or t > 0 for t in took) and len(set(map(type, took))) == 1, took
