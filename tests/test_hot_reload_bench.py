"""benchmarks/bench_reload.py, quick: complete, self-consistent records (no figure asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_benchmarks import assert_no_leftover_processes, check_record

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_reload_quick_writes_valid_records(tmp_path):
    out = tmp_path / "reload.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    marker = f"bench-reload-smoke-{os.getpid()}-{id(out)}"
    env["SANDBOX_BENCH_TEST_MARKER"] = marker
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_reload.py"), "--quick",
         "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=170,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_leftover_processes(marker)
    assert "ratio" in proc.stdout and "target" in proc.stdout
    data = json.loads(out.read_text())
    assert isinstance(data, list) and data
    for d in data:
        check_record(d)
    figures = {(d["benchmark"], d["figure"]): d for d in data}
    for n in ("1 module", "10 modules", "100 modules"):
        rec = figures[("reload_latency", f"1 changed of {n}: p50")]
        assert rec["target"] == "ratio <= 0.05" and rec["unit"] == "ms"
        assert rec["baseline"] == "full restart (restart_sandbox, state lost)"
        assert rec["runs"] == 3
    assert figures[("reload_latency", "1 changed of 1 module: p50 (absolute)")]["target"] == (
        "value <= 10.0")
    compile_figures = {f for b, f in figures if b == "compile"}
    assert compile_figures == {
        "100-module app: cold",
        "100-module app: cached (nothing changed)",
        "100-module app: incremental (1 of 100 changed)",
    }
