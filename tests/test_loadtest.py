"""The load harness (sandbox.loadtest) and ``sandbox bench --app``.

Never asserts on a measured figure: only counts, error accounting, the record
format and the command's behaviour.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from sandbox import cli, loadtest
from sandbox.records import REQUIRED_FIELDS

pytestmark = pytest.mark.timeout(120)

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"


def test_calls_mode_makes_exactly_that_many_calls_from_every_worker():
    seen: list[int] = []
    lock = threading.Lock()

    def call(worker: int) -> None:
        with lock:
            seen.append(worker)

    result = loadtest.run_load(call, concurrency=3, calls=300, warmup=0)
    assert result.calls == len(seen) == 300 and result.errors == 0
    assert set(seen) <= {0, 1, 2} and result.concurrency == 3
    assert len(result.latencies_us) == 300
    assert list(result.latencies_us) == sorted(result.latencies_us)
    assert result.p50 <= result.p90 <= result.p99 <= result.max


def test_errors_are_counted_by_type_and_callers_carry_on():
    n = iter(range(10_000))

    def call(worker: int) -> None:
        if next(n) % 3 == 0:
            raise KeyError("every third call")

    result = loadtest.run_load(call, concurrency=2, calls=90, warmup=0)
    assert result.calls == 90
    assert result.errors == 30 and result.error_types == {"KeyError": 30}
    errors = [r for r in result.records() if r.figure == "errors"][0]
    assert errors.value == 30 and "KeyError x30" in errors.notes


def test_duration_mode_reports_progress_and_ends():
    ticks: list[tuple[float, int, int]] = []
    result = loadtest.run_load(lambda w: None, duration=0.3, warmup=0,
                               progress=lambda *a: ticks.append(a))
    assert result.calls > 0 and ticks and ticks[-1][1] > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concurrency": 0, "calls": 1}, "concurrency"),
        ({"calls": 1, "duration": 1.0}, "exactly one of duration"),
        ({}, "exactly one of duration"),
        ({"calls": 0}, "calls"),
        ({"duration": -1.0}, "duration"),
        ({"calls": 1, "warmup": -1.0}, "warmup"),
    ],
)
def test_bad_options_name_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loadtest.run_load(lambda w: None, **kwargs)


def test_the_asyncio_driver_counts_like_the_threads():
    async def call(worker: int) -> int:
        return worker

    result = asyncio.run(loadtest.run_load_async(call, concurrency=4, calls=200, warmup=0))
    assert result.calls == 200 and result.mode == "asyncio" and result.errors == 0


def test_records_are_the_benchmarks_records():
    result = loadtest.run_load(lambda w: None, calls=20, warmup=0, label="noop")
    recs = [r.to_dict() for r in result.records("load:x")]
    assert [r["figure"] for r in recs] == [
        "p50 latency", "p90 latency", "p99 latency", "max latency", "throughput", "errors"
    ]
    for r in recs:
        assert all(f in r for f in REQUIRED_FIELDS)
        assert r["benchmark"] == "load:x" and r["ratio"] is None and r["met"] is None
    assert recs[4]["higher_is_better"] is True


@pytest.mark.timeout(180)
def test_sandbox_bench_app_loads_an_app_and_writes_json(tmp_path, capsys):
    out = tmp_path / "load.json"
    rc = cli.main(["bench", "--app", str(COUNTER), "--call", "counter", "incr",
                   "-c", "2", "-n", "200", "--warmup", "0", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(out.read_text())
    assert [d["figure"] for d in data][-2:] == ["throughput", "errors"]
    assert data[-1]["value"] == 0
    assert "200 calls in" in captured.out and f"wrote {len(data)} figures" in captured.out
    assert "loading call('counter', 'incr')" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--connect", "unix:/nowhere", "--call", "counter", "incr"], "sandbox.connect"),
        (["--app", str(COUNTER), "--call", "counter", "incr", "--async"], "start_async"),
        (["--app", str(COUNTER)], "needs --call ACTOR REQUEST"),
        (["--app", "/no/such/dir", "--call", "a", "b"], "is not a directory"),
        (["--app", str(COUNTER), "--call", "a", "b", "--quick"], "do not go with --app"),
    ],
)
def test_sandbox_bench_app_refuses_what_it_cannot_do(argv, message, capsys):
    assert cli.main(["bench", *argv]) == 1
    assert message in capsys.readouterr().err


def test_a_request_is_json_or_a_string():
    assert loadtest.parse_request('["add", 2]') == ["add", 2]
    assert loadtest.parse_request("incr") == "incr"


@pytest.mark.timeout(180)
def test_sandbox_bench_app_exits_1_when_calls_fail(capsys):
    assert cli.main(["bench", "--app", str(COUNTER), "--call", "counter", "crash",
                     "-n", "5", "--warmup", "0"]) == 1
    assert "asked to crash" in capsys.readouterr().err
