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


# -- what each benchmark must report (names and targets: never a measured figure) -------


def _core(data: list[dict]) -> None:
    keys = {(d["benchmark"], d["figure"], d["baseline"]) for d in data}
    assert CORE_FIGURES <= keys
    for d in data:
        if (d["benchmark"], d["figure"], d["baseline"]) in CORE_FIGURES:
            check_record(d)  # the stricter check of tests/test_benchmarks.py
    assert {d["benchmark"] for d in data} == {
        "call_roundtrip", "cast_throughput", "child_start", "child_memory", "dynamic_supervisor"}
    dynamic = {d["figure"] for d in data if d["benchmark"] == "dynamic_supervisor"}
    assert dynamic == {"start+stop per temporary child (20 children)",
                       "growth of the cost per child, 10 -> 20 children"}
    targeted = {(d["benchmark"], d["figure"]): d["target"] for d in data if d["target"]}
    assert targeted[("call_roundtrip", "p50 round trip")] == "ratio <= 1.5"
    assert targeted[("call_roundtrip", "p99 round trip")] == "ratio <= 2.0"
    assert targeted[("cast_throughput", "casts/s unbatched")] == "ratio >= 0.5"
    assert targeted[("child_memory", "idle child USS")] == "value <= 5.0"
    assert not any("ray" in d["baseline"] or "thespian" in d["baseline"] for d in data), \
        "a smoke run starts no heavyweight baseline"


def _reload(data: list[dict]) -> None:
    figures = {(d["benchmark"], d["figure"]): d for d in data}
    for d in data:
        check_record(d)
    for n in ("1 module", "10 modules", "100 modules"):
        rec = figures[("reload_latency", f"1 changed of {n}: p50")]
        assert rec["target"] == "ratio <= 0.05" and rec["unit"] == "ms"
        assert rec["baseline"] == "full restart (restart_sandbox, state lost)"
    assert figures[("reload_latency", "1 changed of 1 module: p50 (absolute)")]["target"] == (
        "value <= 10.0")
    assert {f for b, f in figures if b == "compile"} == {
        "100-module app: cold",
        "100-module app: cached (nothing changed)",
        "100-module app: incremental (1 of 100 changed)",
    }


def _watch(data: list[dict]) -> None:
    assert [(d["benchmark"], d["target"]) for d in data] == [
        ("watch_reload_latency", "value <= 30.0"),
        ("watch_reload_latency", None),
        ("watch_idle_cpu", "value <= 0.5"),
    ]
    assert data[0]["runs"] == 3 and data[0]["baseline_value"] > 0


def _cluster(data: list[dict]) -> None:
    assert data == [], "a smoke run starts no Ray cluster (tests/test_cluster.py measures)"


#: Per benchmark, what its smoke run must report besides complete records.
EXPECTED = {"bench_core": _core, "bench_reload": _reload, "bench_watch": _watch,
            "bench_cluster": _cluster}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [n.rsplit(".", 1)[-1] for n in _harness.bench_modules()])
def test_sandbox_bench_smoke_runs_each_benchmark_and_writes_valid_json(name, tmp_path):
    """Each benchmark through the CLI, as a user runs it, in a smoke run: toy sizes, no
    Ray (SANDBOX_BENCH_SMOKE=1). One process each, so a failure names its benchmark."""
    out = tmp_path / "bench.json"
    marker = f"cli-bench-{os.getpid()}-{id(out)}"
    env = dict(os.environ, SANDBOX_BENCH_TEST_MARKER=marker)
    env[_harness.SMOKE_ENV] = "1"
    proc = subprocess.run(
        [*sandbox_command(), "bench", "--quick", "--json", str(out), "--only", name],
        cwd=tmp_path,  # benchmarks/ is found next to the package, not from the cwd
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_leftover_processes(marker)
    assert f"[1/1] {name} ..." in proc.stderr  # the progress lines
    done = dict(re.findall(r"\] (bench_\w+) done: (\d+) figures", proc.stderr))
    assert list(done) == [name], proc.stderr
    assert "FAILED" not in proc.stderr and "failed benchmarks" not in proc.stdout

    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == int(done[name])
    for d in data:
        check_any_record(d)
    keys = [(d["benchmark"], d["figure"], d["baseline"]) for d in data]
    assert len(keys) == len(set(keys)), "a figure is reported twice"
    EXPECTED.get(name, lambda data: None)(data)
    if name != "bench_cluster":
        assert data, f"{name} reported no figure"
    # One table: a header, then one row per figure, then the summary line.
    assert proc.stdout.count("benchmark  ") == 1
    for d in data:
        assert d["figure"] in proc.stdout
    assert re.search(r"\d+ met, \d+ missed, \d+ without target", proc.stdout)
    assert f"wrote {len(data)} figures to {out}" in proc.stdout


def test_every_benchmark_is_runnable_by_the_harness():
    """Each bench_* module imports and has main(quick=...)."""
    import importlib
    import inspect

    for name in _harness.bench_modules():
        module = importlib.import_module(name)
        params = inspect.signature(module.main).parameters
        assert "quick" in params, f"{name}.main has no quick= parameter"
    assert set(EXPECTED) <= {n.rsplit(".", 1)[-1] for n in _harness.bench_modules()}


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
