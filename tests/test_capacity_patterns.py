"""Capacity planning (sandbox/capacity.py) and error patterns (sandbox/patterns.py):
the API, the CLI subcommands, and the grouping rules."""

from __future__ import annotations

import json

import pytest
from helpers import Recorder
from test_alerts import CRASHY

from runtime.errors import ActorFailed, ConfigError
from sandbox.capacity import UNBOUNDED
from sandbox.cli import main
from sandbox.patterns import ErrorPatterns, normalise

TB = ('Traceback (most recent call last):\n'
      '  File "/srv/a/app/{file}", line {line}, in handle_call\n'
      '    x = lookup(key)\n'
      '{last}\n')


@pytest.mark.timeout(120)
def test_capacity_measures_probes_and_names_the_binding_limit(sandbox_runtime):
    rt = sandbox_runtime
    rt.create_sandbox("resident", "examples/counter")
    report = rt.capacity("examples/counter", samples=2, window=0.2)
    assert [s["id"] for s in rt.list_sandboxes()] == ["resident"]  # the probes are gone
    assert report.running == 1 and report.samples == 2 and report.profile == "medium"
    per = report.per_sandbox
    assert 0 < per["memory_mb"] <= per["rss_mb"]  # USS: shared pages are not counted again
    assert per["start_seconds"] > 0 and per["tasks"] >= 1 and per["host_fds"] >= 1
    assert set(report.fits) == {"memory", "cpu", "tasks", "host_fds"}
    assert report.binding == min(report.fits, key=report.fits.get)
    assert report.more == report.fits[report.binding] < UNBOUNDED
    assert report.fits["memory"] == int(report.machine["memory_mb"] // per["memory_mb"])
    assert f"{report.binding} binds first" in report.text()


@pytest.mark.parametrize(("option", "value"), [("samples", 0), ("samples", 21), ("window", 0)])
def test_capacity_refuses_bad_options(sandbox_runtime, option, value):
    with pytest.raises(ConfigError, match=f"invalid {option}="):
        sandbox_runtime.capacity("examples/counter", **{option: value})


@pytest.mark.timeout(120)
def test_capacity_cli_prints_json(capsys):
    assert main(["capacity", "examples/counter", "--samples", "1", "--window", "0.2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["binding"] in report["fits"] and report["more"] >= 0
    assert report["per_sandbox"]["memory_mb"] > 0


@pytest.mark.sandbox_runtime(http=("127.0.0.1", 0))
def test_patterns_cli_reads_a_running_runtime(sandbox_runtime, app_dir, capsys):
    rt = sandbox_runtime
    sb = rt.create_sandbox("pat", app_dir(CRASHY))
    with Recorder("process.system") as rec:
        for n in (1, 2):
            with pytest.raises(ActorFailed):
                sb.call("worker", "boom")
            rec.wait("process.system", count=n, timeout=30, op="actor_restart")
    host, port = rt.http_address
    assert main(["patterns", "--http", f"{host}:{port}"]) == 0
    out = capsys.readouterr().out
    assert "2x ZeroDivisionError at app1/worker.py:11 in handle_call" in out
    assert "sandboxes: pat (2)" in out and "remedy: " in out
    assert main(["patterns", "--http", f"http://{host}:{port}", "--json"]) == 0
    [p] = json.loads(capsys.readouterr().out)
    assert p["count"] == 2 and p["fingerprint"] == rt.error_patterns()[0]["fingerprint"]


def test_patterns_cli_says_what_to_do_when_nothing_listens(capsys):
    assert main(["patterns", "--http", "127.0.0.1:1", "--timeout", "5"]) == 1
    assert "start the runtime with http=(host, port)" in capsys.readouterr().err


@pytest.mark.parametrize(("first", "second", "same"), [
    # what varies between occurrences does not split a pattern
    (("KeyError: 'user-17'", "a.py", 3), ("KeyError: 'user-99'", "a.py", 3), True),
    (("ValueError: bad size 12 at 0x7f00aa", "a.py", 3),
     ("ValueError: bad size 4096 at 0x7f11bb", "a.py", 3), True),
    # another type, line or message does
    (("KeyError: 'k'", "a.py", 3), ("IndexError: 'k'", "a.py", 3), False),
    (("KeyError: 'k'", "a.py", 3), ("KeyError: 'k'", "a.py", 4), False),
    (("ValueError: too big", "a.py", 3), ("ValueError: too small", "a.py", 3), False),
])
def test_fingerprints_group_what_recurs(first, second, same):
    patterns = ErrorPatterns()
    for i, (msg, file, line) in enumerate((first, second)):
        patterns.record(f"s{i}", msg, traceback=TB.format(file=file, line=line, last=msg))
    found = patterns.patterns()
    assert len(found) == (1 if same else 2)
    if same:
        assert found[0].count == 2 and found[0].sandboxes == {"s0": 1, "s1": 1}


def test_errors_without_traceback_group_by_type_and_message():
    patterns = ErrorPatterns()
    for code in (3, 4):
        patterns.record("s", f"exit: process exited with code {code}", kind="exit")
    [p] = patterns.patterns()
    assert (p.type, p.location, p.message, p.count) == (
        "exit", None, "exit: process exited with code <n>", 2)


def test_patterns_are_bounded_least_recently_seen_first_out():
    patterns = ErrorPatterns(max_patterns=2)
    for i, at in enumerate((1.0, 3.0, 2.0)):
        patterns.record("s", f"E{i}Error: x", at=at)
    assert sorted(p.type for p in patterns.patterns()) == ["E1Error", "E2Error"]


def test_normalise_keeps_the_words():
    assert normalise("timeout after 2.5s calling 'db'") == "timeout after <n>s calling <str>"
