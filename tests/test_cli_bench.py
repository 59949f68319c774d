"""``sandbox bench``: every benchmark through the harness, one table, valid JSON.

Never asserts on a measured figure (shared machines): only that every benchmark ran
and every record is complete and self-consistent.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import cli

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from test_benchmarks import assert_no_leftover_processes, check_record  # noqa: E402

from benchmarks import _harness  # noqa: E402

#: The figures of bench_core: (benchmark, figure, baseline).
CORE_FIGURES = {
    ("call_roundtrip", "p50 round trip", "bare child (same forkserver)"),
    ("call_roundtrip", "p99 round trip", "bare child (same forkserver)"),
    ("call_roundtrip", "p50 round trip", "same child, calls via the actor's mailbox"),
    ("call_roundtrip", "p99 round trip", "same child, calls via the actor's mailbox"),
    ("call_roundtrip", "p50 round trip", "same child pinned to one CPU"),
    ("call_roundtrip", "p99 round trip", "same child pinned to one CPU"),
    ("call_roundtrip", "p50 round trip", "mp.Pipe+pickle echo child"),
    ("call_roundtrip", "p99 round trip", "mp.Pipe+pickle echo child"),
    ("call_roundtrip", "p50 round trip", "pykka ask (2 threads)"),
    ("call_roundtrip", "p99 round trip", "pykka ask (2 threads)"),
    ("cast_throughput", "casts/s unbatched", "bare child counting frames"),
    ("cast_throughput", "casts/s batched (500)", "bare child counting frames"),
    ("child_start", "start to first reply", "bare child (same forkserver)"),
    ("child_start", "start to first reply", "minimal fork server child"),
    ("child_memory", "idle child USS", "bare child (same forkserver)"),
    ("child_memory", "idle child PSS", "bare child (same forkserver)"),
    ("child_memory", "idle child USS", "minimal fork server child"),
}


#: Benchmarks whose quick run is tested on its own (slow ones): the CLI test below
#: runs every other benchmark, so each is run somewhere in the suite.
COVERED_ELSEWHERE = {
    "bench_reload": "tests/test_hot_reload_bench.py",
    "bench_watch": "tests/test_watcher.py",
}


def sandbox_command() -> list[str]:
    """The installed console script, as a user runs it (or the module, if not on disk)."""
    script = Path(sys.executable).parent / "sandbox"
    if script.is_file():
        return [str(script)]
    found = shutil.which("sandbox")
    return [found] if found else [sys.executable, "-m", "sandbox.cli"]


def check_any_record(d: dict) -> None:
    """A record is complete and self-consistent (figures of 0 are allowed: idle CPU)."""
    missing = [f for f in _harness.REQUIRED_FIELDS if f not in d]
    assert not missing, f"record {d.get('figure')!r} lacks {missing}"
    for key in ("benchmark", "figure", "unit", "baseline", "python"):
        assert isinstance(d[key], str) and d[key], (key, d)
    assert isinstance(d["value"], (int, float)) and math.isfinite(d["value"]) and d["value"] >= 0
    assert d["baseline_value"] is None or d["baseline_value"] >= 0
    if d["baseline_value"]:
        assert d["ratio"] == pytest.approx(d["value"] / d["baseline_value"], rel=1e-3)
    assert isinstance(d["runs"], int) and d["runs"] >= 1
    assert isinstance(d["cpus"], int) and d["cpus"] >= 1
    if d["target"] is None:
        assert d["met"] is None
    else:
        assert d["met"] == _harness.evaluate_target(d["target"], value=d["value"],
                                                    ratio=d["ratio"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sandbox_bench_quick_writes_every_figure_as_valid_json(tmp_path):
    modules = [n.rsplit(".", 1)[-1] for n in _harness.bench_modules()]
    chosen = [m for m in modules if m not in COVERED_ELSEWHERE]
    assert "bench_core" in chosen
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    marker = f"cli-bench-{os.getpid()}-{id(out)}"
    env["SANDBOX_BENCH_TEST_MARKER"] = marker
    proc = subprocess.run(
        [*sandbox_command(), "bench", "--quick", "--json", str(out), "--only", ",".join(chosen)],
        cwd=tmp_path,  # benchmarks/ is found next to the package, not from the cwd
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_leftover_processes(marker)
    done = dict(re.findall(r"\] (bench_\w+) done: (\d+) figures", proc.stderr))
    assert sorted(done) == sorted(chosen), proc.stderr
    assert "FAILED" not in proc.stderr and "failed benchmarks" not in proc.stdout
    for i, name in enumerate(chosen, 1):  # the progress lines
        assert f"[{i}/{len(chosen)}] {name} ..." in proc.stderr

    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == sum(int(k) for k in done.values())
    for d in data:
        check_any_record(d)
    keys = [(d["benchmark"], d["figure"], d["baseline"]) for d in data]
    assert len(keys) == len(set(keys)), "a figure is reported twice"
    assert CORE_FIGURES <= set(keys)
    for d in data:
        if (d["benchmark"], d["figure"], d["baseline"]) in CORE_FIGURES:
            check_record(d)  # the stricter check of tests/test_benchmarks.py
    # One table: a header, then one row per figure, then the summary line.
    assert proc.stdout.count("benchmark  ") == 1
    for d in data:
        assert d["figure"] in proc.stdout
    assert re.search(r"\d+ met, \d+ missed, \d+ without target", proc.stdout)
    assert f"wrote {len(data)} figures to {out}" in proc.stdout


def test_every_benchmark_is_runnable_by_the_harness():
    """Each bench_* module imports and has main(quick=...); the slow ones are tested elsewhere."""
    import importlib
    import inspect

    for name in _harness.bench_modules():
        module = importlib.import_module(name)
        params = inspect.signature(module.main).parameters
        assert "quick" in params, f"{name}.main has no quick= parameter"
    for short, test_file in COVERED_ELSEWHERE.items():
        if f"benchmarks.{short}" in _harness.bench_modules():
            assert short in (REPO / test_file).read_text(), f"{test_file} no longer runs {short}"


def test_bench_list_and_only(capsys):
    assert cli.main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "bench_core" in listed
    assert listed == [n.rsplit(".", 1)[-1] for n in _harness.bench_modules()]
    assert cli.main(["bench", "--list", "--only", "core"]) == 0
    assert capsys.readouterr().out.split() == ["bench_core"]
    assert cli.main(["bench", "--only", "no-such-bench"]) == 1
    err = capsys.readouterr().err
    assert "no benchmark 'no-such-bench'; known: " in err and "core" in err


def test_select_modules_accepts_short_and_long_names():
    assert _harness.select_modules(["core", "bench_core", "benchmarks.bench_core"]) == [
        "benchmarks.bench_core"
    ]
    assert _harness.select_modules(None) == _harness.bench_modules()
    with pytest.raises(ValueError, match="no benchmark 'x'"):
        _harness.select_modules(["x"])


def test_bench_runs_the_selected_modules_through_run_all(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run_all(quick=False, json_path=None, *, only=None):
        seen.update(quick=quick, json_path=json_path, only=only)
        result = _harness.RunResults([_harness.make_record("b", "f", [1.0], "us", "x", [1.0])])
        result.failed = ["bench_broken"] if "broken" in (only or []) else []
        return result

    monkeypatch.setattr(_harness, "run_all", fake_run_all)
    monkeypatch.setattr(_harness, "select_modules", lambda only: only or [])
    out = tmp_path / "r.json"
    assert cli.main(["bench", "--quick", "--json", str(out), "--only", "core,sandboxes"]) == 0
    assert seen == {"quick": True, "json_path": str(out), "only": ["core", "sandboxes"]}
    assert f"wrote 1 figures to {out}" in capsys.readouterr().out
    assert cli.main(["bench", "--only", "broken"]) == 1  # a failed benchmark fails the command


def test_bench_without_a_source_checkout_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "BENCHMARKS", tmp_path / "benchmarks")
    assert cli.main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "needs the benchmarks/ directory of a source checkout" in err
    assert str(tmp_path / "benchmarks") in err
